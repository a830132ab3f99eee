"""Bad files and bad output paths: a broken model folder (truncated safetensors, a pickle that
torch's `weights_only` refuses, a config.json that is not JSON, no weights), a mask or export
`--out` that is an existing file, and `export --overwrite` onto a folder that is not an earlier
export. Each is refused with exit code 2 and one line naming the path, and changes nothing on disk;
the library raises the same errors. Replacing an earlier export swaps the new one in whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cli_harness import ok, reason, tree_snapshot
from neurorit import store
from neurorit.errors import ArtifactError, ModelLoadError
from neurorit.masks import BAKED_MASK_JSON, NeuronMask, bake, is_export
from neurorit.models import load_model
from neurorit.neurons import NeuronSet


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def model_copy(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny Llama folder, to break."""
    return Path(shutil.copytree(tiny_llama_dir, tmp_path / "model"))


@pytest.fixture
def mask_dir(tiny_llama, tmp_path: Path) -> Path:
    """A mask of two neurons on the tiny Llama, saved through the library."""
    n_layers, d_mlp = int(tiny_llama.cfg.n_layers), int(tiny_llama.cfg.d_mlp)
    neurons = NeuronSet.from_neurons([(0, 1), (1, 5)], n_layers, d_mlp, "test")
    return NeuronMask.silencing(neurons, tiny_llama).save(tmp_path / "mask")


def _refused(capsys: pytest.CaptureFixture, watched: list[Path], *argv: object) -> str:
    """`reason(...)`, plus: every watched folder or file is byte for byte what it was."""
    before = [_state(p) for p in watched]
    message = reason(capsys, *argv)
    assert [_state(p) for p in watched] == before
    return message


def _state(path: Path) -> object:
    if path.is_file():
        return ("file", path.read_bytes())
    return ("tree", path.exists(), tree_snapshot(path))


# ----------------------------------------------------------------------------------------------
# a broken model folder


SPRUNG = "unpickled.txt"


def _spring(marker: str) -> dict:
    """What the trap runs if anything ever unpickles it: leaves a marker file."""
    Path(marker).write_text("the pickle ran code")
    return {}


class _Trap:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_spring, (self.marker,))


def test_the_trap_is_live(tmp_path):
    """The oracle can fail: unpickling the trap by other means than torch's weights_only runs it."""
    import pickle

    pickle.loads(pickle.dumps(_Trap(tmp_path / SPRUNG)))
    assert (tmp_path / SPRUNG).read_text() == "the pickle ran code"


def _truncate(model: Path) -> str:
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return "model.safetensors"


def _trap_bin(model: Path) -> str:
    weights = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save({**weights, "trap": _Trap(model.parent / SPRUNG)}, model / "pytorch_model.bin")
    return "pytorch_model.bin"


def _bad_config(model: Path) -> str:
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 32,')
    return "config.json"


def _no_weights(model: Path) -> str:
    (model / "model.safetensors").unlink()
    return str(model)


BREAKS = {
    "truncated safetensors": (_truncate, "file is truncated or not safetensors"),
    "pickle weights_only refuses": (_trap_bin, "refused to unpickle"),
    "config not JSON": (_bad_config, "not valid JSON"),
    "no weights": (_no_weights, "no weights"),
}


@pytest.mark.parametrize("kind", list(BREAKS))
def test_a_broken_model_folder_is_refused_naming_the_file(kind, model_copy, tmp_path, cache, capsys):
    breaker, what = BREAKS[kind]
    named = breaker(model_copy)
    out = tmp_path / "mask-out"
    message = _refused(capsys, [cache, model_copy, out],
                       "mask", "--model", model_copy, "--neurons", "0:1", "--out", out)
    assert named in message and what in message, message
    assert not (tmp_path / SPRUNG).exists()  # the pickle's code never ran
    with pytest.raises(ModelLoadError, match=what):
        load_model(str(model_copy), device="cpu", dtype="float32")
    assert not (tmp_path / SPRUNG).exists()


def test_a_pickle_of_plain_tensors_still_loads(model_copy, tiny_llama):
    """The check refuses what weights_only refuses, not .bin files as such."""
    weights = load_file(model_copy / "model.safetensors")
    (model_copy / "model.safetensors").unlink()
    torch.save(weights, model_copy / "pytorch_model.bin")
    model = load_model(str(model_copy), device="cpu", dtype="float32")
    assert int(model.cfg.n_layers) == int(tiny_llama.cfg.n_layers)


@pytest.mark.parametrize("zipped", [True, False])
def test_a_truncated_torch_pickle_is_named(model_copy, zipped):
    weights = load_file(model_copy / "model.safetensors")
    (model_copy / "model.safetensors").unlink()
    target = model_copy / "pytorch_model.bin"
    torch.save(weights, target, _use_new_zipfile_serialization=zipped)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="pytorch_model.bin: file is truncated or not a torch checkpoint"):
        load_model(str(model_copy), device="cpu", dtype="float32")


# ----------------------------------------------------------------------------------------------
# --out onto an existing file


