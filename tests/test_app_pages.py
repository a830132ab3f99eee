"""Every workbench page under streamlit's AppTest, with the tiny Llama injected through NEURORIT_MODEL.

Each test runs a page script headless, asserts its key elements and that no exception escaped,
and drives the page's cheapest button (preview, what-if, import, a mining job from a cached
result). Every test gets its own artifact cache (NEURORIT_CACHE in a temporary folder).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
from streamlit.testing.v1 import AppTest

from app import artifacts, forms, state

TIMEOUT = 120


def _page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / f"{name}.py"), default_timeout=TIMEOUT)


def _text(at: AppTest) -> str:
    """Every text-like element's content, joined (what a reader sees)."""
    parts: list[str] = []
    for kind in ("title", "header", "subheader", "markdown", "caption", "info", "success", "warning", "error", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [str(e.label) for e in at.metric]
    return "\n".join(parts)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _button(at: AppTest, label: str) -> Any:
    matches = [b for b in at.button if b.label.startswith(label)]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0]


def _click(at: AppTest, label: str) -> None:
    """Click the button whose label starts with `label`, rerun, and require no exception."""
    _button(at, label).click()
    at.run()
    _ok(at)


def _set_ig(at: AppTest, prefix: str, n_steps: int, layers: str) -> None:
    """The sidebar's IG steps and layers on a page (widget keys w.<prefix>.n_steps / .layers), rerun."""
    at.sidebar.number_input(key=f"w.{prefix}.n_steps").set_value(n_steps)
    at.sidebar.text_input(key=f"w.{prefix}.layers").set_value(layers)
    at.run()


def _charts(at: AppTest) -> list[Any]:
    return at.get("plotly_chart")


def test_entry_point_navigates_every_page(app_env: Path) -> None:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    _ok(at)
    assert at.title[0].value == "Model & data"
    for script, title in [("pages/explore.py", "Explore one example"), ("pages/mine.py", "Mine a dataset"),
                          ("pages/ablate.py", "Ablate (what-if)"), ("pages/masks.py", "Masks"), ("pages/train.py", "Train")]:
        at.switch_page(script).run()
        _ok(at)
        assert at.title[0].value == title


def test_model_data_page_shows_model_data_example_and_prompt(app_env: Path, tiny_llama_dir: Path) -> None:
    at = _page("model_data").run()
    _ok(at)
    text = _text(at)
    assert "2 layers x 48 neurons" in text and "context 1024 tokens" in text
    assert "demo set" in text and "42 examples" in text
    assert at.selectbox(key=state.EXAMPLE_INDEX).value == 0
    prompt = at.code[0].value
    assert "Question: Who wrote the novel Pride and Prejudice?" in prompt
    assert {m.label: m.value for m in at.metric}["Model context"] == "1024"

    # pick another example and another view: the prompt follows
    at.selectbox(key=state.EXAMPLE_INDEX).set_value(1)
    at.radio(key="w.data.view").set_value("closed_book")
    at.run()
    _ok(at)
    assert "Question: What is the capital city of Australia?" in at.code[0].value
    assert "Passage 1" not in at.code[0].value

    # edit the question and the answers through the form
    at.text_input[1].set_value("What is the capital of Australia, the country?")  # [0] is the model path
    at.text_area[0].set_value("Canberra\nCanberra, ACT")
    _click(at, "Apply edits")
    edited = at.session_state[state.EXAMPLES][1]
    assert edited.question == "What is the capital of Australia, the country?"
    assert edited.answers == ("Canberra", "Canberra, ACT")
    assert "unsaved edits" in _text(at)

    # add a distractor, then revert to the dataset's version
    n_before = len(edited.passages)
    _click(at, "Add a distractor")
    assert len(at.session_state[state.EXAMPLES][1].passages) == n_before + 1
    _click(at, "Revert")
    assert at.session_state[state.EXAMPLES][1] == at.session_state[state.ORIGINAL_EXAMPLES][1]


def test_model_data_page_reports_a_bad_model_and_a_bad_file(app_env: Path, tmp_path: Path) -> None:
    at = _page("model_data")
    at.session_state[state.MODEL_SPEC] = state.ModelSpec(str(tmp_path / "no-such-model"))
    at.run()
    _ok(at)
    assert any("Could not load the model" in e.value and "neither a local folder" in e.value for e in at.error)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "question": "q", "answers": []}\n')
    at = _page("model_data").run()
    at.radio(key="w.data.source").set_value("File on disk").run()
    at.text_input(key="w.data.path").set_value(str(bad))
    _click(at, "Load the file")
    assert any("line 1" in e.value and "answers is empty" in e.value for e in at.error)


