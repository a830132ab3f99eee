"""app/card_view.py: the neuron card's pure views and the way from a chart or a table to a card.

Hand-made values with known contents: the URL and search parsing, a click on a heatmap cell /
a bar / a table row naming exactly the neuron drawn there, the strongest neuron per layer, the
note column, every piece of text escaped (a passage holding <script> shows as text), and the card
as a standalone HTML file (plotly.js inlined once) and as JSON, built from a real NeuronCard on
the tiny model.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from app import card_view, views
from neurorit.errors import ConfigError
from neurorit.neurons import NeuronSet, parse_neuron
from neurorit.notes import Note

SCRIPT = "<script>alert('x')</script>"


class _Reader(HTMLParser):
    """What a browser would run (the bodies of <script> elements) and show (the text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list) -> None:  # type: ignore[type-arg]
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def _read(html_text: str) -> _Reader:
    reader = _Reader()
    reader.feed(html_text)
    return reader


# ---- addresses and search ----------------------------------------------------------------------


def test_the_card_address_and_the_neuron_parser() -> None:
    assert card_view.card_url((15, 821)) == "/neuron?n=15:821"
    assert card_view.card_query((15, 821)) == {"n": "15:821"}
    assert parse_neuron(" 15 : 821 ", 30, 1536) == (15, 821)
    with pytest.raises(ConfigError, match=r"outside the model: it has layers 0-29 and neurons 0-1535"):
        parse_neuron("30:0", 30, 1536)
    with pytest.raises(ConfigError, match="outside the model"):
        parse_neuron("-1:3", 30, 1536)
    for bad in ("", None, "15", "a:b", "1:2:3"):
        with pytest.raises(ConfigError, match="layer:index"):
            parse_neuron(bad, 30, 1536)
    assert card_view.search_kind("15:821") == "neuron"
    assert card_view.search_kind("' Sydney'") == "token" and card_view.search_kind("http:") == "token"
    assert card_view.search_kind("   ") == "empty"


# ---- selections -> neuron ----------------------------------------------------------------------


def test_a_click_names_the_neuron_in_its_customdata_and_an_empty_bar_names_none() -> None:
    event = {"selection": {"points": [{"x": 3, "y": 1, "customdata": [1, 777, "0.5", 770, 779]}], "point_indices": [0]}}
    assert card_view.selected_neuron(event) == (1, 777)
    assert card_view.selected_neuron(SimpleNamespace(selection=SimpleNamespace(points=[{"customdata": [2, 5]}]))) == (2, 5)
    assert card_view.selected_neuron({"selection": {"points": [{"customdata": [4, -1]}]}}) is None
    assert card_view.selected_neuron({"selection": {"points": []}}) is None
    assert card_view.selected_neuron(None) is None
    frame = pd.DataFrame({"layer": [0, 3], "neuron": [9, 12]})
    assert card_view.selected_row_neuron({"selection": {"rows": [1], "columns": []}}, frame) == (3, 12)
    assert card_view.selected_row_neuron({"selection": {"rows": []}}, frame) is None
    assert card_view.selected_row_neuron({"selection": {"rows": [5]}}, frame) is None  # a stale row of a shorter table


def test_the_clickable_heatmap_puts_one_target_on_each_cell_naming_the_neuron_shown_there() -> None:
    grid = torch.zeros(2, 1000)
    grid[1, 777] = 5.0
    grid[0, 3] = -2.0
    plain = views.heatmap_figure(grid, max_columns=100)
    fig = card_view.clickable_heatmap(plain)
    heat, targets = fig.data
    assert isinstance(heat, go.Heatmap) and isinstance(targets, go.Scatter)
    assert len(plain.data) == 1 and plain.data[0].hoverinfo is None  # the input figure is left as it was
    assert heat.hoverinfo == "skip" and len(targets.x) == 2 * 100
    custom = np.array(targets.customdata, dtype=object)
    z = np.array(plain.data[0].z, dtype=float)
    for point, (x, y) in enumerate(zip(targets.x, targets.y)):
        layer, index = int(custom[point][0]), int(custom[point][1])
        col = int(x) // 10
        assert layer == y and index == int(np.array(plain.data[0].customdata)[y, col, 0])
        assert custom[point][2] == f"{z[y, col]:.4g}"
    strongest = [i for i, c in enumerate(custom) if c[0] == 1 and c[1] == 777]
    assert len(strongest) == 1 and targets.x[strongest[0]] == 770 and custom[strongest[0]][2] == "5"
    assert card_view.selected_neuron({"selection": {"points": [{"customdata": list(custom[strongest[0]])}]}}) == (1, 777)
    assert "strongest of 10" in targets.hovertemplate and "open this neuron's card" in targets.hovertemplate
    assert fig.layout.hoverdistance == -1 and fig.layout.dragmode == "zoom"
    assert targets.marker.opacity == 0
    nan_grid = views.heatmap_figure(np.array([[np.nan, 1.0], [0.5, 0.0]]))
    assert "n/a" in card_view.clickable_heatmap(nan_grid).data[1].customdata[0][2]
    with pytest.raises(ValueError, match="heatmap"):
        card_view.clickable_heatmap(views.set_counts_figure({"a": [1, 2]}))


