"""Training as background jobs: submitting a run or a resume, and reading a run's folder and state
back from its job record.

Owns: `submit_training`, `submit_resume`, and how a job names its run (`run_of_job`: the argv
these functions write) and what state a run is in (`run_state`, `can_resume`), so a change to how
runs are submitted changes the reading beside it. Must not: import streamlit, or train.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from neurorit.training.config import TrainConfig
from neurorit.training.loop import default_run_dir

ACTIVE_RUN_STATES = ("queued", "running")
"""Job states in which a run's own status.json is not yet the last word."""


def submit_training(
    config: TrainConfig, run_dir: Path | None = None, *, quiet: bool = True, processes: int = 1
) -> tuple[Any, Path]:
    """Queue `neurorit train` for the config as a background job; returns (Job, run folder).

    processes > 1: data parallel, one process per GPU (`neurorit train --processes N`).

    The config travels as a JSON file under `cache/runs/_submitted/`; the run writes its
    metrics, status, checkpoints and report into the returned folder (default_run_dir(config)
    unless given), which the page reads with read_metrics / read_status / load_report.
    """
    from neurorit import jobs, store

    folder = Path(run_dir) if run_dir is not None else default_run_dir(config)
    config_file = store.cache_root() / "runs" / "_submitted" / f"{config.method}-{config.hash()}.json"
    store.write_json(config_file, config.to_dict())
    argv = ["train", "--config", str(config_file)]
    if run_dir is not None:
        argv += ["--out", str(folder)]
    if quiet:
        argv.append("--quiet")
    if processes > 1:
        argv += ["--processes", str(int(processes))]
    return jobs.submit("train", argv), folder


def submit_resume(run_dir: Path, *, quiet: bool = True) -> Any:
    """Queue `neurorit resume <run_dir>` as a background job."""
    from neurorit import jobs

    return jobs.submit("resume", ["resume", str(run_dir)] + (["--quiet"] if quiet else []))


def run_state(status: Mapping[str, Any], job_state: str | None) -> str:
    """A run's state for the runs list: a queued / running job wins, then the run's own status.json.

    status.json reads `interrupted` when its process died without writing a final state
    (neurorit.training.read_status); a run with neither a status nor a job reads `unknown`.
    """
    if job_state in ACTIVE_RUN_STATES:
        return job_state
    return str(status.get("state") or job_state or "unknown")


def can_resume(state: str, has_checkpoint: bool) -> bool:
    """Resume is offered for a stopped run (interrupted, failed, cancelled) that has a checkpoint."""
    return has_checkpoint and state in ("interrupted", "failed", "cancelled")


def run_of_job(argv: Sequence[str], artifacts: Mapping[str, str], runs_root: Any) -> str | None:
    """The run folder a train / resume job writes (as a string), from its record; None when unknown.

    Its `run` artifact once started; before that its argv: `resume <dir>`, `train ... --out <dir>`,
    or `train --config <runs_root>/_submitted/<method>-<hash>.json` (the default folder
    `<runs_root>/<method>-<hash>`, see neurorit.training.submit_training).
    """
    if artifacts.get("run"):
        return str(artifacts["run"])
    argv = list(argv)
    if len(argv) >= 2 and argv[0] == "resume":
        return str(argv[1])
    if argv and argv[0] == "train":
        for flag in ("--out", "--config"):
            if flag in argv[:-1]:
                value = argv[argv.index(flag) + 1]
                if flag == "--out":
                    return str(value)
                name = value.replace("\\", "/").rsplit("/", 1)[-1]
                stem = name.rsplit(".", 1)[0]
                return f"{str(runs_root).rstrip('/')}/{stem}"
    return None