def test_model_data_page_loads_an_uploaded_dataset(app_env: Path) -> None:
    from neurorit.data import demo_examples, to_flashrag

    lines = "".join(json.dumps(to_flashrag(e)) + "\n" for e in demo_examples()[:2]).encode()
    at = _page("model_data").run()
    at.radio(key="w.data.source").set_value("Upload").run()
    at.get("file_uploader")[0].set_value(("my-flashrag.jsonl", lines, "application/json"))
    at.run()
    _click(at, "Load the upload")
    assert "my-flashrag.jsonl (2 examples)" in _text(at)
    assert at.session_state[state.EXAMPLES][1].passages == demo_examples()[1].passages  # flags survive

    at.get("file_uploader")[0].set_value(("bad.jsonl", b"not json\n", "application/json"))
    at.run()
    _click(at, "Load the upload")
    assert any("line 1 is not valid JSON" in e.value for e in at.error)


def test_explore_page_preview_then_save_a_mask(app_env: Path) -> None:
    at = _page("explore").run()
    _ok(at)
    assert "Run the preview" in _text(at)
    assert at.sidebar.number_input(key="w.explore.n_steps").value == 20
    _click(at, "Run preview")
    text = _text(at)
    assert "Showing the preview result" in text
    assert {m.label for m in at.metric} >= {"relevant", "irrelevant", "irrelevant-exclusive", "relevant-exclusive", "shared"}
    answers, top = at.dataframe[0].value, at.dataframe[1].value
    assert set(answers.view) == {"relevant", "irrelevant", "noisy", "closed_book"}
    assert list(top.columns[:4]) == ["layer", "neuron", "score_relevant", "score_irrelevant"]
    assert top.top_tokens.str.len().gt(0).all()
    assert len(_charts(at)) == 4  # three heatmaps (tabs) and the set counts
    shared = at.session_state[state.SHARED_SET]
    assert shared["example_id"] == "demo-01" and "irrelevant-exclusive" in shared["sets"]

    # the IG run with a layer subset; its gap badge
    _set_ig(at, "explore", 3, "1")
    _click(at, "Run IG (m = 3)")
    assert "Showing the IG result" in _text(at) and "on layers 1" in _text(at)

    # save the example's irrelevant-exclusive set (switch to top-k so it is never empty)
    at.sidebar.radio(key="w.explore.mode").set_value("top_k").run()
    at.sidebar.number_input(key="w.explore.top_k").set_value(10)
    at.run()
    _click(at, "Save as a mask")
    saved = [s.value for s in at.success]
    assert saved and saved[0].startswith("Saved mask"), _text(at)
    entries = artifacts.list_masks()
    assert len(entries) == 1 and entries[0].meta["provenance"]["source"] == "explore"


def test_results_of_another_model_are_never_shown(app_env: Path, tiny_gpt2_dir: Path) -> None:
    at = _page("explore").run()
    _button(at, "Run preview").click()
    at.run()
    assert "Showing the preview result" in _text(at)
    at.session_state[state.MODEL_SPEC] = state.ModelSpec(str(tiny_gpt2_dir), "cpu")  # as another session would
    at.run()
    _ok(at)
    assert "Showing the" not in _text(at) and "Run the preview" in _text(at)
    assert "GPT2LMHeadModel" not in _text(at)  # the sidebar line names the model by name and shape
    assert state.SHARED_SET not in at.session_state or at.session_state[state.SHARED_SET] is None


