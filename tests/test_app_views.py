"""The workbench's pure helpers: views (artifact -> figure / DataFrame), parsers, mask files, state.

Hand-made artifacts with known contents, so every figure's data and every table's values can be
checked exactly; the promoted-token helper against an independent computation on the tiny model's
plain Hugging Face weights; and the rule that the library never imports streamlit.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
from app import artifacts, forms, state, views
from neurorit import readout
from neurorit.attribution import NeuronScores
from neurorit.data import Passage, RagExample
from neurorit.errors import ArtifactError, ConfigError, DataError, ModelMismatchError
from neurorit.evaluation import WhatIf
from neurorit.masks import NeuronMask
from neurorit.models import ModelIdentity, model_identity
from neurorit.neurons import NeuronSet, SelectionRule, parse_neurons

IDENT = ModelIdentity(name="toy", architecture="LlamaForCausalLM", n_layers=3, d_mlp=8, fingerprint="f" * 16)


def _scores(grid: torch.Tensor, layers: tuple[int, ...], *, f_input: float = 1.0, gap: float = 0.0,
            method: str = "ig", view: str = "relevant") -> NeuronScores:
    n_layers = grid.shape[0]
    f_base = torch.full((n_layers,), float("nan"), dtype=torch.float64)
    gaps = torch.full((n_layers,), float("nan"), dtype=torch.float64)
    for layer in layers:
        f_base[layer] = 0.0
        gaps[layer] = gap
    return NeuronScores(scores=grid.float(), layers=layers, f_input=f_input, f_baseline=f_base, gap=gaps,
                        example_id="ex", view=view, method=method)


def _grid(entries: dict[tuple[int, int], float], n_layers: int = 3, d_mlp: int = 8) -> torch.Tensor:
    grid = torch.zeros(n_layers, d_mlp)
    for (layer, index), value in entries.items():
        grid[layer, index] = value
    return grid


# ---- heatmap ------------------------------------------------------------------------------------


def test_downsample_keeps_the_strongest_neuron_of_each_block_with_its_sign() -> None:
    grid = np.array([[0.1, -0.9, 0.2, 0.3, 0.5], [0.0, 0.0, 0.0, 0.0, -0.4]])
    values, index, block = views.downsample_columns(grid, max_columns=3)
    assert block == 2
    np.testing.assert_array_equal(values, [[-0.9, 0.3, 0.5], [0.0, 0.0, -0.4]])
    np.testing.assert_array_equal(index, [[1, 3, 4], [0, 2, 4]])


def test_heatmap_is_layer_by_neuron_with_hover_naming_layer_neuron_score() -> None:
    scores = _scores(_grid({(0, 3): 2.0, (2, 7): -1.0}), layers=(0, 2))
    fig = views.heatmap_figure(scores, title="relevant view")
    assert isinstance(fig, go.Figure) and len(fig.data) == 1
    heat = fig.data[0]
    assert isinstance(heat, go.Heatmap)
    assert fig.layout.xaxis.title.text == "neuron" and fig.layout.yaxis.title.text == "layer"
    assert fig.layout.title.text == "relevant view"
    z = np.array(heat.z, dtype=float)
    assert z.shape == (3, 8)
    assert z[0, 3] == 2.0 and z[2, 7] == -1.0
    assert np.isnan(z[1]).all()  # layer 1 was not attributed: blank, not zero
    assert heat.zmid == 0 and heat.zmax == 2.0 and heat.zmin == -2.0
    for word in ("layer %{y}", "neuron %{customdata[0]}", "score %{z"):
        assert word in heat.hovertemplate
    assert np.array(heat.customdata)[2, 7, 0] == 7


def test_heatmap_of_a_wide_grid_is_downsampled_but_hover_names_the_real_neuron() -> None:
    grid = torch.zeros(2, 1000)
    grid[1, 777] = 5.0
    fig = views.heatmap_figure(grid, max_columns=100)
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    assert z.shape == (2, 100)
    col = int(np.nanargmax(z[1]))
    assert z[1, col] == 5.0 and np.array(heat.customdata)[1, col, 0] == 777
    assert "strongest of 10" in heat.hovertemplate


def test_heatmap_clips_its_color_range_so_outliers_do_not_wash_out_the_rest() -> None:
    grid = torch.linspace(-1, 1, 30 * 100).reshape(30, 100)
    grid[0, 0] = 500.0
    heat = views.heatmap_figure(grid).data[0]
    assert 0.99 < heat.zmax < 1.0 and heat.zmin == -heat.zmax
    assert np.array(heat.z, dtype=float)[0, 0] == 500.0  # the value (and its hover) stays exact
    assert "clipped" in heat.colorbar.title.text
    assert "clipped" not in views.heatmap_figure(torch.ones(2, 3)).data[0].colorbar.title.text


def test_difference_grid_is_nan_where_either_view_was_not_attributed() -> None:
    a = _scores(_grid({(0, 1): 3.0}), layers=(0, 1))
    b = _scores(_grid({(0, 1): 1.0}), layers=(0,))
    diff = views.difference_grid(a, b)
    assert diff[0, 1] == 2.0 and np.isnan(diff[1]).all() and np.isnan(diff[2]).all()


# ---- health badge -------------------------------------------------------------------------------


@pytest.mark.parametrize(("gap", "level", "color"), [(0.005, "ok", "green"), (0.03, "warn", "orange"), (0.2, "bad", "red")])
def test_gap_health_thresholds(gap: float, level: str, color: str) -> None:
    health = views.gap_health(_scores(_grid({(0, 0): 1.0}), layers=(0,), f_input=1.0, gap=gap))
    assert (health.level, health.color) == (level, color)
    assert health.value == pytest.approx(gap)
    assert f"{gap:.2%}" in health.label


def test_gap_health_of_the_preview_is_not_applicable() -> None:
    preview = _scores(_grid({(0, 0): 1.0}), layers=(0,), method="preview")
    preview = NeuronScores(preview.scores, preview.layers, 1.0, torch.full((3,), float("nan"), dtype=torch.float64),
                           torch.full((3,), float("nan"), dtype=torch.float64), method="preview")
    assert views.gap_health(preview).color == "gray"


# ---- sets ---------------------------------------------------------------------------------------


def test_example_sets_and_their_counts_figure() -> None:
    rel = _scores(_grid({(0, 0): 1.0, (0, 1): 0.9, (1, 2): 0.05}), layers=(0, 1, 2))
    irr = _scores(_grid({(0, 1): 1.0, (2, 5): 0.8, (2, 6): 0.5}), layers=(0, 1, 2), view="irrelevant")
    sets = views.example_sets(rel, irr, SelectionRule(threshold=0.5))
    assert sets["relevant"].neurons() == [(0, 0), (0, 1)]
    assert sets["irrelevant"].neurons() == [(0, 1), (2, 5), (2, 6)]
    assert sets["irrelevant-exclusive"].neurons() == [(2, 5), (2, 6)]
    assert sets["relevant-exclusive"].neurons() == [(0, 0)]
    assert sets["shared"].neurons() == [(0, 1)]
    fig = views.set_counts_figure(sets)
    assert [t.name for t in fig.data] == ["relevant (2)", "irrelevant (3)", "irrelevant-exclusive (2)",
                                         "relevant-exclusive (1)", "shared (1)"]
    assert all(isinstance(t, go.Bar) for t in fig.data)
    assert list(fig.data[2].y) == [0, 0, 2]
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "neurons"
    per_layer = views.example_sets(rel, irr, SelectionRule(threshold=0.5, scope="layer"))
    assert per_layer["relevant"].neurons() == [(0, 0), (0, 1), (1, 2)]  # layer 1's small peak counts on its own
    frame = views.counts_frame({n: s.counts_per_layer() for n, s in sets.items()})
    assert list(frame.columns) == ["layer", "set", "count"] and len(frame) == 15
    assert int(frame.query("set == 'irrelevant' and layer == 2")["count"].iloc[0]) == 2


def test_overlap_figure_and_summary() -> None:
    a = NeuronSet.from_neurons([(0, 0), (0, 1), (2, 3)], 3, 8)
    b = NeuronSet.from_neurons([(0, 1), (1, 4)], 3, 8)
    fig = views.overlap_figure(a, b, names=("A", "B"))
    assert fig.layout.barmode == "stack"
    assert [list(t.y) for t in fig.data] == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert [t.name for t in fig.data] == ["only A (2)", "both (1)", "only B (1)"]
    summary = views.overlap_summary(a, b, names=("A", "B"))
    assert summary.iloc[0].to_dict() == {"A": 3, "B": 2, "both": 1, "either": 4, "jaccard": 0.25}


def test_stability_histogram_and_table() -> None:
    rel_freq = _grid({(0, 0): 1.0, (0, 1): 0.5, (1, 1): 0.25})
    irr_freq = _grid({(2, 2): 0.75})
    mined = SimpleNamespace(relevant_frequency=rel_freq, irrelevant_frequency=irr_freq,
                            provenance={"selection": {"support": 0.5}})
    fig = views.stability_figure(mined)
    assert [t.type for t in fig.data] == ["histogram", "histogram"]
    assert sorted(np.asarray(fig.data[0].x).tolist()) == [0.25, 0.5, 1.0]  # only neurons selected at least once
    assert fig.layout.xaxis.title.text == "fraction of examples selecting the neuron"
    assert any(shape.x0 == 0.5 for shape in fig.layout.shapes)  # the support line
    table = views.stability_frame(mined)
    assert table.to_dict("records") == [
        {"view": "relevant", "selected at least once": 3, "kept (>= support)": 2, "selected by every example": 1},
        {"view": "irrelevant", "selected at least once": 1, "kept (>= support)": 1, "selected by every example": 0},
    ]


# ---- top neurons --------------------------------------------------------------------------------


def test_top_neurons_frame_ranks_by_the_strongest_view_and_has_every_column() -> None:
    rel = _scores(_grid({(0, 0): 0.5, (1, 3): -2.0}), layers=(0, 1, 2))
    irr = _scores(_grid({(2, 7): 1.0, (0, 0): 0.1}), layers=(0, 1, 2), view="irrelevant")
    frame = views.top_neurons_frame({"relevant": rel, "irrelevant": irr}, k=3, promoted={(1, 3): ["'a'", "'b'"]})
    assert list(frame.columns) == ["layer", "neuron", "score_relevant", "score_irrelevant",
                                   "irrelevant_minus_relevant", "top_tokens"]
    assert list(zip(frame.layer, frame.neuron)) == [(1, 3), (2, 7), (0, 0)]
    first = frame.iloc[0]
    assert first.score_relevant == -2.0 and first.score_irrelevant == 0.0
    assert first.irrelevant_minus_relevant == 2.0 and first.top_tokens == "'a' · 'b'"
    assert frame.iloc[2].irrelevant_minus_relevant == pytest.approx(0.1 - 0.5)
    assert views.top_neurons({"relevant": torch.zeros(2, 4)}) == []


def test_promoted_tokens_match_an_independent_computation(tiny_model, tiny_llama_dir: Path, tiny_gpt2_dir: Path) -> None:
    """W_out[L][i] @ W_U^T top-k, against the plain HF model's own modules (not hf_state_dict)."""
    from transformers import AutoModelForCausalLM

    is_gpt2 = tiny_model.cfg.architecture == "GPT2LMHeadModel"
    hf = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir if is_gpt2 else tiny_llama_dir, dtype=torch.float32)
    neurons = [(0, 0), (0, 5), (1, 47)]
    got = readout.promoted_token_ids(tiny_model, neurons, k=5)
    w_u = hf.get_output_embeddings().weight.detach()  # [d_vocab, d_model]
    for layer, index in neurons:
        if is_gpt2:
            direction = hf.transformer.h[layer].mlp.c_proj.weight.detach()[index]  # Conv1D [d_mlp, d_model]
        else:
            direction = hf.model.layers[layer].mlp.down_proj.weight.detach()[:, index]  # Linear [d_model, d_mlp]
        expected = (w_u @ direction).topk(5).indices.tolist()
        assert got[(layer, index)] == expected
    decoded = readout.promoted_tokens(tiny_model, [(1, 47)], k=3)[(1, 47)]
    assert len(decoded) == 3 and all(isinstance(t, str) and t.startswith(("'", '"')) for t in decoded)


