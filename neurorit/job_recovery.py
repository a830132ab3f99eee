"""Rebuilding a corrupt job table from what the jobs left on disk.

Owns: `repair_job_table` (what `neurorit jobs repair` and the workbench's repair button run): when
`cache/jobs.sqlite` cannot be read it is moved aside (jobs.replace_table keeps it as
`jobs.sqlite.corrupt-<time>`) and a new table is written with one record per job that can be
recovered: every job log under `cache/jobs/` (its id gives kind and start time; its last lines the
result folder or the error) and every training run folder under `cache/runs/` (config.json,
status.json, metrics.jsonl, the lock of a live process). A job whose end cannot be known becomes
`failed` with a note saying so; a live training process keeps its `running` record. Queued jobs
that never started left nothing on disk and are lost. Must not: run or resume any job, or write
anything outside the job table.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurorit import jobs, store
from neurorit.jobs import Job, JobTableCorruptError
from neurorit.processes import holds

UNKNOWN = ("state unknown: the job table was rebuilt by `neurorit jobs repair` and this job's record was lost; "
           "see its log")
_ID = re.compile(r"^(?P<kind>[a-z_]+)-(?P<stamp>\d{8}-\d{6})-[0-9a-f]{6}$")
_RESULTS = {"mined sets: ": "mined", "run folder: ": "run"}  # the CLI's last lines: artifact names


@dataclass(frozen=True)
class TableRepair:
    """What `repair_job_table` did: where the damaged table went and the jobs written to the new one."""

    table: Path
    problem: str  # why the table was unreadable ("" when it was fine and nothing changed)
    moved_to: tuple[Path, ...] = ()
    jobs: tuple[Job, ...] = ()

    @property
    def repaired(self) -> bool:
        return bool(self.problem)

    def summary(self) -> str:
        if not self.repaired:
            return f"the job table {self.table} is readable; nothing to repair."
        aside = self.moved_to[0] if self.moved_to else "(nothing to keep)"
        return (f"the job table {self.table} was corrupt; kept aside as {aside}; rebuilt it with {len(self.jobs)} "
                "job(s) recovered from the job logs and run folders on disk.")


def repair_job_table() -> TableRepair:
    """Keep an unreadable job table aside and rebuild it from disk; a readable table is left as it is."""
    try:
        jobs.check_table()
    except JobTableCorruptError as exc:
        problem = str(exc)
    else:
        return TableRepair(jobs.db_path(), "")
    records = recover_jobs(store.cache_root())
    moved = jobs.replace_table(records)
    return TableRepair(jobs.db_path(), problem, moved, tuple(sorted(records, key=lambda j: j.created, reverse=True)))


def recover_jobs(cache: Path) -> list[Job]:
    """The job records the job logs and training run folders under `cache` still tell (read only)."""
    runs_root = cache / "runs"
    folders = sorted(p for p in runs_root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if runs_root.is_dir() else []
    from_logs = [_with_live_run(_job_from_log(path), folders) for path in sorted((cache / "jobs").glob("*.log"))]
    linked = {j.artifacts.get("run") for j in from_logs}
    from_runs = [_job_from_run(folder, cache) for folder in folders
                 if (folder / "config.json").is_file() and str(folder) not in linked]
    return from_logs + from_runs


def _job_from_log(path: Path) -> Job:
    """A job from its log `cache/jobs/<id>.log`: done when it printed its result, failed with its error
    line when it printed one, else failed with the UNKNOWN note."""
    match = _ID.match(path.stem)
    mtime = path.stat().st_mtime
    created = time.mktime(time.strptime(match["stamp"], "%Y%m%d-%H%M%S")) if match else mtime
    kind = match["kind"] if match else "unknown"
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    artifacts = {name: line[len(prefix):] for line in lines for prefix, name in _RESULTS.items()
                 if line.startswith(prefix)}
    errors = [line.removeprefix("neurorit: error: ") for line in lines if line.startswith("neurorit: error: ")]
    if errors:
        state, error = "failed", errors[-1]
    elif artifacts:
        state, error = "done", ""
    else:
        state, error = "failed", UNKNOWN
    return Job(path.stem, kind, state, (), created, created, mtime, None, 0, 0, "recovered from its log",
               str(path), artifacts, error)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _live_lock(folder: Path) -> dict[str, Any] | None:
    """The run folder's lock when a live process on this machine holds it."""
    holder = _read_json(folder / ".lock")
    return holder if holds(holder) else None


def _last_step(folder: Path) -> int:
    step = 0
    try:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "step":
            step = int(record.get("step", step))
    return step


def _job_from_run(folder: Path, cache: Path) -> Job:
    """A `train` record for a run folder no log names: its state from status.json (and the lock)."""
    config = _read_json(folder / "config.json")
    status = _read_json(folder / "status.json")
    holder = _live_lock(folder)
    created = (folder / "config.json").stat().st_mtime
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created))
    job_id = (holder or {}).get("job_id") or f"train-{stamp}-{hashlib.sha256(str(folder).encode()).hexdigest()[:6]}"
    state, pid, error = status.get("state", ""), None, str(status.get("error", ""))
    if holder is not None:
        state, pid = "running", int(holder["pid"])
    elif state in jobs.FINAL_STATES:
        pass
    elif state == "running":  # no live process: interrupted
        state, error = "failed", "the run's process ended without a final state (interrupted); resume the run"
    else:
        state, error = "failed", f"{UNKNOWN} (the run folder has no status)"
    artifacts = {"run": str(folder)}
    if (folder / "report.json").is_file():
        artifacts["report"] = str(folder / "report.json")
    if (folder / "final").is_dir():
        artifacts["final"] = str(folder / "final")
    finished = None if state == "running" else float(status.get("updated") or created)
    log_path = cache / "jobs" / f"{job_id}.log"
    return Job(job_id, "train", state, (), created, created, finished, pid, _last_step(folder),
               int(config.get("max_steps") or 0), "recovered from its run folder", str(log_path), artifacts, error)


def _with_live_run(job: Job, folders: list[Path]) -> Job:
    """A log's job whose run folder a live process of that job still holds is running, not unknown."""
    for folder in folders:
        holder = _live_lock(folder)
        if holder is not None and holder.get("job_id") == job.id:
            return Job(job.id, job.kind, "running", job.argv, job.created, job.started, None, int(holder["pid"]),
                       _last_step(folder), job.total, job.message, job.log_path, {**job.artifacts, "run": str(folder)})
    return job