def test_ablate_page_hand_picked_what_if_batch_and_save(app_env: Path) -> None:
    at = _page("ablate").run()
    _ok(at)
    assert "No Explore result for this model yet" in _text(at)
    at.radio(key="w.ablate.source").set_value("Hand-picked neurons").run()
    at.text_input(key="w.ablate.neurons").set_value("0:1, 1:2, 1:40").run()
    _ok(at)
    assert "3 neurons" in _text(at)
    unmasked = at.dataframe[0].value  # computed on arrival, before any mask
    assert list(unmasked.columns) == ["view", "answer", "gold_logprob"] and list(unmasked.view) == ["relevant", "noisy", "irrelevant"]
    assert "The model without a mask: 3 view(s)" in str([e.proto.label for e in at.expander])
    _click(at, "Run what-if")
    frame = at.dataframe[1].value
    assert list(frame.view) == ["relevant", "noisy", "irrelevant"]
    assert list(frame.answer_before) == list(unmasked.answer)  # the what-if reused the unmasked side
    assert {"answer_before", "answer_after", "logprob_before", "logprob_after"} <= set(frame.columns)
    assert "Answered in" in _text(at) and "gold log-prob" in _text(at)

    at.number_input(key="w.ablate.batch_n").set_value(2)
    at.run()
    _click(at, "Run the batch (2 examples)")
    table = at.dataframe[2].value
    assert {"accuracy_base", "accuracy_masked", "accuracy_control"} <= set(table.columns)
    assert any("Accuracy without the mask" in str(c.proto.spec) for c in _charts(at))

    _click(at, "Save the mask")
    assert at.success[0].value.startswith("Saved mask")
    assert artifacts.list_masks()[0].meta["provenance"]["neurons"] == ["0:1", "1:2", "1:40"]

    # a bad neuron list is an error message, not a traceback
    at.text_input(key="w.ablate.neurons").set_value("0:1, 7:0").run()
    _ok(at)
    assert any("outside the model" in e.value for e in at.error)


def test_ablate_page_whole_layer_random_control_and_explore_set(app_env: Path) -> None:
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=TIMEOUT).run()
    at.switch_page("pages/explore.py").run()
    _button(at, "Run preview").click()
    at.run()
    at.switch_page("pages/ablate.py").run()  # same session: Explore's sets carry over
    _ok(at)
    assert "From the preview result of example demo-01" in _text(at)
    at.radio(key="w.ablate.source").set_value("Whole layer").run()
    at.checkbox(key="w.ablate.random").check().run()
    at.slider(key="w.ablate.scale").set_value(2.0).run()
    _ok(at)
    assert "48 neurons" in _text(at) and "random_like(layer 0" in _text(at) and "scale **2**" in _text(at)


def _mine_tiny(model: Any) -> Path:
    from neurorit.attribution import AttributionConfig
    from neurorit.data import demo_examples
    from neurorit.mining import mine, mined_dir
    from neurorit.neurons import SelectionRule
    from neurorit.prompts import PromptConfig

    mined = mine(model, demo_examples()[:3], AttributionConfig(n_steps=2), SelectionRule(mode="top_k", top_k=10), PromptConfig())
    return mined_dir(mined)


@dataclasses.dataclass(frozen=True)
class FakeJob:
    id: str
    state: str
    done: int = 3
    total: int = 3
    message: str = "mined demo-03"
    error: str = ""
    kind: str = "mine"
    created: float = 0.0
    eta_seconds: float | None = None
    artifacts: dict = dataclasses.field(default_factory=dict)

    @property
    def fraction(self) -> float:
        return self.done / self.total

    def log_tail(self, lines: int = 20) -> str:
        return "log line"