# ---- answers, what-if, ablation -----------------------------------------------------------------


def test_answers_and_whatif_frames() -> None:
    answers = views.answers_frame([{"view": "relevant", "answer": "Canberra", "correct": True, "logprob": -0.5, "n_tokens": 90}])
    assert answers.to_dict("records") == [{"view": "relevant", "answer": "Canberra", "correct": True,
                                           "gold_logprob": -0.5, "prompt_tokens": 90}]
    unmasked = views.unmasked_frame([("noisy", "Sydney", -3.0), ("relevant", "Canberra", -0.25)])
    assert unmasked.to_dict("records") == [{"view": "noisy", "answer": "Sydney", "gold_logprob": -3.0},
                                           {"view": "relevant", "answer": "Canberra", "gold_logprob": -0.25}]
    items = [WhatIf("noisy", "Sydney", "Canberra", -3.0, -1.0, False, True), WhatIf("irrelevant", "Sydney", "Sydney", -4.0, -4.5, False, False)]
    frame = views.whatif_frame(items)
    assert list(frame.columns) == views.WHATIF_COLUMNS
    assert frame.delta_logprob.tolist() == [2.0, -0.5] and frame.changed.tolist() == [True, False]
    assert frame.correct_after.tolist() == [True, False]


def test_ablation_figure_has_one_bar_group_per_run() -> None:
    table = pd.DataFrame({"view": ["relevant", "noisy"], "n_distractors": [0, 4], "accuracy_base": [1.0, 0.5],
                          "accuracy_masked": [1.0, 0.75], "accuracy_control": [0.5, 0.5]})
    fig = views.ablation_figure(table)
    assert [t.name for t in fig.data] == ["base", "masked", "control"]
    assert list(fig.data[0].x) == ["relevant", "noisy (4)"] and list(fig.data[1].y) == [1.0, 0.75]
    assert fig.layout.yaxis.title.text == "accuracy"