def test_strongest_per_layer_and_clickable_bars() -> None:
    members = torch.zeros(3, 6, dtype=torch.bool)
    members[0, [1, 4]] = True
    members[2, [0, 2, 5]] = True
    strength = torch.tensor([[9.0, 0.1, 0, 0, -0.7, 0], [0] * 6, [0.5, 0, -0.5, 0, 0, 0.2]])
    assert card_view.strongest_per_layer(members, strength) == [4, -1, 0]  # 9.0 at (0, 0) is not a member; |-0.5| ties 0.5
    tiebreak = torch.tensor([[0.0] * 6, [0.0] * 6, [0.1, 0, 0.3, 0, 0, 0]])
    assert card_view.strongest_per_layer(members, strength, tiebreak) == [4, -1, 2]
    assert card_view.strongest_per_layer(NeuronSet(members, "s")) == [1, -1, 0]  # no strength: the first
    with pytest.raises(ValueError, match="shape"):
        card_view.strongest_per_layer(members, torch.zeros(2, 6))
    assert card_view.strength(torch.tensor([[1.0, -3.0]]), np.array([[-2.0, np.nan]])).tolist() == [[2.0, 3.0]]

    fig = card_view.clickable_bars(views.set_counts_figure({"a": [2, 0, 3], "b": [0, 1, 0]}), [[4, -1, 0], [-1, 5, -1]])
    assert [list(map(list, t.customdata)) for t in fig.data] == [[[0, 4], [1, -1], [2, 0]], [[0, -1], [1, 5], [2, -1]]]
    assert all("open the strongest neuron" in t.hovertemplate for t in fig.data)
    assert card_view.selected_neuron({"selection": {"points": [{"customdata": fig.data[1].customdata[1]}]}}) == (1, 5)
    with pytest.raises(ValueError, match="2 bar traces"):
        card_view.clickable_bars(views.set_counts_figure({"a": [1], "b": [1]}), [[0]])


def test_mined_neurons_are_ranked_by_frequency_then_by_ig_score() -> None:
    rel = torch.zeros(2, 4, dtype=torch.bool)
    irr = torch.zeros(2, 4, dtype=torch.bool)
    irr[0, [1, 2, 3]] = True
    rel[0, 3] = True
    mined = SimpleNamespace(
        named_sets=lambda: {"irrelevant-exclusive": NeuronSet(irr & ~rel, "ie"), "shared": NeuronSet(rel & irr, "s")},
        relevant_frequency=torch.tensor([[0, 0, 0, 1.0], [0] * 4]), irrelevant_frequency=torch.tensor([[0, 0.5, 0.5, 1.0], [0] * 4]),
        relevant_mean=torch.tensor([[0, 0, 0, 0.2], [0] * 4]), irrelevant_mean=torch.tensor([[0, -0.1, 0.3, 0.9], [0] * 4]),
    )
    frame = card_view.mined_neurons_frame(mined, "irrelevant-exclusive", {(0, 1): Note(0, 1, "fires on dates")})
    assert list(zip(frame.layer, frame.neuron)) == [(0, 2), (0, 1)]  # equal frequency: |0.3| before |-0.1|
    assert list(frame.columns) == ["layer", "neuron", "selected_relevant", "selected_irrelevant", "ig_relevant",
                                   "ig_irrelevant", "note"]
    assert list(frame.note) == ["", "fires on dates"] and frame.ig_irrelevant.tolist() == pytest.approx([0.3, -0.1])
    freq, _ = card_view.mined_strength(mined, "shared")
    assert freq[0, 3] == 1.0


def test_the_note_column_shows_each_neurons_label() -> None:
    frame = pd.DataFrame({"layer": [1, 0], "neuron": [3, 3], "score": [0.5, 0.1]})
    out = card_view.with_notes(frame, {(0, 3): Note(0, 3, "dates", "long text")})
    assert list(out.columns) == ["layer", "neuron", "score", "note"] and list(out.note) == ["", "dates"]
    assert "note" not in frame.columns  # the input is left as it was
    table = card_view.neurons_frame([(2, 1)], {}, extra={"weight": [0.25]})
    assert table.to_dict("records") == [{"layer": 2, "neuron": 1, "weight": 0.25, "note": ""}]


# ---- escaping ----------------------------------------------------------------------------------


