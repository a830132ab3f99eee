"""The neuron card page (pages/neuron.py) under streamlit's AppTest, with the tiny Llama.

Opened by its URL (`?n=layer:index`), with and without an activation index; the index built
by running, in-process, exactly the `neurorit index` command the page submits as a background
job; a neuron outside the model gives one clear message; the note round trip, and the note shown
in another page's neuron table; token search; the switch-off test; the search box and the
sidebar search through the entry point (st.switch_page with query parameters); passages holding
<script> rendered as text.
"""

from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
from streamlit.testing.v1 import AppTest

from app import state
from neurorit import notes

TIMEOUT = 120
SCRIPT = "<script>alert('x')</script>"


def _card(n: str | None = None, q: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / "neuron.py"), default_timeout=TIMEOUT)
    if n is not None:
        at.query_params["n"] = n
    if q is not None:
        at.query_params["q"] = q
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)


def _button(at: AppTest, label: str) -> Any:
    matches = [b for b in at.button if b.label.startswith(label)]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _chart_keys(at: AppTest) -> set[str]:
    """The user keys of the page's charts (an element id is '$$ID-<hash>-<key>')."""
    return {c.proto.id.split("-", 2)[-1] for c in at.get("plotly_chart")}


def _htmls(at: AppTest) -> list[str]:
    return [e.proto.body for e in at.get("html") if "neurorit-run-finished" not in e.proto.body]