def test_masks_and_jobs_frames() -> None:
    entry = artifacts.Entry("k" * 16, Path("/x"), {"n_neurons": 5, "scale_values": [0.0, 1.0], "model": {"name": "toy", "fingerprint": "f" * 16},
                                                   "provenance": {"set_label": "irrelevant-exclusive", "source": "explore"}}, "", 0.0)
    frame = views.masks_frame([entry], fingerprint="f" * 16)
    row = frame.iloc[0]
    assert (row.label, row.source, row.neurons, row.scale, row.model, bool(row.fits_loaded_model)) == (
        "irrelevant-exclusive", "explore", 5, "0", "toy", True)
    job = SimpleNamespace(id="mine-1", kind="mine", state="running", done=3, total=10, eta_seconds=75.0, message="mined x",
                          error="", created=0.0)
    jobs = views.jobs_frame([job])
    assert jobs.iloc[0][["progress", "eta", "message"]].tolist() == ["3/10", "1 min 15 s", "mined x"]
    assert views.format_seconds(None) == "-" and views.format_seconds(7200) == "2 h 00 min"


# ---- editing an example -------------------------------------------------------------------------


def _example() -> RagExample:
    return RagExample(id="e1", question="Capital of Australia?", answers=("Canberra",), passages=(
        Passage("Canberra is the capital.", "Canberra", True), Passage("Sydney is big.", "Sydney", False)))


