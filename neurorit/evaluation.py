"""Evaluation: how well a model answers under each context view, with or without a neuron mask.

Owns: `EvalConfig` (views, the noise sweep, generation length, the nested prompt config),
per-prompt results and their roll-up (`EvalReport`, saved as JSON), the ablation study of
METHOD.md (base vs masked vs random-mask control: `ablate`, `AblationReport`) and the one-example
what-if of the UI (`what_if`). Answers and their gold log-probs come from neurorit.decoding.
Must not: decode or run the model itself, load models or datasets, spell hook names, or print.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import pandas as pd
import torch

from neurorit import store
from neurorit.configs import DictConfig, coerce_fields, from_dict, is_int, to_dict
from neurorit.data import RagExample
from neurorit.decoding import ANSWER_CACHE, AnswerCache, decode_and_score, step_engine
from neurorit.errors import ArtifactError, ConfigError, DataError
from neurorit.masks import NeuronMask
from neurorit.metrics import contains_answer, exact_match, token_f1
from neurorit.models import model_identity
from neurorit.prompts import VIEWS, Prompt, PromptConfig, build_prompt
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
_METRICS = ("accuracy", "exact", "f1", "logprob")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(DictConfig):
    """What to evaluate: which context views, which noise levels, how long an answer may be.

    noise_levels: the numbers of distractors the noisy view sweeps (e.g. (0, 1, 2, 3, 4)); empty
    means the prompt config's n_distractors only. The irrelevant view always shows
    prompt.n_distractors passages; the relevant and closed-book views show no distractor.
    """

    views: tuple[str, ...] = ("relevant", "noisy", "irrelevant", "closed_book")  # METHOD.md's views
    noise_levels: tuple[int, ...] = ()
    max_new_tokens: int = 16  # short-answer QA; generation also stops at a newline
    prompt: PromptConfig = field(default_factory=PromptConfig)

    def __post_init__(self) -> None:
        coerce_fields(self)  # lists -> tuples, "16" -> 16; a scalar where a list belongs is refused
        if not self.views:
            raise ConfigError.field("EvalConfig", "views", self.views, f"a non-empty subset of {list(VIEWS)}")
        for view in self.views:
            if view not in VIEWS:
                raise ConfigError.field("EvalConfig", "views", self.views, f"views among {list(VIEWS)}")
        if len(set(self.views)) != len(self.views):
            raise ConfigError.field("EvalConfig", "views", self.views, "each view at most once")
        for level in self.noise_levels:
            if not is_int(level) or level < 0:
                raise ConfigError.field("EvalConfig", "noise_levels", self.noise_levels, "integers >= 0")
        if len(set(self.noise_levels)) != len(self.noise_levels):
            raise ConfigError.field("EvalConfig", "noise_levels", self.noise_levels, "each level at most once")
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ConfigError.field("EvalConfig", "max_new_tokens", self.max_new_tokens, "an integer >= 1")
        if not isinstance(self.prompt, PromptConfig):
            raise ConfigError.field("EvalConfig", "prompt", self.prompt, "a PromptConfig")
        if "irrelevant" in self.views and self.prompt.n_distractors == 0:
            raise ConfigError.field(
                "EvalConfig", "prompt.n_distractors", 0, "an integer >= 1 when the irrelevant view is evaluated"
            )

    def noise_sweep(self) -> tuple[int, ...]:
        """The distractor counts the noisy view is evaluated at."""
        return tuple(sorted(self.noise_levels)) or (self.prompt.n_distractors,)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
            data = {**data, "prompt": PromptConfig.from_dict(data["prompt"])}
        return from_dict(cls, data)


# ---- results and reports ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleResult:
    """One example under one view (and one noise level for the noisy view)."""

    example_id: str
    view: str
    n_distractors: int  # distractors asked for: the noise level (noisy), n_distractors (irrelevant), else 0
    answer: str
    correct: bool  # a gold alias is contained in the answer (METHOD.md accuracy)
    exact: bool
    f1: float
    logprob: float  # teacher-forced log-probability of the first gold alias
    n_passages: int = 0  # passages actually shown


@dataclass(frozen=True)
class SkippedPrompt:
    """An example that could not be shown under a view (no relevant passage, too long, ...)."""

    example_id: str
    view: str
    n_distractors: int
    reason: str


def _rows_table(
    results: Sequence[ExampleResult], skipped: Sequence[SkippedPrompt], views: Sequence[str]
) -> pd.DataFrame:
    columns = ["view", "n_distractors", "n", *_METRICS, "skipped"]
    frame = pd.DataFrame([asdict(r) for r in results], columns=[f.name for f in dataclasses.fields(ExampleResult)])
    frame = frame.rename(columns={"correct": "accuracy"})
    keys = {(r.view, r.n_distractors) for r in results} | {(s.view, s.n_distractors) for s in skipped}
    order = {v: i for i, v in enumerate(views)}
    rows = []
    for view, k in sorted(keys, key=lambda vk: (order.get(vk[0], len(order)), vk[0], vk[1])):
        part = frame[(frame["view"] == view) & (frame["n_distractors"] == k)]
        row: dict[str, Any] = {"view": view, "n_distractors": k, "n": len(part)}
        for metric in _METRICS:
            row[metric] = float(part[metric].astype(float).mean()) if len(part) else math.nan
        row["skipped"] = sum(1 for s in skipped if (s.view, s.n_distractors) == (view, k))
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class EvalReport(store.JsonArtifact):
    """Every per-prompt result of one evaluation, with what made it; rolls up into a table."""

    results: tuple[ExampleResult, ...]
    label: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # EvalConfig.to_dict()
    model: dict[str, Any] = field(default_factory=dict)  # asdict(ModelIdentity)
    mask: dict[str, Any] | None = None  # the mask's summary (key, provenance, counts), None = no mask
    skipped: tuple[SkippedPrompt, ...] = ()

    def table(self) -> pd.DataFrame:
        """One row per (view, n_distractors): n, accuracy, exact, f1, mean logprob, skipped."""
        return _rows_table(self.results, self.skipped, self.config.get("views", VIEWS))

    def accuracy(self, view: str, n_distractors: int | None = None) -> float:
        """The fraction of correct answers under a view (and noise level)."""
        chosen = [r for r in self.results
                  if r.view == view and (n_distractors is None or r.n_distractors == n_distractors)]
        if not chosen:
            present = sorted({(r.view, r.n_distractors) for r in self.results})
            raise DataError(
                f"report {self.label!r} has no result for view {view!r} with n_distractors={n_distractors}; "
                f"it has (view, n_distractors) {present}."
            )
        return sum(r.correct for r in chosen) / len(chosen)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": REPORT_FORMAT_VERSION, "kind": "eval_report", "label": self.label,
            "config": self.config, "model": self.model, "mask": self.mask,
            "results": [asdict(r) for r in self.results], "skipped": [asdict(s) for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "report") -> "EvalReport":
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: expected a JSON object of an eval report, got {type(data).__name__}.")
        missing = [k for k in ("format_version", "results", "label", "config", "model") if k not in data]
        if missing:
            raise ArtifactError(f"{where} lacks field(s) {missing}; expected an EvalReport written by neurorit.")
        if data["format_version"] != REPORT_FORMAT_VERSION:
            raise ArtifactError(
                f"{where} has format_version {data['format_version']!r}, this neurorit reads {REPORT_FORMAT_VERSION}; "
                "run the evaluation again."
            )
        try:
            results = tuple(ExampleResult(**r) for r in data["results"])
            skipped = tuple(SkippedPrompt(**s) for s in data.get("skipped", []))
        except TypeError as exc:
            raise ArtifactError(f"{where}: a result record has the wrong fields ({exc}).") from exc
        return cls(results=results, label=data["label"], config=data["config"], model=data["model"],
                   mask=data.get("mask"), skipped=skipped)



# ---- evaluation ---------------------------------------------------------------------------------


def _prompt_plan(
    model: Any, examples: Sequence[RagExample], config: EvalConfig
) -> tuple[list[tuple[RagExample, int, Prompt]], list[SkippedPrompt]]:
    """Every prompt to run, in order (example-major), and the ones that could not be built."""
    n_ctx = int(model.cfg.n_ctx)
    plan, skipped = [], []
    for example in examples:
        for view in config.views:
            if view == "noisy":
                levels = config.noise_sweep()
            elif view == "irrelevant":
                levels = (config.prompt.n_distractors,)
            else:
                levels = (0,)
            for k in levels:
                prompt_config = config.prompt
                if view == "noisy":
                    prompt_config = dataclasses.replace(config.prompt, n_distractors=k)
                try:
                    prompt = build_prompt(example, view, prompt_config, model.tokenizer, max_tokens=n_ctx)
                except DataError as exc:
                    log.warning("skipping example %s for the %s view (%d distractors): %s", example.id, view, k, exc)
                    skipped.append(SkippedPrompt(example.id, view, k, str(exc)))
                    continue
                plan.append((example, k, prompt))
    return plan, skipped


def _result(example: RagExample, k: int, prompt: Prompt, answer: str, logprob: float) -> ExampleResult:
    return ExampleResult(
        example_id=example.id, view=prompt.view, n_distractors=k, answer=answer,
        correct=contains_answer(answer, example.answers), exact=exact_match(answer, example.answers),
        f1=token_f1(answer, example.answers), logprob=logprob, n_passages=len(prompt.passages),
    )


def evaluate(
    model: Any,
    examples: Sequence[RagExample],
    config: EvalConfig,
    *,
    mask: NeuronMask | None = None,
    label: str = "",
    strict: bool = True,
    on_progress: ProgressFn = no_progress,
) -> EvalReport:
    """Answer every example under every view (and noise level), score it, and report.

    Examples that cannot be shown under a view (DataError: no relevant passage, prompt longer
    than the model's context, ...) are skipped for that view with a warning and counted in the
    report. With a mask, every prompt runs under it (checked once; strict=False accepts weights
    other than the mined ones, e.g. a fine-tuned copy).
    """
    examples = list(examples)
    plan, skipped = _prompt_plan(model, examples, config)
    results = []
    with torch.no_grad(), step_engine(model, mask, strict=strict) as new_steps:
        for done, (example, k, prompt) in enumerate(plan, start=1):
            answer, logprob, _ = decode_and_score(model, prompt, config.max_new_tokens, steps=new_steps())
            results.append(_result(example, k, prompt, answer, logprob))
            on_progress(done, len(plan), f"{label or 'eval'}: {example.id} {prompt.view} ({k} distractors)")
    return _report(model, config, results, skipped, label, mask)


def _report(
    model: Any, config: EvalConfig, results: list[ExampleResult], skipped: list[SkippedPrompt], label: str,
    mask: NeuronMask | None,
) -> EvalReport:
    if skipped:
        log.warning("%s: %d of %d prompts skipped", label or "evaluation", len(skipped), len(skipped) + len(results))
    return EvalReport(
        results=tuple(results), label=label, config=config.to_dict(), model=asdict(model_identity(model)),
        mask=_mask_summary(mask), skipped=tuple(skipped),
    )


def _mask_summary(mask: NeuronMask | None) -> dict[str, Any] | None:
    if mask is None:
        return None
    return {"key": mask.key(), "provenance": mask.provenance, "n_neurons": len(mask),
            "counts_per_layer": mask.counts_per_layer()}


# ---- ablation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AblationReport(store.JsonArtifact):
    """The same evaluation without the mask, with it, and with a random control mask."""

    base: EvalReport
    masked: EvalReport
    control: EvalReport | None = None

    def table(self) -> pd.DataFrame:
        """Rows (view, n_distractors); accuracy and logprob for each run and their deltas to base."""
        keys = ["view", "n_distractors"]
        runs = [("base", self.base), ("masked", self.masked)] + ([("control", self.control)] if self.control else [])
        merged = None
        for name, report in runs:
            part = report.table()[keys + ["n", "accuracy", "logprob"]].rename(
                columns={"n": f"n_{name}", "accuracy": f"accuracy_{name}", "logprob": f"logprob_{name}"})
            merged = part if merged is None else merged.merge(part, on=keys, how="outer", sort=False)
        assert merged is not None
        order = {v: i for i, v in enumerate(self.base.config.get("views", VIEWS))}
        merged = merged.sort_values(keys, key=lambda col: col.map(order) if col.name == "view" else col, kind="stable")
        for name, _ in runs[1:]:
            for metric in ("accuracy", "logprob"):
                merged[f"delta_{metric}_{name}"] = merged[f"{metric}_{name}"] - merged[f"{metric}_base"]
        return merged.reset_index(drop=True)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "ablation_report", "format_version": REPORT_FORMAT_VERSION, "base": self.base.to_json(),
                "masked": self.masked.to_json(), "control": self.control.to_json() if self.control else None}

    @classmethod
    def from_json(cls, data: Any, where: str = "ablation report") -> "AblationReport":
        if not isinstance(data, dict) or not {"base", "masked"} <= set(data):
            raise ArtifactError(f"{where}: expected an ablation report with 'base' and 'masked' reports.")
        control = data.get("control")
        return cls(EvalReport.from_json(data["base"], f"{where} (base)"),
                   EvalReport.from_json(data["masked"], f"{where} (masked)"),
                   EvalReport.from_json(control, f"{where} (control)") if control is not None else None)


def ablate(
    model: Any,
    examples: Sequence[RagExample],
    config: EvalConfig,
    mask: NeuronMask,
    *,
    control_seed: int | None = 0,
    strict: bool = True,
    cache: AnswerCache = ANSWER_CACHE,
    on_progress: ProgressFn = no_progress,
) -> AblationReport:
    """Evaluate without the mask, with it, and (unless control_seed is None) with its random control
    (NeuronMask.random_control).

    Prompt by prompt: the unmasked answer (remembered in `cache`, see decoding.AnswerCache) drafts the masked and
    control answers, and on the fast path their prefills start at their masks' lowest layers from
    the unmasked one. The reports equal three separate `evaluate` runs.
    """
    examples = list(examples)
    mask.check(model, strict=strict)  # fail before the (long) run
    control_mask = mask.random_control(control_seed) if control_seed is not None else None
    runs = {"base": None, "masked": mask, **({"control": control_mask} if control_mask is not None else {})}
    plan, skipped = _prompt_plan(model, examples, config)
    results: dict[str, list[ExampleResult]] = {name: [] for name in runs}
    n, total, done = config.max_new_tokens, len(plan) * len(runs), 0
    for example, k, prompt in plan:
        before = cache.unmasked(model, prompt, n)
        replay = cache.replay(model, prompt, n)
        for name, run_mask in runs.items():
            if run_mask is None:
                answer, logprob = before[:2]
            else:
                with torch.no_grad(), step_engine(model, run_mask, strict=strict) as new_steps:
                    answer, logprob, _ = decode_and_score(model, prompt, n, draft=before[2],
                                                          steps=new_steps(replay=replay))
            results[name].append(_result(example, k, prompt, answer, logprob))
            done += 1
            on_progress(done, total, f"{name}: {example.id} {prompt.view} ({k} distractors)")
    base, masked, *rest = (_report(model, config, results[name], skipped, name, run_mask)
                           for name, run_mask in runs.items())
    control = rest[0] if rest else None
    return AblationReport(base, masked, control)


@dataclass(frozen=True)
class WhatIf:
    """One example under one view, before and after the mask."""

    view: str
    answer_before: str
    answer_after: str
    logprob_before: float
    logprob_after: float
    correct_before: bool
    correct_after: bool


def what_if_prompts(model: Any, example: RagExample, config: EvalConfig,
                    views: Sequence[str] | None = None) -> list[Prompt]:
    """The prompts a what-if runs: the example under each view (noisy at prompt.n_distractors)."""
    chosen = tuple(views) if views is not None else config.views
    plan, _ = _prompt_plan(model, [example], dataclasses.replace(config, views=chosen, noise_levels=()))
    return [p for _, _, p in plan]


def answers_without_mask(
    model: Any, example: RagExample, config: EvalConfig, *, views: Sequence[str] | None = None,
    cache: AnswerCache = ANSWER_CACHE,
) -> list[tuple[str, str, float]]:
    """(view, answer, gold log-prob) of the unmasked model per view, remembered for what_if: the
    workbench computes them when an example is picked, so each what-if only runs the masked side."""
    return [(p.view, *cache.unmasked(model, p, config.max_new_tokens)[:2])
            for p in what_if_prompts(model, example, config, views)]


def what_if(
    model: Any,
    example: RagExample,
    mask: NeuronMask,
    config: EvalConfig,
    *,
    views: Sequence[str] | None = None,
    strict: bool = True,
    cache: AnswerCache = ANSWER_CACHE,
) -> list[WhatIf]:
    """The UI's fast path: one example, each view (noisy at prompt.n_distractors), without and with the mask.

    A view the example cannot be shown under is left out with a warning.
    """
    plan = what_if_prompts(model, example, config, views)
    n = config.max_new_tokens
    before = [cache.unmasked(model, p, n) for p in plan]
    with torch.no_grad(), step_engine(model, mask, strict=strict) as new_steps:
        after = [decode_and_score(model, p, n, draft=b[2], steps=new_steps(replay=cache.replay(model, p, n)))
                 for p, b in zip(plan, before)]
    return [
        WhatIf(view=p.view, answer_before=b[0], answer_after=a[0], logprob_before=b[1], logprob_after=a[1],
               correct_before=contains_answer(b[0], example.answers),
               correct_after=contains_answer(a[0], example.answers))
        for p, b, a in zip(plan, before, after)
    ]