def test_mine_page_forms_build_the_spec_it_submits(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sidebar's widgets come from the spec's fields; what they say is what the job receives."""
    from app import jobs_client
    from neurorit.mining_spec import AttributionConfig, SelectionRule

    submitted: list[Any] = []
    monkeypatch.setattr(jobs_client, "submit_mine", lambda examples, spec: submitted.append(spec) or FakeJob("mine-9", "queued"))
    monkeypatch.setattr(jobs_client, "list_jobs", lambda limit=20: [])
    at = _page("mine").run()
    _ok(at)
    target = at.sidebar.selectbox(key="w.mine.irrelevant_target")
    assert target.options[0] == "same as the target" and target.value == forms.UNSET  # None, shown as a choice
    assert at.sidebar.number_input(key="w.mine.keep").disabled  # count only
    at.sidebar.radio(key="w.mine.mode").set_value("count").run()
    assert not at.sidebar.number_input(key="w.mine.keep").disabled and at.sidebar.slider(key="w.mine.support").disabled
    at.sidebar.number_input(key="w.mine.keep").set_value(12)
    at.sidebar.number_input(key="w.mine.max_per_layer").set_value(3)
    _set_ig(at, "mine", 4, "0-1")
    _click(at, "Start mining job")
    (spec,) = submitted
    assert spec.selection == SelectionRule(mode="count", keep=12, max_per_layer=3)
    assert spec.mining == AttributionConfig(n_steps=4, layers=(0, 1))
    assert spec.irrelevant_target is None and spec.preview is False
    at.sidebar.selectbox(key="w.mine.irrelevant_target").set_value("own_answer").run()
    _button(at, "Start mining job").click()
    at.run()
    assert submitted[-1].irrelevant_target == "own_answer"


def test_mine_page_shows_a_finished_job_and_its_sets(app_env: Path, tiny_llama, monkeypatch: pytest.MonkeyPatch) -> None:
    from app import jobs_client

    folder = _mine_tiny(tiny_llama)
    done = FakeJob("mine-1", "done", artifacts={"mined": str(folder)})
    running = FakeJob("mine-2", "running", done=1, eta_seconds=12.0, created=1.0)
    cancelled: list[str] = []
    monkeypatch.setattr(jobs_client, "list_jobs", lambda limit=20: [running, done])
    monkeypatch.setattr(jobs_client, "get", lambda job_id: {"mine-1": done, "mine-2": running}[job_id])
    from neurorit import jobs

    monkeypatch.setattr(jobs, "cancel", lambda job_id: cancelled.append(job_id))
    at = _page("mine").run()
    _ok(at)
    text = _text(at)
    assert "3 examples on tiny-llama" in text
    assert {c.proto.spec.count("Set sizes per layer") > 0 for c in _charts(at)} == {True, False}
    assert len(_charts(at)) == 3  # set sizes, overlap, stability
    assert at.dataframe[-1].value.columns.tolist()[0] == "view"  # the stability table
    _button(at, "Cancel the job").click()
    at.run()
    assert cancelled == ["mine-2"]
    at.selectbox(key="neurorit.mine.job").set_value("mine-1").run()
    _ok(at)
    assert not [b for b in at.button if b.label == "Cancel the job"]


@pytest.mark.slow
def test_mine_page_runs_a_real_background_job(app_env: Path) -> None:
    """The page's argv is accepted by `python -m neurorit mine`, and its result lands in the cache."""
    from neurorit import jobs

    at = _page("mine").run()
    at.radio(key="w.mine.which").set_value("sample").run()
    at.number_input(key="w.mine.sample_n").set_value(2)
    at.sidebar.number_input(key="w.mine.n_steps").set_value(2)
    at.run()
    _click(at, "Start mining job (2 examples)")
    job_id = at.session_state["neurorit.mine.job"]
    job = jobs.wait(job_id, timeout=300)
    assert job.state == "done", job.error + job.log_tail()
    assert Path(job.artifacts["mined"]).is_dir()
    at.run()
    _ok(at)
    assert "2 examples on tiny-llama" in _text(at)


def test_masks_page_lists_downloads_uploads_compares_and_bakes(app_env: Path, tiny_llama, tmp_path: Path) -> None:
    from neurorit.masks import NeuronMask
    from neurorit.models import model_identity
    from neurorit.neurons import NeuronSet

    at = _page("masks").run()
    _ok(at)
    assert "No mask yet" in _text(at)

    ident = model_identity(tiny_llama)
    first = NeuronMask.silencing(NeuronSet.from_neurons([(0, 1), (1, 2)], 2, 48, "first"), ident, provenance={"source": "test"})
    second = NeuronMask.silencing(NeuronSet.from_neurons([(1, 2), (1, 3)], 2, 48, "second"), ident)
    folder = artifacts.save_mask(first)
    time.sleep(0.01)
    artifacts.save_mask(second)
    at.run()
    _ok(at)
    listing = at.dataframe[0].value
    assert set(listing.label) == {"first", "second"} and listing.fits_loaded_model.all()
    assert at.get("download_button")[0].proto.label == "Download mask (.zip)"
    assert len(_charts(at)) == 2  # counts of the picked mask, overlap of the two
    assert at.dataframe[-1].value.iloc[0]["both"] == 1

    # upload the first mask back: validated and reported
    zipped = artifacts.mask_zip_bytes(folder)
    at.get("file_uploader")[0].set_value(("mask.zip", zipped, "application/zip"))
    at.run()
    _click(at, "Validate and import")
    assert any("imported and valid for tiny-llama" in s.value for s in at.success), _text(at)

    # a garbage upload is refused with a message
    at.get("file_uploader")[0].set_value(("mask.zip", b"garbage", "application/zip"))
    at.run()
    _click(at, "Validate and import")
    assert any("Upload refused" in e.value and "not a readable zip" in e.value for e in at.error)

    # bake the picked mask into a checkpoint folder
    out = tmp_path / "baked"
    at.text_input(key=f"masks.out.{artifacts.list_masks()[0].key}").set_value(str(out))
    _click(at, "Export the baked checkpoint")
    assert any(s.value.startswith("Baked") for s in at.success), _text(at)
    assert (out / "config.json").is_file() and (out / "neurorit_mask.json").is_file()