def test_passages_round_trip_unchanged() -> None:
    example = _example()
    frame = views.passages_frame(example)
    assert list(frame.columns) == views.PASSAGE_COLUMNS and frame.order.tolist() == [1, 2]
    assert views.example_from_edit(example, example.question, "Canberra", frame) == example


def test_edit_reorders_flags_adds_and_deletes_passages() -> None:
    example = _example()
    frame = views.passages_frame(example)
    frame.loc[0, "order"] = 3  # move the relevant passage last
    frame.loc[1, "relevant"] = True
    frame = pd.concat([frame, pd.DataFrame([{"order": 2, "relevant": False, "title": None, "text": "Perth is far."},
                                            {"order": 9, "relevant": None, "title": "", "text": "  "}])], ignore_index=True)
    edited = views.example_from_edit(example, "  The capital of Australia?  ", "Canberra\nCanberra, ACT\n", frame)
    assert edited.question == "The capital of Australia?" and edited.answers == ("Canberra", "Canberra, ACT")
    assert [p.title for p in edited.passages] == ["Sydney", "", "Canberra"]
    assert [p.relevant for p in edited.passages] == [True, False, True]
    assert edited.relevance_rule == "edited"


def test_edit_refuses_an_example_without_answers() -> None:
    with pytest.raises(DataError, match="answers is empty"):
        views.example_from_edit(_example(), "q", "\n  \n", views.passages_frame(_example()))