def test_every_token_and_label_is_escaped_so_a_script_passage_shows_as_text() -> None:
    html_text = card_view.tokens_html([SCRIPT, " ok\n", '"quoted"'], [1.0, -0.5, float("nan")], 1.0,
                                      regions=["relevant", "irrelevant", "other"], passages=[1, 2, 0], mark_passages=True)
    assert "<script>" not in html_text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html_text
    assert _read(html_text).scripts == [] and SCRIPT in "".join(_read(html_text).text)
    assert "&quot;quoted&quot;" in html_text and "↵<br>" in html_text
    assert "rgba(215,48,39,1.000)" in html_text and "rgba(69,117,180,0.500)" in html_text
    assert "[passage 1, relevant passage]" in html_text and "[passage 2, irrelevant passage]" in html_text
    context = SimpleNamespace(rank=0, activation=2.0, token=SCRIPT, example_id="<b>id</b>", view="noisy", region="relevant",
                              passage=1, center=0, tokens=(SCRIPT, "x"), activations=(2.0, 1.0), regions=("relevant",) * 2,
                              passages=(1, 1))
    rendered = card_view.contexts_html([context])
    assert "<script>" not in rendered and "<b>id</b>" not in rendered and "&lt;b&gt;id&lt;/b&gt;" in rendered
    assert "outline:2px solid" in rendered  # the top token
    assert card_view.contexts_html([]).startswith('<p class="empty">')
    assert "<script>" not in card_view.note_html(Note(0, 0, SCRIPT, SCRIPT))
    assert "<script>" not in card_view.frame_html(pd.DataFrame({"token": [SCRIPT]}))
    assert card_view.activation_color(0.0, 0.0) == "transparent"


# ---- the card as files, from a real card on the tiny model -------------------------------------


@pytest.fixture(scope="module")
def tiny_card(tiny_llama):  # type: ignore[no-untyped-def]
    import dataclasses

    from neurorit import activations
    from neurorit import neuron_card as cards
    from neurorit.data import Passage, demo_examples
    from neurorit.prompts import PromptConfig

    first = demo_examples()[0]
    hostile = dataclasses.replace(first, id="hostile", passages=(Passage(f"Jane Austen {SCRIPT} wrote it.", "t", True),
                                                                 *first.passages[1:]))
    examples = [hostile, *demo_examples()[1:3]]
    index = activations.build_index(tiny_llama, examples, prompt_config=PromptConfig(), use_cache=False, top_k=5, window=3)
    card = cards.neuron_card(tiny_llama, 1, 5, activation_index=index, example=examples[0], examples=examples[:2])
    trace = activations.neuron_activations_over_prompt(tiny_llama, examples[0], "relevant", 1, 5, PromptConfig())
    tokens = [tiny_llama.tokenizer.decode([t]) for t in trace.token_ids]
    return card, trace, tokens


def test_the_html_file_holds_every_section_escaped_with_plotly_inlined_once(tiny_card) -> None:  # type: ignore[no-untyped-def]
    card, trace, tokens = tiny_card
    assert any("script" in "".join(c.tokens) for c in card.contexts) or "script" in "".join(tokens)
    doc = card_view.card_document(card, note=Note(1, 5, "<i>label</i>", "text"), trace=trace, trace_tokens=tokens,
                                  ig_records=())
    assert doc.startswith("<!DOCTYPE html>") and "Neuron 1:5 of tiny-llama" in doc
    read = _read(doc)
    assert not any("alert" in body for body in read.scripts)  # no script runs but plotly's own
    assert SCRIPT in "".join(read.text)  # the hostile passage shows as text, token by token
    assert "<i>label</i>" not in doc and "&lt;i&gt;label&lt;/i&gt;" in doc
    for heading in ("Top-activating contexts", "Graded activation", "Over one prompt", "promoted tokens",
                    "suppressed tokens", "Direct contribution", "Switched off alone", "Your note"):
        assert heading in doc, heading
    assert "<script src" not in doc and doc.count("* plotly.js v") == 1  # plotly.js inlined once, nothing fetched
    assert doc.count("Plotly.newPlot(") == 4  # by view, by passage type, over one prompt, switched off alone
    assert len(doc) > 3_000_000  # plotly.js itself (~4.6 MB): the file opens offline


def test_the_json_holds_the_card_the_note_and_the_prompt_trace(tiny_card) -> None:  # type: ignore[no-untyped-def]
    card, trace, _ = tiny_card
    data = card_view.card_json(card, note=Note(1, 5, "x", "y", 1.0), trace=trace)
    round_trip = json.loads(json.dumps(data, allow_nan=False))  # strict JSON: no NaN
    assert round_trip["layer"] == 1 and round_trip["index"] == 5 and round_trip["note"]["label"] == "x"
    assert len(round_trip["contexts"]) == len(card.contexts) and round_trip["switch_off"]["example_ids"]
    assert round_trip["over_prompt"]["token_ids"] == list(trace.token_ids)
    assert round_trip["over_prompt"]["values"] == pytest.approx(trace.values.tolist())
