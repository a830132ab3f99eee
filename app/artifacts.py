"""Reading the artifact cache for the workbench, and moving masks in and out as files.

Owns: listing cached masks (`cache/masks/*`) and mining results (`cache/mined/*`) from their JSON
records, saving a mask under `cache/masks/<mask.key()>/`, packing a mask folder into a zip, and
unpacking an uploaded zip (or the two loose files) safely: only `mask.safetensors` and
`mask.json` are taken, sizes are capped, paths inside the zip are ignored, nothing is
unpickled. Validation of the content is `NeuronMask.load`'s job. The notes on a mask's neurons
(neurorit.notes) travel in the zip's mask.json under "notes"; an import takes them into the
local notes where a neuron has none. Must not: import streamlit.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from neurorit import notes, store
from neurorit.errors import ArtifactError
from neurorit.masks import MASK_JSON, MASK_TENSORS, NeuronMask

MAX_MASK_FILE_BYTES = 64 * 1024 * 1024  # a 80-layer x 28672-neuron float32 scale is 9 MB
MAX_ZIP_MEMBERS = 16


@dataclass(frozen=True)
class Entry:
    """One artifact folder in the cache: its key, folder, JSON record (or the error reading it)."""

    key: str
    folder: Path
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    mtime: float = 0.0


def _entries(kind: str, record: str) -> list[Entry]:
    root = store.cache_root() / kind
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        path = folder / record
        if not path.is_file():
            continue  # an artifact being written (its JSON is the commit marker)
        try:
            meta = store.read_json(path)
            error = "" if isinstance(meta, dict) else f"{record} is not a JSON object"
            meta = meta if isinstance(meta, dict) else {}
        except ArtifactError as exc:
            meta, error = {}, str(exc)
        out.append(Entry(folder.name, folder, meta, error, path.stat().st_mtime))
    return sorted(out, key=lambda e: e.mtime, reverse=True)


def list_masks() -> list[Entry]:
    """Cached masks, newest first (read from mask.json only; the tensors are read on use)."""
    return _entries("masks", MASK_JSON)


def list_mined() -> list[Entry]:
    """Cached mining results, newest first."""
    return _entries("mined", "mined.json")


def fits(entry: Entry, fingerprint: str | None = None, n_layers: int | None = None, d_mlp: int | None = None) -> bool:
    """Whether a cached artifact was made for this model (same weights, or at least the same shape)."""
    model = entry.meta.get("model") or {}
    if fingerprint is not None:
        return model.get("fingerprint") == fingerprint
    return (model.get("n_layers"), model.get("d_mlp")) == (n_layers, d_mlp)


def mined_label(entry: Entry) -> str:
    prov = entry.meta.get("provenance") or {}
    counts = entry.meta.get("counts_per_layer") or {}
    n_irr = sum(counts.get("irrelevant-exclusive", []))
    mining = prov.get("mining") or {}
    return (f"{entry.key[:10]} · {len(entry.meta.get('example_ids', []))} examples · "
            f"n_steps {mining.get('n_steps', '?')} · {n_irr} irrelevant-exclusive")


def mask_label(entry: Entry) -> str:
    prov = entry.meta.get("provenance") or {}
    label = prov.get("set_label") or prov.get("kind") or "mask"
    return f"{entry.key[:10]} · {label} · {entry.meta.get('n_neurons', '?')} neurons"


def mask_folder(mask: NeuronMask) -> Path:
    return store.artifact_dir("masks", mask.key())


def save_mask(mask: NeuronMask) -> Path:
    """Save the mask under cache/masks/<mask.key()>/ (atomically; a no-op when already there)."""
    folder = mask_folder(mask)
    if (folder / MASK_JSON).is_file() and (folder / MASK_TENSORS).is_file():
        return folder
    with store.atomic_dir(folder) as tmp:
        mask.save(tmp)
    return folder


def mask_notes(folder: Path) -> dict[str, dict[str, Any]]:
    """notes.to_record of the local notes on the neurons of the mask in `folder` ({} when none)."""
    mask = NeuronMask.load(folder)
    return notes.to_record(notes.notes_of(mask.model.fingerprint, mask.neurons.neurons()))


def mask_zip_bytes(folder: Path) -> bytes:
    """A zip holding the folder's mask.safetensors and mask.json (flat, no directories); the
    mask.json in the zip also holds the notes on the mask's neurons under "notes" when there are any."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in (MASK_TENSORS, MASK_JSON):
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing: {folder} is not a complete mask folder.")
        zf.write(folder / MASK_TENSORS, arcname=MASK_TENSORS)
        record = mask_notes(folder)
        if record:
            meta = store.read_json(folder / MASK_JSON)
            zf.writestr(MASK_JSON, json.dumps({**meta, "notes": record}, indent=2, sort_keys=True) + "\n")
        else:
            zf.write(folder / MASK_JSON, arcname=MASK_JSON)
    return buffer.getvalue()


