"""Neuro-RIT training: the two stages and the baselines in one harness, run in process or as jobs.

The public API (see loop.py for the run folder's layout):
    TrainConfig                                    config.py: every knob, validated, hashable
    train(config, run_dir=None) -> TrainReport     loads model and data, trains, evaluates, bakes
    resume(run_dir) -> TrainReport                 continues from the newest intact checkpoint
    run_training(model, examples, config, run_dir) the same with an injected model (tests)
    submit_training(config, run_dir=None) -> (Job, run_dir)   the same as a background job
    read_metrics(run_dir), read_status(run_dir), load_report(run_dir)   what a page shows
    run_of_job, run_state, can_resume              submit.py: a run's folder and state from its job
Modules: config, data (split, noisy inputs, tokens), methods (what trains), loop, checkpoints
(atomic checkpoints, run lock), report (TrainReport), accelerate (multi-GPU launch config).
"""

from __future__ import annotations

from neurorit.training.config import METHODS, TrainConfig
from neurorit.training.loop import (
    ResumePoint, TrainingDivergedError, default_run_dir, has_started, load_report, read_metrics, read_status, resume,
    resume_point, run_training, train,
)
from neurorit.training.checkpoints import CheckpointError, RunLockedError
from neurorit.training.report import StageReport, TrainReport
from neurorit.training.submit import ACTIVE_RUN_STATES, can_resume, run_of_job, run_state, submit_resume, submit_training

__all__ = [
    "ACTIVE_RUN_STATES", "METHODS", "CheckpointError", "ResumePoint", "RunLockedError", "StageReport", "TrainConfig", "TrainReport",
    "TrainingDivergedError", "default_run_dir", "has_started", "load_report", "read_metrics", "read_status", "resume",
    "resume_point", "run_of_job", "run_state", "run_training", "can_resume", "submit_resume", "submit_training", "train",
]