class _Reader(HTMLParser):
    """The text a browser shows, and whether it would find a <script> element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
        self.scripts += tag == "script"

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _set_examples(at: AppTest, examples: list[Any], label: str = "test set") -> None:
    at.session_state[state.EXAMPLES] = list(examples)
    at.session_state[state.ORIGINAL_EXAMPLES] = list(examples)
    at.session_state[state.DATASET_LABEL] = label
    at.session_state[state.EXAMPLE_INDEX] = 0


def _hostile_examples() -> list[Any]:
    from neurorit.data import Passage, demo_examples

    first = demo_examples()[0]
    hostile = dataclasses.replace(first, id="hostile", passages=(Passage(f"Jane Austen {SCRIPT} wrote it.", "t", True),
                                                                 *first.passages[1:]))
    return [hostile, *demo_examples()[1:3]]


def test_the_card_opens_from_its_url_without_an_index(app_env: Path, tiny_llama) -> None:
    from neurorit import neuron_card as cards

    at = _card("1:5").run()
    _ok(at)
    assert [s.value for s in at.subheader][0] == "Neuron 1:5"
    text = _text(at)
    assert "/neuron?n=1:5" in text and "No activation index of this model on the current data" in text
    assert _button(at, "Build the activation index (42 examples")
    promoted, suppressed = cards.token_effects(tiny_llama, 1, 5)
    assert list(at.dataframe[0].value.token_id) == [e.token_id for e in promoted]
    assert list(at.dataframe[1].value.token_id) == [e.token_id for e in suppressed]
    assert "On example demo-01 (noisy view), the gold answer's first token" in text
    assert "card.trace" in _chart_keys(at) and "card.by_view" not in _chart_keys(at)  # no index: no graded activation
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Card as HTML (opens offline)", "Card as JSON"]


@pytest.mark.parametrize(("value", "reason"), [("7:0", "outside the model: it has layers 0-1 and neurons 0-47"),
                                                 ("1:48", "outside the model"), ("abc", "layer:index")])
def test_a_neuron_outside_the_model_gives_one_clear_message(app_env: Path, value: str, reason: str) -> None:
    at = _card(value).run()
    _ok(at)
    assert len(at.error) == 1, _text(at)
    assert at.error[0].value.startswith(f"Cannot open the card of '{value}'") and reason in at.error[0].value
    assert [s.value for s in at.subheader] == [] and not at.get("plotly_chart")


def test_without_a_neuron_the_page_says_how_to_pick_one(app_env: Path) -> None:
    at = _card().run()
    _ok(at)
    assert "Pick a neuron" in _text(at) and not at.error


def test_the_note_round_trip_and_the_note_in_another_pages_table(app_env: Path, tiny_llama) -> None:
    from neurorit.models import model_identity

    fingerprint = model_identity(tiny_llama).fingerprint
    at = _card("1:5").run()
    assert not [b for b in at.button if b.label == "Delete the note"]
    at.text_input(key="card.note.label.1:5").set_value("capital cities")
    at.text_area(key="card.note.text.1:5").set_value("fires on ' Canberra'\nnot on ' Sydney'")
    _button(at, "Save the note").click()
    at.run()
    _ok(at)
    assert "Note saved." in [s.value for s in at.success]
    assert at.subheader[0].value == "Neuron 1:5 · capital cities"
    saved = notes.get_note(fingerprint, (1, 5))
    assert saved is not None and saved.text == "fires on ' Canberra'\nnot on ' Sydney'"

    fresh = _card("1:5").run()  # a new session reads it back
    assert fresh.text_input(key="card.note.label.1:5").value == "capital cities"

    ablate = AppTest.from_file(str(ROOT / "pages" / "ablate.py"), default_timeout=TIMEOUT).run()
    ablate.radio(key="w.ablate.source").set_value("Hand-picked neurons").run()
    ablate.text_input(key="w.ablate.neurons").set_value("0:1, 1:5").run()
    _ok(ablate)
    switched = ablate.dataframe[-1].value
    assert switched.to_dict("records") == [{"layer": 0, "neuron": 1, "note": ""},
                                           {"layer": 1, "neuron": 5, "note": "capital cities"}]

    _button(at, "Delete the note").click()
    at.run()
    _ok(at)
    assert "Note deleted." in [s.value for s in at.success] and at.subheader[0].value == "Neuron 1:5"
    assert notes.get_note(fingerprint, (1, 5)) is None
    assert at.text_input(key="card.note.label.1:5").value == ""


def test_the_index_job_the_page_submits_builds_the_index_the_card_then_reads(
        app_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from neurorit import jobs
    from neurorit.cli import main

    from app import jobs_client

    submitted: list[tuple[str, list[str]]] = []
    job = type("J", (), {"id": "index-1", "state": "done", "done": 12, "total": 12, "message": "", "error": "",
                         "fraction": 1.0})()
    monkeypatch.setattr(jobs, "submit", lambda kind, argv: submitted.append((kind, argv)) or job)
    monkeypatch.setattr(jobs_client, "get", lambda job_id: job)

    at = _card("1:5")
    _set_examples(at, _hostile_examples())
    at.run()
    _button(at, "Build the activation index (3 examples × 4 views").click()
    at.run()
    _ok(at)
    (kind, argv), = submitted
    assert kind == "index" and argv[0] == "index" and "--model" in argv and "--device" in argv
    assert main(argv) == 0  # what the background job runs: `python -m neurorit <argv>`
    assert "index: " in capsys.readouterr().out

    at.run()
    _ok(at)
    text = _text(at)
    assert "From the activation index" in text and "(3 examples; views relevant, noisy, irrelevant, closed_book)" in text
    assert "Mann-Whitney U, relevant-only vs irrelevant-only" in text
    assert {"card.by_view", "card.by_region", "card.trace"} <= _chart_keys(at)
    assert at.selectbox(key=next(k for k in _selectbox_keys(at) if k.startswith("card.index."))).value == 0
    bodies = _htmls(at)
    assert len(bodies) == 2  # the contexts and the prompt token by token
    for body in bodies:
        reader = _Reader()
        reader.feed(body)
        assert reader.scripts == 0
    prompt_text = "".join(_parse_text(bodies[1]))
    assert SCRIPT in prompt_text  # the hostile passage shows as text in the trace of example 'hostile'
    assert re.search(r"\[passage \d, relevant passage\][^\[]*" + re.escape(SCRIPT), prompt_text)  # marked as such


def _parse_text(body: str) -> list[str]:
    reader = _Reader()
    reader.feed(body)
    return reader.text


def _selectbox_keys(at: AppTest) -> list[str]:
    return [s.key for s in at.selectbox if s.key]


def test_switch_it_off_alone_on_a_button_press(app_env: Path) -> None:
    at = _card("1:5").run()
    assert "card.switch_off" not in _chart_keys(at)
    at.number_input(key="w.card.n_switch").set_value(2).run()
    _button(at, "Switch it off alone (2 examples, noisy view)").click()
    at.run()
    _ok(at)
    assert "card.switch_off" in _chart_keys(at)
    assert any(m.value.startswith("On 2 examples: Δ log p(gold)") and "for neuron" in m.value for m in at.markdown)


def test_token_search_lists_the_neurons_that_promote_it(app_env: Path, tiny_llama) -> None:
    from neurorit import readout

    at = _card(q="' Sydney'").run()
    _ok(at)
    expected = readout.neurons_promoting(tiny_llama, "' Sydney'", k=20)
    frame = at.dataframe[0].value
    assert list(zip(frame.layer, frame.neuron)) == list(expected.neurons)
    assert list(frame.columns) == ["layer", "neuron", "logit_weight", "note"]
    assert "Pick a neuron" in _text(at)  # no neuron yet: the list, then the hint


def test_the_search_boxes_open_cards_through_the_entry_point(app_env: Path) -> None:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    at.sidebar.text_input(key="neurorit.search.text").set_value("1:7")
    _button(at, "Open its card").click()
    at.run()
    _ok(at)
    assert at.title[0].value == "Neuron card" and at.subheader[0].value == "Neuron 1:7"
    assert at.query_params["n"] == "1:7"

    at.text_input(key="card.search.text").set_value("0:3")
    _button(at, "Find").click()
    at.run()
    _ok(at)
    assert at.subheader[0].value == "Neuron 0:3" and at.query_params["n"] == "0:3"

    at.text_input(key="card.search.text").set_value("9:9")  # outside the model: a message, the card stays
    _button(at, "Find").click()
    at.run()
    _ok(at)
    assert any("outside the model" in e.value for e in at.error) and at.query_params["n"] == "0:3"

    at.text_input(key="card.search.text").set_value("' Sydney'")
    _button(at, "Find").click()
    at.run()
    _ok(at)
    assert at.query_params == {"n": "0:3", "q": "' Sydney'"}
    assert at.subheader[0].value == "Neuron 0:3" and len(at.dataframe[0].value) == 20