def _wanted_name(name: str) -> str | None:
    base = Path(name.replace("\\", "/")).name
    if base == MASK_TENSORS or base.endswith(".safetensors"):
        return MASK_TENSORS
    if base == MASK_JSON or base.endswith(".json"):
        return MASK_JSON
    return None


def _from_zip(data: bytes) -> dict[str, bytes]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArtifactError("the uploaded .zip is not a readable zip archive.") from None
    with zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS:
            raise ArtifactError(f"the zip holds {len(members)} files; expected {MASK_TENSORS} and {MASK_JSON}.")
        out: dict[str, bytes] = {}
        for info in members:
            if Path(info.filename).name.startswith(("._", ".")):
                continue  # macOS resource forks and hidden files
            name = _wanted_name(info.filename)
            if name is None:
                continue
            if info.file_size > MAX_MASK_FILE_BYTES:
                raise ArtifactError(f"{info.filename} unpacks to {info.file_size} bytes, over the limit of {MAX_MASK_FILE_BYTES}.")
            if name in out:
                raise ArtifactError(f"the zip holds more than one {name}; expected exactly one mask.")
            with zf.open(info) as fh:
                content = fh.read(MAX_MASK_FILE_BYTES + 1)
            if len(content) > MAX_MASK_FILE_BYTES:
                raise ArtifactError(f"{info.filename} is over the limit of {MAX_MASK_FILE_BYTES} bytes.")
            out[name] = content
    return out


def unpack_mask_upload(files: Sequence[tuple[str, bytes]], dest: Path) -> Path:
    """Write an uploaded mask (one .zip, or mask.safetensors + mask.json) into `dest`; return dest.

    Raises ArtifactError naming what was expected when the upload is not a mask.
    """
    if not files:
        raise ArtifactError(f"nothing uploaded; expected a .zip of {MASK_TENSORS} + {MASK_JSON}, or those two files.")
    found: dict[str, bytes] = {}
    for name, data in files:
        if len(data) > MAX_MASK_FILE_BYTES:
            raise ArtifactError(f"{name} is {len(data)} bytes, over the limit of {MAX_MASK_FILE_BYTES}.")
        if name.lower().endswith(".zip"):
            for inner, content in _from_zip(data).items():
                if inner in found:
                    raise ArtifactError(f"two uploads hold a {inner}; upload one mask at a time.")
                found[inner] = content
            continue
        wanted = _wanted_name(name)
        if wanted is None:
            raise ArtifactError(f"{name}: expected a .zip, a .safetensors or a .json file.")
        if wanted in found:
            raise ArtifactError(f"two uploads are a {wanted}; upload one mask at a time.")
        found[wanted] = data
    missing = [n for n in (MASK_TENSORS, MASK_JSON) if n not in found]
    if missing:
        raise ArtifactError(
            f"the upload lacks {', '.join(missing)}; a mask is {MASK_TENSORS} + {MASK_JSON} (as the Masks page "
            "downloads it, zipped)."
        )
    try:
        json.loads(found[MASK_JSON].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"the uploaded {MASK_JSON} is not valid JSON ({exc}).") from None
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, content in found.items():
        (dest / name).write_bytes(content)
    return dest


def import_mask(files: Sequence[tuple[str, bytes]], model: Any, *, strict: bool = True) -> tuple[NeuronMask, Path]:
    """Validate an uploaded mask against the model (NeuronMask.load) and save it into the cache; the
    notes it carries (mask.json "notes") go to the local notes of neurons that have none."""
    with tempfile.TemporaryDirectory(prefix="neurorit-upload-") as tmp:
        folder = unpack_mask_upload(files, Path(tmp) / "mask")
        mask = NeuronMask.load(folder, model, strict=strict)
        carried = notes.from_record(store.read_json(folder / MASK_JSON).get("notes"), where=f"the uploaded {MASK_JSON}")
    saved = save_mask(mask)
    members = set(mask.neurons.neurons())
    notes.merge_notes(mask.model.fingerprint, {n: note for n, note in carried.items() if n in members})
    return mask, saved
