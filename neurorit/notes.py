"""Notes on neurons: a short label and free text per neuron (layer, index), per model.

Owns: the notes file of one model, `cache/notes/<fingerprint>.json` (the model's weight
fingerprint, so notes never follow a neuron index onto other weights), reading it, saving and
deleting one note (read-modify-write under a file lock, written through a temporary name and a
rename), and the plain record of a few notes that travels inside an exported mask
(`mask.json["notes"]`, `neurorit_mask.json["notes"]`): `to_record` / `from_record`, and
`merge_notes` to take an imported mask's notes in without overwriting local ones. Must not: know
what a mask or a model is beyond its fingerprint, or import streamlit.
"""

from __future__ import annotations

import fcntl
import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from neurorit import store
from neurorit.errors import ArtifactError, ConfigError
from neurorit.neurons import Neuron, parse_neuron

log = logging.getLogger(__name__)

NOTES_FORMAT_VERSION = 1
MAX_LABEL_CHARS = 80  # a label is shown in table cells and chart hovers: one short line
MAX_TEXT_CHARS = 20_000
_FINGERPRINT = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class Note:
    """One neuron's note: a one-line label, free text, and when it was last saved (Unix seconds)."""

    layer: int
    index: int
    label: str = ""
    text: str = ""
    updated: float = 0.0

    @property
    def neuron(self) -> Neuron:
        return (self.layer, self.index)

    @property
    def is_empty(self) -> bool:
        return not self.label.strip() and not self.text.strip()

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "text": self.text, "updated": self.updated}


def neuron_key(neuron: Neuron) -> str:
    """(15, 821) -> '15:821', the key of a note in the JSON files (and of the card's URL)."""
    return f"{int(neuron[0])}:{int(neuron[1])}"




def _check_fingerprint(fingerprint: str) -> str:
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise ConfigError(
            f"notes are keyed by a model weight fingerprint (letters, digits, '_', '-', '.'); got {fingerprint!r}."
        )
    return fingerprint


def notes_path(fingerprint: str) -> Path:
    """`cache/notes/<fingerprint>.json` (not created)."""
    return store.cache_root() / "notes" / f"{_check_fingerprint(fingerprint)}.json"


def _clean(label: str, text: str) -> tuple[str, str]:
    label = " ".join(str(label or "").split())  # one line: newlines and runs of spaces folded
    text = str(text or "").strip()
    if len(label) > MAX_LABEL_CHARS:
        raise ConfigError(f"a note's label is at most {MAX_LABEL_CHARS} characters, got {len(label)}; "
                          "put the rest in the text.")
    if len(text) > MAX_TEXT_CHARS:
        raise ConfigError(f"a note's text is at most {MAX_TEXT_CHARS} characters, got {len(text)}.")
    return label, text


def _note_from(key: str, value: Any, *, where: str) -> Note:
    layer, index = parse_neuron(key)
    if not isinstance(value, dict):
        raise ArtifactError(f"{where}: the note of {key} must be an object with label and text, got {type(value).__name__}.")
    label, text = _clean(value.get("label", ""), value.get("text", ""))
    updated = value.get("updated", 0.0)
    return Note(layer, index, label, text, float(updated) if isinstance(updated, (int, float)) else 0.0)


def from_record(record: Any, *, where: str = "notes") -> dict[Neuron, Note]:
    """{'15:821': {'label', 'text', 'updated'}} -> {(15, 821): Note}; ArtifactError on a bad shape."""
    if record is None:
        return {}
    if not isinstance(record, dict):
        raise ArtifactError(f"{where} must be an object of 'layer:index' -> note, got {type(record).__name__}.")
    out: dict[Neuron, Note] = {}
    for key, value in record.items():
        try:
            note = _note_from(key, value, where=where)
        except ConfigError as exc:
            raise ArtifactError(f"{where}: {exc}") from None
        if not note.is_empty:
            out[note.neuron] = note
    return out


def to_record(notes: Mapping[Neuron, Note] | Iterable[Note]) -> dict[str, dict[str, Any]]:
    """The JSON-able record of some notes, keyed 'layer:index', in neuron order (empty notes left out)."""
    items = notes.values() if isinstance(notes, Mapping) else notes
    return {neuron_key(n.neuron): n.to_dict() for n in sorted(items, key=lambda n: n.neuron) if not n.is_empty}


def _read(path: Path) -> dict[Neuron, Note]:
    if not path.is_file():
        return {}
    data = store.read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("notes"), dict):
        raise ArtifactError(f"{path} is not a notes file (expected an object with 'notes'); move it away to start afresh.")
    return from_record(data["notes"], where=str(path))


def load_notes(fingerprint: str) -> dict[Neuron, Note]:
    """Every note on the model with this weight fingerprint ({} when there is none yet)."""
    return _read(notes_path(fingerprint))


def get_note(fingerprint: str, neuron: Neuron) -> Note | None:
    return load_notes(fingerprint).get((int(neuron[0]), int(neuron[1])))


def notes_of(fingerprint: str, neurons: Iterable[Neuron]) -> dict[Neuron, Note]:
    """The notes of these neurons (those that have one)."""
    every = load_notes(fingerprint)
    return {n: every[n] for n in ((int(l), int(i)) for l, i in neurons) if n in every}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`'s notes (another process saving a note waits): no lost update."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write(path: Path, fingerprint: str, notes: Mapping[Neuron, Note]) -> None:
    store.write_json(path, {"format_version": NOTES_FORMAT_VERSION, "kind": "neuron_notes",
                            "model_fingerprint": fingerprint, "notes": to_record(notes)})


def save_note(fingerprint: str, neuron: Neuron, label: str, text: str = "") -> Note | None:
    """Save (replace) one neuron's note; an empty label and text delete it (returns None then)."""
    layer, index = int(neuron[0]), int(neuron[1])
    if layer < 0 or index < 0:
        raise ConfigError(f"a neuron's layer and index are >= 0; got ({layer}, {index}).")
    label, text = _clean(label, text)
    note = Note(layer, index, label, text, time.time())
    path = notes_path(fingerprint)
    with _locked(path):
        notes = _read(path)
        if note.is_empty:
            notes.pop(note.neuron, None)
        else:
            notes[note.neuron] = note
        _write(path, fingerprint, notes)
    log.info("note on neuron %d:%d of %s %s", layer, index, fingerprint, "deleted" if note.is_empty else "saved")
    return None if note.is_empty else note


def delete_note(fingerprint: str, neuron: Neuron) -> bool:
    """Delete one neuron's note; returns whether there was one."""
    key = (int(neuron[0]), int(neuron[1]))
    path = notes_path(fingerprint)
    with _locked(path):
        notes = _read(path)
        if key not in notes:
            return False
        del notes[key]
        _write(path, fingerprint, notes)
    return True


def merge_notes(fingerprint: str, incoming: Mapping[Neuron, Note], *, overwrite: bool = False) -> int:
    """Take notes in (an imported mask's): neurons without a local note get the incoming one; with
    `overwrite`, the incoming note wins everywhere. Returns how many notes were written."""
    incoming = {n: note for n, note in incoming.items() if not note.is_empty}
    if not incoming:
        return 0
    path = notes_path(fingerprint)
    with _locked(path):
        notes = _read(path)
        taken = {n: note for n, note in incoming.items() if overwrite or n not in notes}
        if taken:
            notes.update(taken)
            _write(path, fingerprint, notes)
    return len(taken)
