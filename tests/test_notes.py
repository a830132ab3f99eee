"""Notes on neurons (neurorit.notes) and the notes that travel with an exported mask.

The store: round trips per model fingerprint, deletion, validation, a broken file refused by
name, no lost update when two processes save at once. The masks: the Masks page's zip and the
baked export (`neurorit export`) carry the notes of the mask's neurons; an import takes them in
without overwriting local notes; masks without notes (every mask saved before notes existed)
still load and import.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import zipfile
from pathlib import Path

import pytest

from neurorit import notes
from neurorit.errors import ArtifactError, ConfigError
from neurorit.masks import MASK_JSON, NeuronMask
from neurorit.models import ModelIdentity
from neurorit.neurons import NeuronSet, parse_neuron

FP = "0123abcd0123abcd"
IDENT = ModelIdentity(name="toy", architecture="LlamaForCausalLM", n_layers=3, d_mlp=8, fingerprint=FP)


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---- the store ----------------------------------------------------------------------------------


def test_a_note_round_trips_per_model_and_an_empty_one_deletes_it(cache: Path) -> None:
    assert notes.load_notes(FP) == {}
    saved = notes.save_note(FP, (2, 5), "  capital\ncities ", "fires on 'Canberra'\n")
    assert saved is not None and saved.label == "capital cities" and saved.text == "fires on 'Canberra'"
    notes.save_note(FP, (0, 1), "", "only text")
    notes.save_note("ffff0000ffff0000", (2, 5), "other weights")
    got = notes.load_notes(FP)
    assert sorted(got) == [(0, 1), (2, 5)]
    assert got[(2, 5)].label == "capital cities" and got[(0, 1)].text == "only text"
    assert notes.get_note("ffff0000ffff0000", (2, 5)).label == "other weights"  # type: ignore[union-attr]
    assert notes.get_note(FP, (1, 1)) is None
    assert notes.notes_path(FP) == cache / "notes" / f"{FP}.json"
    on_disk = json.loads(notes.notes_path(FP).read_text())
    assert on_disk["model_fingerprint"] == FP and set(on_disk["notes"]) == {"0:1", "2:5"}

    assert notes.save_note(FP, (2, 5), "  ", "\n") is None  # empty: deleted
    assert sorted(notes.load_notes(FP)) == [(0, 1)]
    assert notes.delete_note(FP, (0, 1)) is True
    assert notes.delete_note(FP, (0, 1)) is False
    assert notes.load_notes(FP) == {}
    assert not [p.name for p in (cache / "notes").iterdir() if p.name.startswith(f".{FP}.json.") and not p.name.endswith(".lock")]


def test_bad_input_is_refused_with_a_reason(cache: Path) -> None:
    with pytest.raises(ConfigError, match="at most 80 characters"):
        notes.save_note(FP, (0, 0), "x" * 81)
    with pytest.raises(ConfigError, match=">= 0"):
        notes.save_note(FP, (-1, 0), "neg")
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(ConfigError, match="fingerprint"):
            notes.notes_path(bad)
    assert parse_neuron(" 15:821 ") == (15, 821) and notes.neuron_key((15, 821)) == "15:821"
    for bad in ("15", "15:x", "1:2:3", "-1:4"):
        with pytest.raises(ConfigError):
            parse_neuron(bad)
    notes.notes_path(FP).parent.mkdir(parents=True)
    notes.notes_path(FP).write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="not a notes file"):
        notes.load_notes(FP)
    notes.notes_path(FP).write_text("{ not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        notes.load_notes(FP)


def test_records_round_trip_and_a_bad_record_is_an_artifact_error() -> None:
    given = {(1, 2): notes.Note(1, 2, "a", "b", 3.0), (0, 7): notes.Note(0, 7, "c", "", 4.0),
             (2, 2): notes.Note(2, 2, "", "", 5.0)}
    record = notes.to_record(given)
    assert list(record) == ["0:7", "1:2"]  # neuron order; the empty note left out
    assert notes.from_record(record) == {k: v for k, v in given.items() if k != (2, 2)}
    assert notes.from_record(None) == {}
    with pytest.raises(ArtifactError, match="must be an object"):
        notes.from_record(["0:1"])
    with pytest.raises(ArtifactError, match="layer:index"):
        notes.from_record({"zero": {"label": "x"}})
    with pytest.raises(ArtifactError, match="must be an object with label"):
        notes.from_record({"0:1": "x"})


def test_merge_keeps_local_notes_unless_told_to_overwrite() -> None:
    notes.save_note(FP, (0, 1), "local")
    incoming = {(0, 1): notes.Note(0, 1, "theirs"), (1, 3): notes.Note(1, 3, "new")}
    assert notes.merge_notes(FP, incoming) == 1
    got = notes.load_notes(FP)
    assert got[(0, 1)].label == "local" and got[(1, 3)].label == "new"
    assert notes.merge_notes(FP, incoming, overwrite=True) == 2
    assert notes.load_notes(FP)[(0, 1)].label == "theirs"
    assert notes.merge_notes(FP, {}) == 0


def _save_many(cache: str, start: int) -> None:
    import os

    os.environ["NEURORIT_CACHE"] = cache
    for i in range(start, start + 15):
        notes.save_note(FP, (0, i), f"note {i}")


def test_two_processes_saving_at_once_lose_no_note(cache: Path) -> None:
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_save_many, args=(str(cache), start)) for start in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sorted(i for _, i in notes.load_notes(FP)) == [*range(15), *range(100, 115)]


# ---- notes travel with masks ---------------------------------------------------------------------


def _mask(neurons: list[tuple[int, int]]) -> NeuronMask:
    return NeuronMask.silencing(NeuronSet.from_neurons(neurons, 3, 8, "toy set"), IDENT, provenance={"source": "test"})


def _zip_json(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["mask.json", "mask.safetensors"]
        return json.loads(zf.read("mask.json"))


def test_the_mask_zip_carries_its_neurons_notes_and_an_import_takes_them_in(cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path) -> None:
    from app import artifacts

    folder = artifacts.save_mask(_mask([(0, 1), (2, 5)]))
    plain = artifacts.mask_zip_bytes(folder)
    assert "notes" not in _zip_json(plain)  # no notes: the mask.json goes as it is
    assert _zip_json(plain) == json.loads((folder / MASK_JSON).read_text())

    notes.save_note(FP, (2, 5), "capital cities", "fires on 'Canberra'")
    notes.save_note(FP, (1, 1), "not in the mask")
    zipped = artifacts.mask_zip_bytes(folder)
    meta = _zip_json(zipped)
    assert set(meta["notes"]) == {"2:5"} and meta["notes"]["2:5"]["label"] == "capital cities"
    assert {k: v for k, v in meta.items() if k != "notes"} == json.loads((folder / MASK_JSON).read_text())

    # another machine (another cache) with a local note on 2:5 of its own and none on 0:1
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "elsewhere"))
    model = type("M", (), {})()
    monkeypatch.setattr(NeuronMask, "check", lambda self, model, strict=True: None)  # the toy has no model
    mask, saved = artifacts.import_mask([("mask.zip", zipped)], model)
    assert saved.is_dir() and len(mask) == 2
    assert notes.load_notes(FP)[(2, 5)].text == "fires on 'Canberra'"
    notes.save_note(FP, (2, 5), "mine")
    artifacts.import_mask([("mask.zip", zipped)], model)
    assert notes.load_notes(FP)[(2, 5)].label == "mine"  # a local note is never overwritten

    # an old mask without notes still imports; a mask.json with notes loads as a mask
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "third"))
    mask, _ = artifacts.import_mask([("mask.zip", plain)], model)
    assert len(mask) == 2 and notes.load_notes(FP) == {}
    loose = tmp_path / "loose"
    loose.mkdir()
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        zf.extractall(loose)
    assert NeuronMask.load(loose).key() == _mask([(0, 1), (2, 5)]).key()

    # a broken notes record is refused by name
    bad = json.loads((folder / MASK_JSON).read_text()) | {"notes": {"2:5": "oops"}}
    files = [("mask.safetensors", (folder / "mask.safetensors").read_bytes()), ("mask.json", json.dumps(bad).encode())]
    with pytest.raises(ArtifactError, match="uploaded mask.json"):
        artifacts.import_mask(files, model)


def test_neurorit_export_writes_the_notes_of_the_masks_neurons(tiny_llama_dir: Path, tiny_llama, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    from cli_harness import ok

    from neurorit.models import model_identity

    fingerprint = model_identity(tiny_llama).fingerprint
    ok(capsys, "mask", "--model", tiny_llama_dir, "--neurons", "1:5,0:2", "--out", tmp_path / "mask")
    out = ok(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", tmp_path / "plain")
    assert "with notes" not in out
    assert "notes" not in json.loads((tmp_path / "plain" / "neurorit_mask.json").read_text())

    notes.save_note(fingerprint, (1, 5), "five", "the fifth")
    notes.save_note(fingerprint, (1, 6), "not in the mask")
    out = ok(capsys, "export", "--model", tiny_llama_dir, "--mask", tmp_path / "mask", "--out", tmp_path / "ckpt")
    assert "1 with notes" in out
    record = json.loads((tmp_path / "ckpt" / "neurorit_mask.json").read_text())
    assert record["notes"] == {"1:5": {"label": "five", "text": "the fifth",
                                       "updated": notes.get_note(fingerprint, (1, 5)).updated}}  # type: ignore[union-attr]