# ---- parsers ------------------------------------------------------------------------------------


def test_parse_layers() -> None:
    assert forms.parse_layers("", 30) is None and forms.parse_layers("all", 30) is None
    assert forms.parse_layers("0-3, 7,7", 30) == (0, 1, 2, 3, 7)
    with pytest.raises(ConfigError, match="outside"):
        forms.parse_layers("29-30", 30)
    with pytest.raises(ConfigError, match="expected integers"):
        forms.parse_layers("a-b", 30)


def test_parse_neurons() -> None:
    assert parse_neurons("3:17, 12:404;3:17", 30, 1536) == [(3, 17), (12, 404)]
    with pytest.raises(ConfigError, match="layer:index"):
        parse_neurons("3-17", 30, 1536)
    with pytest.raises(ConfigError, match="outside the model"):
        parse_neurons("30:0", 30, 1536)
    with pytest.raises(ConfigError, match="no neurons"):
        parse_neurons(" , ", 30, 1536)


# ---- mask files ---------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _mask(neurons=((0, 1), (2, 3))) -> NeuronMask:
    return NeuronMask.silencing(NeuronSet.from_neurons(list(neurons), 3, 8, "test set"), IDENT, provenance={"source": "test"})


def test_save_list_zip_and_unpack_a_mask(cache: Path, tmp_path: Path) -> None:
    mask = _mask()
    folder = artifacts.save_mask(mask)
    assert folder == cache / "masks" / mask.key()
    assert artifacts.save_mask(mask) == folder  # idempotent
    entries = artifacts.list_masks()
    assert [e.key for e in entries] == [mask.key()] and entries[0].meta["n_neurons"] == 2
    data = artifacts.mask_zip_bytes(folder)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["mask.json", "mask.safetensors"]
    unpacked = artifacts.unpack_mask_upload([("m.zip", data)], tmp_path / "a")
    back = NeuronMask.load(unpacked)
    assert back.key() == mask.key() and torch.equal(back.scale, mask.scale)
    loose = [(name, (folder / name).read_bytes()) for name in ("mask.safetensors", "mask.json")]
    assert NeuronMask.load(artifacts.unpack_mask_upload(loose, tmp_path / "b")).key() == mask.key()


def test_a_zip_inside_a_folder_and_with_junk_is_accepted(cache: Path, tmp_path: Path) -> None:
    folder = artifacts.save_mask(_mask())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.write(folder / "mask.safetensors", "some/dir/mask.safetensors")
        zf.write(folder / "mask.json", "some/dir/mask.json")
        zf.writestr("__MACOSX/._mask.json", b"junk")
        zf.writestr("README.txt", b"hello")
    out = artifacts.unpack_mask_upload([("m.zip", buffer.getvalue())], tmp_path / "u")
    assert sorted(p.name for p in out.iterdir()) == ["mask.json", "mask.safetensors"]


@pytest.mark.parametrize(("files", "message"), [
    ([], "nothing uploaded"),
    ([("m.zip", b"not a zip")], "not a readable zip"),
    ([("mask.json", b"{}")], "lacks mask.safetensors"),
    ([("mask.safetensors", b"x"), ("mask.json", b"{nope")], "not valid JSON"),
    ([("weights.bin", b"x")], "expected a .zip"),
    ([("a.json", b"{}"), ("b.json", b"{}")], "upload one mask at a time"),
])
def test_bad_uploads_are_refused_with_a_message(files, message: str, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=message):
        artifacts.unpack_mask_upload(files, tmp_path / "x")


