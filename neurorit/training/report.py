"""`TrainReport`: what one training run cost and what it changed.

Owns: the per-stage numbers (steps, trainable parameters and their share of the model, mean
step time, peak memory), the run's totals, the evaluations before and after training on the
held-apart test split (accuracy per view and per number of distractors, clean-context accuracy
= the relevant view), the roll-up tables, peak-memory measurement, and saving / loading the
report as JSON. Must not: train or evaluate.
"""

from __future__ import annotations

import math
import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch

from neurorit import store
from neurorit.errors import ArtifactError
from neurorit.evaluation import EvalReport

TRAIN_REPORT_VERSION = 1


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """(bytes, what was measured): CUDA max allocated on a GPU, the process's max RSS on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "getrusage maxrss (process)"


@dataclass(frozen=True)
class StageReport:
    name: str
    steps: int
    trainable_params: int
    trainable_share: float  # of the model's parameters (LoRA: adapter parameters / base parameters)
    step_time_s: float  # mean wall time of an optimizer step in this process (nan: no step run here)
    peak_memory_bytes: int
    final_loss: float


@dataclass(frozen=True)
class TrainReport(store.JsonArtifact):
    """One run: its method and config, per-stage cost, and evaluation before / after training."""

    method: str
    status: str  # done, failed
    run_dir: str
    config: dict[str, Any]
    model: dict[str, Any]  # identity of the untrained model
    total_params: int
    stages: tuple[StageReport, ...] = ()
    steps: int = 0
    wall_time_s: float = 0.0  # training time (all stages, across resumes), evaluation excluded
    peak_memory_bytes: int = 0
    memory_measure: str = ""
    target_layers: tuple[int, ...] = ()
    mask: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    eval_before: EvalReport | None = None
    eval_after: EvalReport | None = None
    final_checkpoint: str | None = None  # plain HF checkpoint with the mask baked in
    error: str = ""

    @property
    def trainable_params(self) -> int:
        """The largest number of parameters trained at once (the stages of Neuro-RIT share them)."""
        return max((s.trainable_params for s in self.stages), default=0)

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params if self.total_params else 0.0

    @property
    def step_time_s(self) -> float:
        timed = [(s.step_time_s, s.steps) for s in self.stages if not math.isnan(s.step_time_s)]
        total = sum(n for _, n in timed)
        return sum(t * n for t, n in timed) / total if total else math.nan

    def table(self) -> pd.DataFrame:
        """Rows (view, n_distractors): accuracy / F1 / log-prob before and after, and the deltas."""
        keys = ["view", "n_distractors"]
        parts = []
        for name, report in (("before", self.eval_before), ("after", self.eval_after)):
            if report is None:
                continue
            part = report.table()[keys + ["n", "accuracy", "f1", "logprob"]]
            parts.append(part.rename(columns={c: f"{c}_{name}" for c in ("n", "accuracy", "f1", "logprob")}))
        if not parts:
            return pd.DataFrame(columns=keys)
        merged = parts[0] if len(parts) == 1 else parts[0].merge(parts[1], on=keys, how="left", sort=False)
        if len(parts) == 2:
            merged["delta_accuracy"] = merged["accuracy_after"] - merged["accuracy_before"]
        return merged.reset_index(drop=True)

    def accuracy(self, view: str, n_distractors: int | None = None, *, when: str = "after") -> float:
        report = self.eval_after if when == "after" else self.eval_before
        if report is None:
            return math.nan
        try:
            return report.accuracy(view, n_distractors)
        except Exception:  # DataError: that condition was not evaluated
            return math.nan

    def summary_row(self, noise_levels: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
        """One row of the methods table: trainable %, steps, wall time, clean / noisy accuracy."""
        row: dict[str, Any] = {
            "method": self.method, "status": self.status, "trainable_params": self.trainable_params,
            "trainable_%": 100 * self.trainable_share, "steps": self.steps, "wall_time_s": self.wall_time_s,
            "step_time_s": self.step_time_s, "peak_memory_MiB": self.peak_memory_bytes / 2**20,
            "clean_acc": self.accuracy("relevant"),
        }
        for k in noise_levels:
            row[f"noisy_k{k}_acc"] = self.accuracy("noisy", k)
        return row

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("eval_before", "eval_after", "stages")}
        data.update(
            format_version=TRAIN_REPORT_VERSION, kind="train_report", stages=[asdict(s) for s in self.stages],
            trainable_params=self.trainable_params, trainable_share=self.trainable_share,
            eval_before=self.eval_before.to_json() if self.eval_before else None,
            eval_after=self.eval_after.to_json() if self.eval_after else None,
        )
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "report") -> "TrainReport":
        if not isinstance(data, dict) or data.get("kind") != "train_report":
            raise ArtifactError(f"{where}: expected a train report written by neurorit.")
        if data.get("format_version") != TRAIN_REPORT_VERSION:
            raise ArtifactError(f"{where}: format_version {data.get('format_version')!r}, this neurorit reads "
                                f"{TRAIN_REPORT_VERSION}.")
        try:
            return cls(
                method=data["method"], status=data["status"], run_dir=data["run_dir"], config=data["config"],
                model=data["model"], total_params=data["total_params"],
                stages=tuple(StageReport(**s) for s in data["stages"]), steps=data["steps"],
                wall_time_s=data["wall_time_s"], peak_memory_bytes=data["peak_memory_bytes"],
                memory_measure=data["memory_measure"], target_layers=tuple(data["target_layers"]),
                mask=data.get("mask"), data=data.get("data", {}),
                eval_before=EvalReport.from_json(data["eval_before"], where) if data.get("eval_before") else None,
                eval_after=EvalReport.from_json(data["eval_after"], where) if data.get("eval_after") else None,
                final_checkpoint=data.get("final_checkpoint"), error=data.get("error", ""),
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{where}: a field is missing or malformed ({exc}).") from exc