def test_mask_out_onto_an_existing_file(tiny_llama_dir, tmp_path, cache, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("not a folder")
    message = _refused(capsys, [cache, target], "mask", "--model", tiny_llama_dir, "--neurons", "0:1", "--out", target)
    assert str(target) in message and "is a file" in message


def test_mask_out_under_an_existing_file(tiny_llama_dir, tmp_path, cache, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("not a folder")
    message = _refused(capsys, [cache, target],
                       "mask", "--model", tiny_llama_dir, "--neurons", "0:1", "--out", target / "mask")
    assert str(target) in message and "is a file" in message


def test_export_out_onto_an_existing_file(tiny_llama_dir, mask_dir, tmp_path, cache, capsys):
    target = tmp_path / "model.bin"
    target.write_bytes(b"\x00\x01 someone's file")
    for extra in ([], ["--overwrite"]):
        message = _refused(capsys, [cache, target, mask_dir],
                           "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", target, *extra)
        assert str(target) in message and "is a file" in message


def test_the_library_refuses_a_file_as_the_folder(tiny_llama, mask_dir, tmp_path):
    target = tmp_path / "file"
    target.write_bytes(b"keep")
    mask = NeuronMask.load(mask_dir, tiny_llama)
    with pytest.raises(ArtifactError, match="is a file"):
        mask.save(target)
    with pytest.raises(ArtifactError, match="is a file"):
        bake(mask, tiny_llama, target, overwrite=True)
    with pytest.raises(ArtifactError, match="is a file"):
        with store.atomic_dir(target):
            raise AssertionError("atomic_dir must refuse before yielding")
    assert target.read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "mask"]


# ----------------------------------------------------------------------------------------------
# export onto an existing folder


def _folder_of_someone_elses_files(root: Path) -> Path:
    folder = root / "thesis"
    (folder / "chapters").mkdir(parents=True)
    (folder / "draft.tex").write_text("\\section{Results}")
    (folder / "chapters" / "one.tex").write_text("It was a dark and stormy night.")
    (folder / "config.json").write_text("{}")  # looks like a model folder, is not an export
    return folder


def test_export_overwrite_refuses_a_folder_that_is_not_an_export(tiny_llama_dir, mask_dir, tmp_path, cache, capsys):
    folder = _folder_of_someone_elses_files(tmp_path)
    message = _refused(capsys, [cache, folder, mask_dir],
                       "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", folder, "--overwrite")
    assert f"{folder} is not a neurorit export (no {BAKED_MASK_JSON}); refusing to delete it" in message
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".thesis")]  # no temporary sibling


def test_export_overwrite_refuses_a_mask_folder(tiny_llama_dir, mask_dir, cache, capsys):
    message = _refused(capsys, [cache, mask_dir],
                       "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", mask_dir, "--overwrite")
    assert str(mask_dir) in message and "not a neurorit export" in message


@pytest.mark.parametrize("earlier_export", [True, False])
def test_export_onto_a_non_empty_folder_needs_overwrite(
    earlier_export, tiny_llama, tiny_llama_dir, mask_dir, tmp_path, cache, capsys
):
    if earlier_export:
        folder = bake(NeuronMask.load(mask_dir, tiny_llama), tiny_llama, tmp_path / "export")
    else:
        folder = _folder_of_someone_elses_files(tmp_path)
    message = _refused(capsys, [cache, folder, mask_dir],
                       "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", folder)
    assert str(folder) in message and "exists and is not empty" in message and "--overwrite" in message


def test_export_overwrite_replaces_an_earlier_export(tiny_llama, tiny_llama_dir, mask_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "export"
    ok(capsys, "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", folder)
    assert is_export(folder)
    (folder / "stale.txt").write_text("left by the earlier export")
    n_layers, d_mlp = int(tiny_llama.cfg.n_layers), int(tiny_llama.cfg.d_mlp)
    other = NeuronMask.silencing(NeuronSet.from_neurons([(0, 7)], n_layers, d_mlp, "other"), tiny_llama)
    other.save(tmp_path / "other-mask")
    out = ok(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "other-mask", "--out", folder,
             "--overwrite")
    assert str(folder) in out
    assert not (folder / "stale.txt").exists() and is_export(folder)
    assert store.read_json(folder / BAKED_MASK_JSON)["key"] == other.key()
    baked = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).state_dict()
    changed = sorted(k for k in original if not torch.equal(original[k], baked[k]))
    assert changed == ["model.layers.0.mlp.down_proj.weight"], changed
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temporary sibling


def test_export_into_an_empty_existing_folder(tiny_llama_dir, mask_dir, tmp_path, capsys):
    folder = tmp_path / "empty"
    folder.mkdir()
    ok(capsys, "export", "--model", tiny_llama_dir, "--mask", mask_dir, "--out", folder)
    assert is_export(folder) and (folder / "config.json").is_file()


def test_a_crash_mid_export_keeps_the_earlier_export(tiny_llama, mask_dir, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    mask = NeuronMask.load(mask_dir, tiny_llama)
    folder = bake(mask, tiny_llama, tmp_path / "export")
    before = tree_snapshot(folder)

    def crash(self, save_directory, *args, **kwargs):  # type: ignore[no-untyped-def]
        (Path(save_directory) / "config.json").write_text("{half")
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        bake(mask, tiny_llama, folder, overwrite=True)
    assert tree_snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mask"]  # temporary folder gone


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
    final = tmp_path / "artifact"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):  # type: ignore[no-untyped-def]
        if Path(dst) == final:
            raise OSError("cannot rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="cannot rename"):
        with store.atomic_dir(final) as tmp:
            (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["old.txt"] and (final / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no temporary or set-aside folder left
