"""A run folder's checkpoints and its lock.

Owns: writing a checkpoint (the weights trained so far, the optimizer and scheduler state, the
RNG state, the step) as one folder that appears in a single rename (a crash or a full disk never
leaves a partial checkpoint where a reader looks), finding and reading the latest complete one,
verifying one against the file sizes and sha256 its JSON records (`newest_intact`: where a resume
may start), setting an unreadable one aside, pruning old ones, and the run folder's lock file (one
training process per folder; a lock whose process is gone is stale and taken over). Must not:
train, or know what the weights mean.

Layout: `<run>/checkpoints/step-000010/{params,optimizer,rng}.safetensors + checkpoint.json`
(the JSON is written last and records each file's size and sha256); `<run>/.lock` holds
{pid, host, job_id, since}.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from neurorit import store
from neurorit.errors import ArtifactError, NeuroritError
from neurorit.processes import holds

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOCK = ".lock"
CHECKPOINT_JSON = "checkpoint.json"
_PREFIX = "step-"
_SET_ASIDE = "corrupt-"  # an unreadable checkpoint moved out of the way by a resume
_FILES = ("params.safetensors", "optimizer.safetensors", "rng.safetensors")

_write_tensors = store.write_tensors  # one seam: tests replace it to simulate a full disk
_write_json = store.write_json


class RunLockedError(NeuroritError):
    """Another live process trains into the same run folder."""


class CheckpointError(ArtifactError):
    """A checkpoint could not be written or read."""


# ---- the lock -----------------------------------------------------------------------------------


def read_lock(run_dir: Path) -> dict[str, Any] | None:
    """The lock's holder {pid, host, job_id, since}, or None when unlocked or unreadable."""
    try:
        data = json.loads((Path(run_dir) / LOCK).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_locked(run_dir: Path) -> bool:
    """Whether a live process on this machine holds the run folder's lock."""
    holder = read_lock(run_dir)
    return holds(holder)


@contextmanager
def run_lock(run_dir: Path, job_id: str | None = None) -> Iterator[Path]:
    """Hold `<run_dir>/.lock` inside the block; refuse a folder a live process holds (RunLockedError).

    A lock left by a process that is gone (SIGKILL, machine restart) is stale: it is replaced,
    with a warning. The lock is removed on leaving the block.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id, "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(run_dir)
            if holder is None:
                age = time.time() - path.stat().st_mtime if path.exists() else 0.0
                if age < 10:  # being written by the process that just created it
                    raise RunLockedError(
                        f"{run_dir} is being claimed by another training process right now; wait, or pick another "
                        "output folder."
                    ) from None
            elif holds(holder):
                since = time.strftime("%H:%M:%S", time.localtime(float(holder.get("since", 0))))
                job = f", job {holder['job_id']}" if holder.get("job_id") else ""
                hint = f"cancel it (`neurorit jobs cancel {holder['job_id']}`)" if holder.get("job_id") else "stop it"
                raise RunLockedError(
                    f"output folder {run_dir} is in use by another training process (pid {holder['pid']}{job}, "
                    f"since {since}); expected a folder no running job writes to. Wait for it, {hint}, or choose "
                    "another output folder."
                ) from None
            elif holder.get("host") != me["host"]:
                raise RunLockedError(
                    f"output folder {run_dir} is locked by pid {holder.get('pid')} on another machine "
                    f"({holder.get('host')}); if that run is gone, delete {path} and try again."
                ) from None
            log.warning("taking over the stale lock of %s (pid %s is gone)", run_dir, (holder or {}).get("pid"))
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:
        raise RunLockedError(f"could not take the lock {path}; another process keeps claiming it.")
    try:
        yield path
    finally:
        holder = read_lock(run_dir)
        if holder is None or holder.get("pid") == me["pid"]:
            path.unlink(missing_ok=True)


# ---- checkpoints --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint folder and its metadata."""

    path: Path
    step: int  # optimizer steps done, counted over all stages
    meta: dict[str, Any]

    @property
    def stage(self) -> int:
        return int(self.meta["stage"])

    @property
    def stage_step(self) -> int:
        return int(self.meta["stage_step"])


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{_PREFIX}{step:06d}"


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}, "scalars": []}
    for index, values in state["state"].items():
        plain["state"][str(index)] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                name = f"{index}.{key}"
                if value.ndim == 0:
                    plain["scalars"].append(name)
                    value = value.reshape(1)
                tensors[name] = value
            else:
                plain["state"][str(index)][key] = value
    return tensors, plain


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    scalars = set(plain.get("scalars", []))
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value.reshape(()) if name in scalars else value
    return {"state": state, "param_groups": plain["param_groups"]}