def test_import_validates_against_the_model(cache: Path, tiny_llama) -> None:
    ident = model_identity(tiny_llama)
    good = NeuronMask.silencing(NeuronSet.from_neurons([(1, 2)], ident.n_layers, ident.d_mlp, "x"), ident)
    folder = artifacts.save_mask(good)
    files = [("mask.zip", artifacts.mask_zip_bytes(folder))]
    mask, saved = artifacts.import_mask(files, tiny_llama)
    assert mask.key() == good.key() and saved == folder
    other = artifacts.save_mask(_mask())  # made for a 3 x 8 toy model
    with pytest.raises(ModelMismatchError, match="mined on another model"):
        artifacts.import_mask([("mask.zip", artifacts.mask_zip_bytes(other))], tiny_llama)
    tampered = json.loads((folder / "mask.json").read_text())
    tampered["scale_sha256"] = "0" * 64
    bad = [("mask.safetensors", (folder / "mask.safetensors").read_bytes()), ("mask.json", json.dumps(tampered).encode())]
    with pytest.raises(ArtifactError, match="checksum"):
        artifacts.import_mask(bad, tiny_llama)
    pickled = [("mask.safetensors", b"\x80\x02" + b"\x00" * 32), ("mask.json", (folder / "mask.json").read_bytes())]
    with pytest.raises(ArtifactError, match="never unpickles"):
        artifacts.import_mask(pickled, tiny_llama)


def test_list_mined_reads_records_and_skips_unfinished_folders(cache: Path) -> None:
    (cache / "mined" / "abc").mkdir(parents=True)
    (cache / "mined" / "abc" / "mined.json").write_text(json.dumps({"model": {"n_layers": 3, "d_mlp": 8}, "example_ids": ["a", "b"]}))
    (cache / "mined" / ".abc.tmp").mkdir()
    (cache / "mined" / "half").mkdir()
    entries = artifacts.list_mined()
    assert [e.key for e in entries] == ["abc"]
    assert artifacts.fits(entries[0], n_layers=3, d_mlp=8) and not artifacts.fits(entries[0], n_layers=30, d_mlp=8)
    assert "2 examples" in artifacts.mined_label(entries[0])


# ---- session state ------------------------------------------------------------------------------


def test_default_spec_reads_the_environment() -> None:
    assert state.default_spec({}) == state.ModelSpec()
    assert state.default_spec({"NEURORIT_MODEL": "/m", "NEURORIT_DEVICE": "cuda", "NEURORIT_DTYPE": "auto"}) == \
        state.ModelSpec("/m", "cuda", None)


def test_changing_the_model_drops_its_results() -> None:
    s: dict = {}
    state.set_model_spec(state.ModelSpec("/a"), s)
    state.results("model-a", s)["x"] = 1
    state.set_shared_set({"model": "model-a"}, s)
    assert state.set_model_spec(state.ModelSpec("/a"), s) is False
    assert state.results("model-a", s) == {"x": 1}
    assert state.set_model_spec(state.ModelSpec("/b"), s) is True
    assert state.shared_set(s) is None and state.results("model-a", s) == {}
    state.results("model-a", s)["x"] = 2
    assert state.results("model-b", s) == {}  # another identity never sees model-a's results


def test_examples_default_to_the_demo_set_and_edits_can_be_reverted() -> None:
    s: dict = {}
    items = state.examples(s)
    assert len(items) == 42 and state.dataset_label(s) == "demo set"
    state.set_example_index(1, s)
    edited = items[1].with_passages(items[1].passages[:2])
    state.replace_example(edited, s)
    assert state.current_example(s) == edited and state.original_example(s) == items[1]
    state.set_examples(items[:3], "three", s)
    assert state.example_index(s) == 0 and len(state.examples(s)) == 3


# ---- the library stays free of streamlit --------------------------------------------------------


def test_the_library_never_imports_streamlit() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "import neurorit\n"
        "names = [m.name for m in pkgutil.walk_packages(neurorit.__path__, 'neurorit.')]\n"
        "for name in names:\n"
        "    if name != 'neurorit.__main__':\n"
        "        importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.'))\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) >= 10  # it did walk the package


def test_pages_end_runs_through_the_finished_marker() -> None:
    """A page that ends a run early calls state.stop_run(), which writes the 'run finished' marker the
    browser tests wait for; a bare st.stop() would leave them waiting for a run that did finish."""
    bare = [f"{path.relative_to(ROOT)}:{n}" for path in [*(ROOT / "pages").glob("*.py"), *(ROOT / "app").glob("*.py"),
                                                         ROOT / "streamlit_app.py"]
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if "st.stop()" in line and path.name != "state.py"]  # state.py: stop_run itself
    assert not bare, bare
    assert "state.stop_run()" in (ROOT / "pages" / "explore.py").read_text()  # the rule is used, not vacuous
