"""The command line, driven in-process through `neurorit.cli.main`: every subcommand's help, the
whole flow on the tiny Llama and the demo set, YAML configs with flag overrides, and bad input
(exit code 2 with a one-line reason, never a traceback)."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from neurorit.cli import main
from neurorit.evaluation import EvalReport
from neurorit.masks import NeuronMask
from neurorit.mining import MinedNeurons
from cli_harness import ok, reason, run


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mined(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`neurorit mine` once on the tiny Llama and 3 demo examples: (mined folder, its stdout)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEURORIT_CACHE", str(tmp_path_factory.mktemp("mined-cache")))
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = main(["mine", "--model", str(tiny_llama_dir), "--data", "demo", "--limit", "3",
                         "--n-steps", "3", "--quiet"])
    assert code == 0
    text = out.getvalue()
    path = Path(text.strip().splitlines()[-1].removeprefix("mined sets: "))
    return path, text


# ----------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize("command, options", [
    ("prepare", ["--quiet"]),
    ("mine", ["--model", "--data", "--limit", "--config", "--layers", "--n-steps", "--baseline", "--support",
              "--threshold", "--preview"]),
    ("sets", ["--mined", "--set", "--json", "irrelevant-exclusive"]),
    ("mask", ["--mined", "--set", "--neurons", "--layer", "--random-like", "--scale", "--out"]),
    ("evaluate", ["--model", "--data", "--mask", "--views", "--noise-levels", "--max-new-tokens", "--out"]),
    ("ablate", ["--mask", "--example", "--control-seed", "--no-control", "--views", "--out"]),
    ("export", ["--mask", "--out", "--overwrite", "--loose"]),
    ("jobs", ["list", "show", "wait", "cancel"]),
    ("submit", ["mine", "evaluate", "ablate"]),
])
def test_help_of_every_subcommand(capsys, command, options):
    code, out, _ = run(capsys, command, "--help")
    assert code == 0
    assert out.startswith(f"usage: neurorit {command}")
    missing = [o for o in options if o not in out]
    assert not missing, out


def test_top_level_help_lists_the_subcommands(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in ("prepare", "mine", "sets", "mask", "evaluate", "ablate", "export", "jobs", "submit"):
        assert command in out


# ----------------------------------------------------------------------------------------------
# the flow: mine -> sets -> mask -> evaluate / ablate -> export


def test_mine_prints_the_per_layer_table_and_the_folder(mined):
    path, out = mined
    assert path.is_dir() and (path / "mined.json").is_file()
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("layer "))
    assert header.split() == ["layer", "relevant", "irrelevant", "irrelevant-exclusive", "relevant-exclusive", "shared"]
    loaded = MinedNeurons.load(path)
    total = next(line for line in lines if line.startswith("total "))
    assert [int(c) for c in total.split()[1:]] == [len(s) for s in loaded.named_sets().values()]
    assert loaded.example_ids == ("demo-01", "demo-02", "demo-03")
    assert f"mined sets: {path}" in lines


def test_sets_table_and_one_set_as_json(mined, capsys):
    path, _ = mined
    loaded = MinedNeurons.load(path)
    out = ok(capsys, "sets", "--mined", path)
    assert out.splitlines()[0] == loaded.summary()
    assert "irrelevant-exclusive" in out.splitlines()[1]

    out = ok(capsys, "sets", "--mined", path, "--set", "irrelevant-exclusive", "--json")
    data = json.loads(out)
    assert data["set"] == "irrelevant-exclusive"
    assert [tuple(n) for n in data["neurons"]] == loaded.irrelevant_exclusive.neurons()

    out = ok(capsys, "sets", "--mined", path, "--set", "relevant")
    assert out.splitlines()[0] == f"relevant: {len(loaded.relevant)} neurons"


def test_mask_from_a_mined_set_round_trips(mined, tiny_llama_dir, tiny_llama, tmp_path, capsys):
    path, _ = mined
    out_dir = tmp_path / "mask"
    out = ok(capsys, "mask", "--model", tiny_llama_dir, "--mined", path, "--set", "irrelevant", "--out", out_dir,
             "--quiet")
    assert (out_dir / "mask.safetensors").is_file() and (out_dir / "mask.json").is_file()
    assert f"saved: {out_dir}" in out
    mask = NeuronMask.load(out_dir, tiny_llama)  # strict: made for exactly these weights
    assert mask.neurons == MinedNeurons.load(path).irrelevant
    assert mask.provenance["set"] == "irrelevant" and mask.provenance["mined"] == MinedNeurons.load(path).key()
    assert mask.key() == NeuronMask.from_mined(MinedNeurons.load(path), "irrelevant").key()  # as a page or training makes it
    torch.testing.assert_close(mask.scale[mask.neurons.grid], torch.zeros(len(mask)))


def test_mask_from_neurons_a_layer_and_random_like(mined, tiny_llama_dir, tmp_path, capsys):
    path, _ = mined
    ok(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "0:1,1:5", "--scale", "2", "--out", tmp_path / "hand")
    hand = NeuronMask.load(tmp_path / "hand")
    assert hand.neurons.neurons() == [(0, 1), (1, 5)]
    torch.testing.assert_close(hand.scale[1, 5], torch.tensor(2.0))

    ok(capsys, "mask", "--model", tiny_llama_dir, "--layer", "1", "--out", tmp_path / "layer")
    layer = NeuronMask.load(tmp_path / "layer")
    assert layer.counts_per_layer() == [0, 48] and layer.layers == [1]

    ok(capsys, "mask", "--model", tiny_llama_dir, "--mined", path, "--set", "relevant", "--random-like", "3",
       "--out", tmp_path / "random")
    random = NeuronMask.load(tmp_path / "random")
    assert random.counts_per_layer() == MinedNeurons.load(path).relevant.counts_per_layer()
    assert random.provenance["kind"] == "random_control" and random.provenance["seed"] == 3


def test_evaluate_prints_a_table_and_saves_a_report(tiny_llama_dir, tmp_path, capsys):
    report_path = tmp_path / "r.json"
    out = ok(capsys, "evaluate", "--model", tiny_llama_dir, "--data", "demo", "--views", "relevant,noisy",
             "--noise-levels", "0,1", "--limit", "2", "--max-new-tokens", "3", "--out", report_path, "--quiet")
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["view", "n_distractors", "n"] and "accuracy" in lines[0]
    assert [line.split()[:2] for line in lines[1:4]] == [["relevant", "0"], ["noisy", "0"], ["noisy", "1"]]
    assert lines[-1] == f"report: {report_path}"
    report = EvalReport.load(report_path)
    assert report.table()["n"].tolist() == [2, 2, 2]


def test_ablate_table_and_what_if(tiny_llama_dir, tmp_path, capsys):
    ok(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "0:1,1:5", "--out", tmp_path / "mask")
    out = ok(capsys, "ablate", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--data", "demo",
             "--limit", "2", "--max-new-tokens", "3", "--views", "relevant,closed_book", "--quiet")
    header = out.splitlines()[0].split()
    for column in ("accuracy_base", "accuracy_masked", "accuracy_control", "delta_accuracy_masked"):
        assert column in header
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["relevant", "closed_book"]

    out = ok(capsys, "ablate", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--example", "demo-01",
             "--max-new-tokens", "3", "--views", "relevant", "--quiet")
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[relevant] before: ") and " after: " in lines[0]


def test_export_writes_a_checkpoint_transformers_loads(tiny_llama_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    ok(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "1:5", "--out", tmp_path / "mask")
    ckpt = tmp_path / "ckpt"
    out = ok(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", ckpt)
    assert str(ckpt) in out
    baked = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    changed = sorted(k for k in original if not torch.equal(original[k], baked[k]))
    assert changed and all(k.startswith("model.layers.1.mlp.") for k in changed), changed
    # exporting again into the same folder needs --overwrite
    assert "exist" in reason(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", ckpt)
    ok(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", ckpt, "--overwrite")


# ----------------------------------------------------------------------------------------------
# YAML config with flag overrides


def test_config_file_values_apply_and_flags_override_them(tiny_llama_dir, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_llama_dir), "data": "demo", "limit": 2,
        "mining": {"n_steps": 2}, "selection": {"support": 1.0}, "prompt": {"n_distractors": 1},
    }))
    out = ok(capsys, "mine", "--config", config, "--n-steps", "3", "--quiet")
    folder = Path(out.strip().splitlines()[-1].removeprefix("mined sets: "))
    provenance = json.loads((folder / "mined.json").read_text())["provenance"]
    assert provenance["mining"]["n_steps"] == 3  # the flag beat the file
    assert provenance["selection"]["support"] == 1.0  # the file beat the default (0.5)
    assert provenance["prompt"]["n_distractors"] == 1  # the file beat the default (4)
    assert provenance["n_examples_given"] == 2
    assert provenance["model"]["name"] == tiny_llama_dir.name


# ----------------------------------------------------------------------------------------------
# bad input: exit 2, one line, no traceback


class _Trap:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_unpickled, ())


UNPICKLED: list[str] = []


def _unpickled() -> dict:
    UNPICKLED.append("unpickled!")
    return {}


def test_unknown_model_name(capsys):
    message = reason(capsys, "mine", "--model", "no-such-org/no-such-model", "--data", "demo", "--limit", "1")
    assert "no-such-org/no-such-model" in message and "never downloads" in message


def test_missing_data_file(tiny_llama_dir, tmp_path, capsys):
    message = reason(capsys, "mine", "--model", tiny_llama_dir, "--data", tmp_path / "nope.jsonl")
    assert "nope.jsonl does not exist" in message


def test_dataset_line_that_is_not_json_names_the_line(tiny_llama_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    good = {"id": "q1", "question": "Who?", "answers": ["A"], "passages": [{"text": "A did it.", "relevant": True}]}
    data.write_text(json.dumps(good) + "\n" + "{not json\n")
    message = reason(capsys, "evaluate", "--model", tiny_llama_dir, "--data", data)
    assert "line 2" in message and "not valid JSON" in message


def test_layers_that_are_not_integers(tiny_llama_dir, capsys):
    message = reason(capsys, "mine", "--model", tiny_llama_dir, "--data", "demo", "--layers", "x")
    assert "'x'" in message and "integers" in message


@pytest.mark.parametrize("content, named", [
    ({"mining": {"n_stepz": 2}}, "n_stepz"),
    ({"selection": {"suport": 0.5}}, "suport"),
    ({"eval": {"viewz": ["relevant"]}}, "viewz"),
    ({"limt": 2}, "limt"),
])
def test_config_file_with_an_unknown_field(tiny_llama_dir, tmp_path, capsys, content, named):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"model": str(tiny_llama_dir), **content}))
    command = "evaluate" if "eval" in content else "mine"
    message = reason(capsys, command, "--config", config, "--limit", "1")
    assert named in message


def test_config_file_that_is_not_yaml(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("mining: {n_steps: 2\nselection: [\n")
    assert "not valid YAML" in reason(capsys, "mine", "--config", config)


@pytest.mark.parametrize("zipped", [True, False])
def test_mask_file_that_is_a_pickle_is_refused_unread(tiny_llama_dir, tmp_path, capsys, monkeypatch, zipped):
    ok(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "0:1", "--out", tmp_path / "mask")
    torch.save({"scale": torch.ones(2, 48), "trap": _Trap()}, tmp_path / "mask" / "mask.safetensors",
               _use_new_zipfile_serialization=zipped)

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a mask load must never unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    message = reason(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", tmp_path / "c")
    assert "never unpickles" in message
    assert UNPICKLED == []
    assert not (tmp_path / "c").exists()


def test_mask_made_for_another_model(tiny_llama_dir, tiny_gpt2_dir, tmp_path, capsys):
    ok(capsys, "mask", "--model", tiny_gpt2_dir, "--neurons", "0:1", "--out", tmp_path / "gpt2-mask")
    for loose in ([], ["--loose"]):  # another architecture: --loose does not help
        message = reason(capsys, "ablate", "--model", tiny_llama_dir, "--mask", tmp_path / "gpt2-mask",
                         "--data", "demo", "--limit", "1", *loose)
        assert "mined on another model" in message and "GPT2" in message and "Llama" in message


def test_mask_needs_exactly_one_source(tiny_llama_dir, mined, capsys):
    message = reason(capsys, "mask", "--model", tiny_llama_dir)
    assert "--mined" in message and "--neurons" in message and "--layer" in message
    reason(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "0:1", "--layer", "1")
    assert "0..1" in reason(capsys, "mask", "--model", tiny_llama_dir, "--layer", "7")
    assert "'0-1'" in reason(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "0-1")


def test_unknown_set_name(mined, tiny_llama_dir, capsys):
    path, _ = mined
    message = reason(capsys, "sets", "--mined", path, "--set", "bogus")
    assert "'bogus'" in message and "irrelevant-exclusive" in message
    message = reason(capsys, "mask", "--model", tiny_llama_dir, "--mined", path, "--set", "bogus")
    assert "'bogus'" in message


def test_mine_with_zero_steps(tiny_llama_dir, capsys):
    message = reason(capsys, "mine", "--model", tiny_llama_dir, "--data", "demo", "--n-steps", "0")
    assert "n_steps = 0" in message
