"""The artifact cache on disk.

Owns: where `cache/` is, the folder of an artifact kind and key, writing files so that a crash
never leaves a half-written artifact (write to a temporary name, then rename), and the check of an
artifact's `format_version`. Must not: know what an artifact contains.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

from neurorit.errors import ArtifactError

if TYPE_CHECKING:
    import torch

PROJECT_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)
T = TypeVar("T")


def cache_root() -> Path:
    """`$NEURORIT_CACHE`, else `cache/` beside the package."""
    return Path(os.environ.get("NEURORIT_CACHE", PROJECT_ROOT / "cache"))


def artifact_dir(kind: str, key: str) -> Path:
    """The folder of one artifact: `cache/<kind>/<key>/` (not created)."""
    return cache_root() / kind / key


def check_folder_path(folder: Path) -> None:
    """Refuse, naming it, a folder to be written that exists as a file or would lie under a file."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if not (path.exists() or path.is_symlink()):
            continue
        if path.is_dir():
            return
        if path == folder:
            raise ArtifactError(
                f"{folder} exists and is a file, not a folder; pick another path or move the file away."
            )
        raise ArtifactError(
            f"cannot make the folder {folder}: {path} is a file, not a folder; pick another path."
        )


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it takes the place of `final`.

    An existing `final` is renamed aside first and deleted only once the new folder is in place,
    so a crash leaves the old folder or the new one (at worst the old one as `.<name>.*.old`
    beside it), never neither. Refuses a `final` that is a file (ArtifactError)."""
    final = Path(final)
    check_folder_path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        aside: Path | None = tmp.with_name(tmp.name + ".old")  # unique: tmp's name is
        try:
            os.rename(final, aside)
        except FileNotFoundError:  # no old folder (or another writer moved it meanwhile)
            aside = None
        try:
            os.replace(tmp, final)
        except OSError:
            if aside is not None:
                os.rename(aside, final)  # put the old folder back
            raise
        if aside is not None:
            if aside.is_symlink():
                aside.unlink()  # `final` was a link to a folder: drop the link, keep its target
            else:
                shutil.rmtree(aside, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: expected a JSON artifact file there.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); delete it and rebuild.") from exc


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save tensors as safetensors through a temporary name and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    from safetensors.torch import save_file  # imported on use: torch stays out of the CLI's start-up

    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; never unpickles, refuses anything else with a clear message."""
    if not path.is_file():
        raise ArtifactError(f"{path} is missing: expected a safetensors file there.")
    with open(path, "rb") as fh:
        head = fh.read(9)
    is_safetensors = len(head) == 9 and head[8:9] == b"{"  # u64 header length, then the JSON header
    if not is_safetensors and (head[:2] == b"PK" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))):
        raise ArtifactError(
            f"{path} looks like a pickle/zip (torch.save) file, not safetensors; neurorit never "
            "unpickles. Re-export it with neurorit or safetensors.torch.save_file."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ArtifactError(
            f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt."
        ) from exc


def load_cached(kind: str, key: str, marker: str, load: Callable[[Path], T]) -> T | None:
    """The cached artifact `cache/<kind>/<key>/` when its marker file is there and it loads;
    None when absent, or broken (logged: the caller recomputes and overwrites it)."""
    folder = artifact_dir(kind, key)
    if not (folder / marker).is_file():
        return None
    try:
        return load(folder)
    except ArtifactError as exc:
        log.warning("ignoring a broken cached %s artifact %s: %s", kind, folder, exc)
        return None


def save_cached(kind: str, key: str, save: Callable[[Path], Any]) -> Path:
    """Write an artifact into `cache/<kind>/<key>/` in one rename (see atomic_dir)."""
    folder = artifact_dir(kind, key)
    with atomic_dir(folder) as tmp:
        save(tmp)
    return folder


class JsonArtifact:
    """`save` / `load` of a result kept as one JSON file; the class gives `to_json()` and `from_json(data, where)`."""

    def save(self, path: Path) -> Path:
        """Write the result as one JSON file (atomically)."""
        write_json(Path(path), self.to_json())  # type: ignore[attr-defined]
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> Any:
        return cls.from_json(read_json(Path(path)), str(path))  # type: ignore[attr-defined]


def check_format_version(meta: Any, expected: int, where: Path | str) -> None:
    """ArtifactError unless the artifact's JSON has `format_version` == expected (an artifact
    written before format versions existed counts as version 1, the layout it has)."""
    version = meta.get("format_version", 1) if isinstance(meta, dict) else None
    if version != expected:
        raise ArtifactError(f"{where} has format_version {version!r}, this neurorit reads {expected}; "
                            "delete it (it is a cache) and compute it again.")