def write_checkpoint(
    run_dir: Path,
    step: int,
    *,
    params: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    meta: dict[str, Any],
) -> Checkpoint:
    """Write checkpoint `step` atomically (temporary folder, then one rename).

    On any OSError (a full disk, ...) nothing is left at the checkpoint's path, earlier
    checkpoints are untouched, and a CheckpointError says so.
    """
    final = checkpoint_dir(run_dir, step)
    opt_tensors, opt_plain = _flatten_optimizer(optimizer)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    record = {**meta, "step": step, "optimizer": opt_plain, "scheduler": scheduler,
              "python_random": _jsonable(random.getstate()), "written": time.time(),
              "params": sorted(params)}
    try:
        with store.atomic_dir(final) as tmp:
            _write_tensors(tmp / "params.safetensors", params)
            _write_tensors(tmp / "optimizer.safetensors", opt_tensors)
            _write_tensors(tmp / "rng.safetensors", rng)
            record["files"] = {name: _fingerprint(tmp / name) for name in _FILES}  # verify_checkpoint's reference
            _write_json(tmp / CHECKPOINT_JSON, record)  # last: the folder is complete
    except OSError as exc:
        previous = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint is step {previous.step} ({previous.path})" if previous else "no earlier checkpoint exists"
        reason = "the disk is full" if exc.errno == errno.ENOSPC else f"{type(exc).__name__}: {exc}"
        raise CheckpointError(
            f"could not write checkpoint step {step} to {final}: {reason}. Nothing was left there; {kept}. "
            "Free some space and resume the run."
        ) from exc
    return Checkpoint(final, step, record)


def _fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _python_state(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_python_state(v) for v in value)
    return value


def list_checkpoints(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints (their JSON present), oldest first; temporary folders are ignored."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob(f"{_PREFIX}*")):
        if not (path / CHECKPOINT_JSON).is_file():
            continue
        try:
            meta = store.read_json(path / CHECKPOINT_JSON)
            out.append(Checkpoint(path, int(meta["step"]), meta))
        except (ArtifactError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring an unreadable checkpoint %s: %s", path, exc)
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: Path) -> Checkpoint | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_checkpoint(checkpoint: Checkpoint) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """(params, optimizer state dict, rng tensors) of a checkpoint."""
    try:
        params = store.read_tensors(checkpoint.path / "params.safetensors")
        opt = store.read_tensors(checkpoint.path / "optimizer.safetensors")
        rng = store.read_tensors(checkpoint.path / "rng.safetensors")
    except ArtifactError as exc:
        raise CheckpointError(f"checkpoint {checkpoint.path} is incomplete or corrupt: {exc}") from exc
    return params, _unflatten_optimizer(opt, checkpoint.meta["optimizer"]), rng


def verify_checkpoint(checkpoint: Checkpoint) -> None:
    """Raise CheckpointError unless the checkpoint reads back as it was written.

    Its files must match the sizes and sha256 recorded in checkpoint.json when it was written (a
    checkpoint from before those were recorded must load instead), and its JSON must hold what a
    resume reads. Changes nothing.
    """
    needed = ("stage", "stage_step", "optimizer", "scheduler", "python_random", "params")
    missing = [key for key in needed if key not in checkpoint.meta]
    if missing:
        raise CheckpointError(f"checkpoint {checkpoint.path}: {CHECKPOINT_JSON} lacks {missing}; it is corrupt.")
    recorded = checkpoint.meta.get("files")
    if not isinstance(recorded, dict):
        read_checkpoint(checkpoint)  # an older checkpoint: it must load
        return
    for name in _FILES:
        path = checkpoint.path / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {checkpoint.path}: {name} is missing; it is incomplete.")
        expected = recorded.get(name) or {}
        if path.stat().st_size != expected.get("bytes"):
            raise CheckpointError(f"checkpoint {checkpoint.path}: {name} has {path.stat().st_size} bytes, "
                                  f"{expected.get('bytes')} were written; it is truncated or corrupt.")
        if _fingerprint(path)["sha256"] != expected.get("sha256"):
            raise CheckpointError(f"checkpoint {checkpoint.path}: {name} does not match the sha256 written with it; "
                                  "it is corrupt.")


def newest_intact(run_dir: Path) -> tuple[Checkpoint | None, tuple[tuple[Path, str], ...]]:
    """(the newest checkpoint that verifies or None, the newer ones that do not as (folder, why), newest first).

    Reads only; a resume starts from the first and sets the others aside (set_aside).
    """
    folder = Path(run_dir) / CHECKPOINTS
    unreadable: list[tuple[Path, str]] = []
    for path in sorted(folder.glob(f"{_PREFIX}*"), reverse=True) if folder.is_dir() else []:
        try:
            meta = store.read_json(path / CHECKPOINT_JSON)
            if not isinstance(meta, dict):
                raise CheckpointError(f"checkpoint {path}: {CHECKPOINT_JSON} is not a JSON object; it is corrupt.")
            checkpoint = Checkpoint(path, int(meta["step"]), meta)
            verify_checkpoint(checkpoint)
        except (ArtifactError, KeyError, TypeError, ValueError) as exc:
            unreadable.append((path, str(exc)))
            continue
        return checkpoint, tuple(unreadable)
    return None, tuple(unreadable)


def set_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint folder to `corrupt-step-NNNNNN` beside it (no reader looks there)."""
    target = path.with_name(f"{_SET_ASIDE}{path.name}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{_SET_ASIDE}{path.name}-{n}")
    os.replace(path, target)
    return target


def restore_rng(checkpoint: Checkpoint, rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_python_state(checkpoint.meta["python_random"]))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints."""
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)


def remove_partial(run_dir: Path) -> list[Path]:
    """Delete temporary checkpoint folders a killed process left behind; returns them."""
    folder = Path(run_dir) / CHECKPOINTS
    leftovers = [p for p in folder.glob(f".{_PREFIX}*")] if folder.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return leftovers
