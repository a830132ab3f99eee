"""Neuro-RIT training: the two stages and the baselines in one harness, run in process or as jobs.

The public API (see loop.py for the run folder's layout):
    TrainConfig                                    config.py: every knob, validated, hashable
    train(config, run_dir=None) -> TrainReport     loads model and data, trains, evaluates, bakes
    resume(run_dir) -> TrainReport                 continues from the newest intact checkpoint
    run_training(model, examples, config, run_dir) the same with an injected model (tests)
    submit_training(config, run_dir=None) -> (Job, run_dir)   the same as a background job
    read_metrics(run_dir), read_status(run_dir), load_report(run_dir)   what a page shows
Modules: config, data (split, noisy inputs, tokens), methods (what trains), loop, checkpoints
(atomic checkpoints, run lock), report (TrainReport), accelerate (multi-GPU launch config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from neurorit.training.config import METHODS, TrainConfig
from neurorit.training.loop import (
    ResumePoint, TrainingDivergedError, default_run_dir, has_started, load_report, read_metrics, read_status, resume,
    resume_point, run_training, train,
)
from neurorit.training.checkpoints import CheckpointError, RunLockedError
from neurorit.training.report import StageReport, TrainReport

__all__ = [
    "METHODS", "CheckpointError", "ResumePoint", "RunLockedError", "StageReport", "TrainConfig", "TrainReport",
    "TrainingDivergedError", "default_run_dir", "has_started", "load_report", "read_metrics", "read_status", "resume",
    "resume_point", "run_training", "submit_resume", "submit_training", "train",
]


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
