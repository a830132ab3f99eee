"""Evaluation: how well a model answers under each context view, with or without a neuron mask.

Owns: `EvalConfig` (views, the noise sweep, generation length, the nested prompt config), greedy
KV-cached answer generation (`generate_answer`), the teacher-forced answer log-probability
(`answer_logprob`), per-prompt results and their roll-up (`EvalReport`, saved as JSON), the
ablation study of METHOD.md (base vs masked vs random-mask control: `ablate`, `AblationReport`)
and the one-example fast path of the UI (`what_if`). Greedy decoding runs on fastpath.py's
hook-free forward when it can stand in for the model (`decoding`), else through the bridge with the
mask's hooks. Must not: load models or datasets, spell hook names (masks.py applies masks), or print.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
import torch

from neurorit import fastpath, store
from neurorit.configs import coerce_fields, from_dict, stable_hash, to_dict
from neurorit.data import RagExample
from neurorit.errors import ArtifactError, ConfigError, DataError
from neurorit.masks import NeuronMask, random_like
from neurorit.metrics import contains_answer, exact_match, token_f1
from neurorit.models import model_identity, prefill
from neurorit.prompts import VIEWS, Prompt, PromptConfig, build_prompt
from neurorit.types import BatchTokenIds, ProgressFn, no_progress

log = logging.getLogger(__name__)

REPORT_FORMAT_VERSION = 1
_METRICS = ("accuracy", "exact", "f1", "logprob")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
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
            if not _is_int(level) or level < 0:
                raise ConfigError.field("EvalConfig", "noise_levels", self.noise_levels, "integers >= 0")
        if len(set(self.noise_levels)) != len(self.noise_levels):
            raise ConfigError.field("EvalConfig", "noise_levels", self.noise_levels, "each level at most once")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
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

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalConfig":
        if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
            data = {**data, "prompt": PromptConfig.from_dict(data["prompt"])}
        return from_dict(cls, data)

    def hash(self) -> str:
        return stable_hash(self)


# ---- generation and scoring ---------------------------------------------------------------------


def _device(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


def _tokens(model: Any, ids: Sequence[int]) -> BatchTokenIds:
    return torch.tensor([list(ids)], dtype=torch.long, device=_device(model))


def stop_token_ids(model: Any) -> frozenset[int]:
    """Token ids that end an answer: the tokenizer's eos and the generation config's eos list."""
    ids: set[int] = set()
    eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    generation_config = getattr(model.original_model, "generation_config", None)
    listed = getattr(generation_config, "eos_token_id", None)
    if listed is not None:
        ids.update(int(i) for i in ([listed] if isinstance(listed, int) else listed))
    return frozenset(ids)


def _check_length(model: Any, prompt: Prompt, extra: int) -> None:
    n_ctx = int(model.cfg.n_ctx)
    if prompt.n_tokens + extra > n_ctx:
        raise DataError(
            f"example {prompt.example_id}: the {prompt.view} prompt is {prompt.n_tokens} tokens (+{extra}), "
            f"over the model's context of {n_ctx}. Fix: fewer distractors or shorter passages "
            "(PromptConfig.n_distractors, max_passage_tokens)."
        )


def _maybe_masked(mask: NeuronMask | None, model: Any, strict: bool) -> Any:
    return mask.applied(model, strict=strict) if mask is not None else contextlib.nullcontext(model)


class _BridgeSteps:
    """One prompt's decoding state through the bridge (hooks fire; HF's KV cache)."""

    def __init__(self, model: Any) -> None:
        self.model, self.cache = model, None

    def prefill(self, token_ids: Sequence[int], keep: int) -> torch.Tensor:  # [keep, d_vocab]
        logits, self.cache = prefill(self.model, _tokens(self.model, token_ids), keep=keep)
        return logits[0]

    def extend(self, token_ids: Sequence[int]) -> torch.Tensor:  # [len(token_ids), d_vocab]
        return self.model(_tokens(self.model, token_ids), past_key_values=self.cache)[0]

    def crop_last(self, k: int) -> None:
        if k:
            self.cache.crop(-k)


Steps = Any  # _BridgeSteps | fastpath.FastSteps: prefill(ids, keep), extend(ids), crop_last(k)


@contextlib.contextmanager
def decoding(model: Any, mask: NeuronMask | None = None, *, strict: bool = True) -> Iterator[Any]:
    """A maker of per-prompt decoding states (`new(record=False, replay=None)`) that run the model
    with the mask: the fast path when it reproduces the model (fastpath.why_not is None), else the
    bridge under mask.applied. Both give the same tokens up to float rounding (tests hold the logits
    to 1e-4); a decoded token of the bundled model costs ~38 ms on the fast path, ~60 ms through
    the bridge (2 cores)."""
    reason = fastpath.why_not(model)
    if reason is None:
        if mask is not None:
            mask.check(model, strict=strict)
        fast = fastpath.of(model)
        scale = mask.scale if mask is not None and mask.layers else None
        yield lambda record=False, replay=None: fastpath.FastSteps(fast, scale, record=record, replay=replay)
    else:
        log.debug("decoding through the bridge: %s", reason)
        with _maybe_masked(mask, model, strict):
            yield lambda record=False, replay=None: _BridgeSteps(model)


# Prompt lookup: match the answer's last 1..3 tokens in the prompt and propose the token that
# followed them. On the fast path a pass over 1, 2, 3, 4 tokens costs 43.5, 46.9, 50.0, 69.3 ms
# (bundled model, 2 cores); decoding the bundled model's answers to 8 demo questions x 3 views twice
# took 36.1 s unmasked / 34.8 s masked in total proposing 1 token, 36.2 / 36.1 s with 2, 39.4 /
# 39.3 s with 3 (bench notes in bench/results/what_if_cpu.md).
LOOKUP_NGRAM = 3
LOOKUP_TOKENS = 1


def _lookup(context: Sequence[int], generated: Sequence[int], k: int) -> list[int]:
    """The k tokens that follow the latest place in the prompt where the answer's last n tokens
    stand (longest n first): answers copy the question and the passages."""
    for n in range(min(LOOKUP_NGRAM, len(generated)), 0, -1):
        tail = list(generated[-n:])
        for start in range(len(context) - n - 1, -1, -1):
            if list(context[start : start + n]) == tail:
                return list(context[start + n : start + n + k])
    return []


def _greedy_ids(
    model: Any, steps: Steps, row: torch.Tensor, max_new_tokens: int, room: int, draft: Sequence[int] = (),
    context: Sequence[int] = (),
) -> list[int]:
    """Greedy tokens from the prefix's last logits `row` on, until an end token, a newline after
    some text, or the length limit; `steps` holds the prefix.

    Speculative decoding with greedy verification: each pass feeds the newest token together with
    the tokens expected after it (the draft, e.g. the unmasked answer in a what-if, while the
    answer follows it; else the tokens that follow the answer's last n-gram in the prompt
    `context`), keeps the expected tokens the model would have chosen anyway, and cuts the cache
    back at the first that it would not. The tokens are the step-by-step greedy ones, up to float
    rounding between one pass and single steps; a right guess saves a pass per token.
    """
    tokenizer = model.tokenizer
    stops = stop_token_ids(model)
    limit = min(max_new_tokens, room)
    draft = list(draft)
    generated: list[int] = []

    def finished() -> bool:  # after appending a token
        return "\n" in tokenizer.decode(generated, skip_special_tokens=True).lstrip() or len(generated) >= limit

    while True:  # `row` predicts the next token; the cache holds the prefix and `generated`
        next_id = int(row.argmax())
        if next_id in stops:
            return generated
        generated.append(next_id)
        if finished():
            return generated
        room_left = limit - len(generated) - 1  # tokens worth verifying after next_id
        if draft[: len(generated)] == generated:
            proposal = draft[len(generated) : len(generated) + room_left]
        else:
            proposal = _lookup(context, generated, min(LOOKUP_TOKENS, room_left)) if room_left > 0 else []
        out = steps.extend([next_id, *proposal])  # [1 + k, d_vocab]
        j = 0
        while j < len(proposal):
            t = int(out[j].argmax())
            if t != proposal[j] or t in stops:
                break
            generated.append(t)  # the model's own choice, and its cache entry is already there
            if finished():
                return generated
            j += 1
        steps.crop_last(len(proposal) - j)  # forget the proposed tokens the model did not choose
        row = out[j]


def _answer_text(model: Any, generated: Sequence[int]) -> str:
    text = model.tokenizer.decode(list(generated), skip_special_tokens=True)
    return text.lstrip().split("\n")[0].strip()


@torch.no_grad()
def generate_tokens(model: Any, prompt_ids: Sequence[int], *, max_new_tokens: int = 16) -> list[int]:
    """The model's greedy answer as token ids (trailing newline-only tokens dropped)."""
    with decoding(model) as new_steps:
        steps = new_steps()
        row = steps.prefill(prompt_ids, keep=1)[-1]
        room = int(model.cfg.n_ctx) - len(prompt_ids) + 1
        generated = _greedy_ids(model, steps, row, max_new_tokens, room, context=list(prompt_ids))
    while generated and not model.tokenizer.decode(generated[-1:], skip_special_tokens=True).strip():
        generated.pop()
    return generated


def _room(model: Any, prompt: Prompt) -> int:
    """How many tokens can be generated before the context is full."""
    return int(model.cfg.n_ctx) - prompt.n_tokens + 1


@torch.no_grad()
def generate_answer(
    model: Any, prompt: Prompt, *, max_new_tokens: int = 16, mask: NeuronMask | None = None, strict: bool = True
) -> str:
    """The model's greedy answer to the prompt (KV cache: the prefix once, then one token a step).

    Stops at an end token (see stop_token_ids), at a newline after some text, or after
    max_new_tokens; returns the decoded answer, stripped. With a mask, runs with it (see decoding).
    """
    if max_new_tokens < 1:
        raise ConfigError.field("generate_answer", "max_new_tokens", max_new_tokens, "an integer >= 1")
    _check_length(model, prompt, 0)
    with decoding(model, mask, strict=strict) as new_steps:
        steps = new_steps()
        row = steps.prefill(prompt.token_ids, keep=1)[-1]
        generated = _greedy_ids(model, steps, row, max_new_tokens, _room(model, prompt), context=prompt.token_ids)
    return _answer_text(model, generated)


@torch.no_grad()
def answer_logprob(model: Any, prompt: Prompt, *, mask: NeuronMask | None = None, strict: bool = True) -> float:
    """Sum of the log-probabilities of prompt.answer_ids after prompt.token_ids (one forward)."""
    _check_length(model, prompt, len(prompt.answer_ids))
    n_prompt, n_answer = prompt.n_tokens, len(prompt.answer_ids)
    with _maybe_masked(mask, model, strict):
        logits = model(_tokens(model, prompt.token_ids + prompt.answer_ids))  # [1, pos, d_vocab]
    predicting = logits[0, n_prompt - 1 : n_prompt - 1 + n_answer].float()  # [answer, d_vocab]
    targets = torch.tensor(prompt.answer_ids, device=predicting.device)
    return float(predicting.log_softmax(-1).gather(-1, targets[:, None]).sum())


def answer_and_logprob(model: Any, prompt: Prompt, *, max_new_tokens: int = 16) -> tuple[str, float]:
    """generate_answer and answer_logprob sharing one prefix forward (the caller applies any mask)."""
    with decoding(model) as new_steps:
        text, logprob, _ = _answer_logprob_ids(model, prompt, max_new_tokens, steps=new_steps())
    return text, logprob


@torch.no_grad()
def _answer_logprob_ids(
    model: Any, prompt: Prompt, max_new_tokens: int, draft: Sequence[int] = (), *, lookup: bool = True,
    steps: Steps | None = None,
) -> tuple[str, float, list[int]]:
    """answer_and_logprob, also returning the greedy token ids; draft as in _greedy_ids; lookup=False
    decodes without prompt-lookup proposals (one pass a token unless drafted; benchmarks).

    One prefill scores the gold answer too: it runs over the prompt and the gold answer but its last
    token, keeps the logits of the answer's positions, then crops the cache back to the prompt.
    """
    _check_length(model, prompt, len(prompt.answer_ids))
    if steps is None:
        with decoding(model) as new_steps:
            return _answer_logprob_ids(model, prompt, max_new_tokens, draft, lookup=lookup, steps=new_steps())
    answer_ids = list(prompt.answer_ids)
    scored = answer_ids[:-1]
    logits = steps.prefill(list(prompt.token_ids) + scored, keep=len(scored) + 1)  # [answer, d_vocab]
    logprob = 0.0
    if answer_ids:
        targets = torch.tensor(answer_ids, device=logits.device)
        logprob = float(logits.float().log_softmax(-1).gather(-1, targets[:, None]).sum())
    steps.crop_last(len(scored))
    context = prompt.token_ids if lookup else ()
    ids = _greedy_ids(model, steps, logits[0], max_new_tokens, _room(model, prompt), draft, context)
    return _answer_text(model, ids), logprob, ids


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
class EvalReport:
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

    def save(self, path: Path) -> Path:
        """Write the report as one JSON file (atomically)."""
        path = Path(path)
        store.write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> "EvalReport":
        return cls.from_json(store.read_json(Path(path)), str(path))


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
    with torch.no_grad(), decoding(model, mask, strict=strict) as new_steps:
        for done, (example, k, prompt) in enumerate(plan, start=1):
            answer, logprob, _ = _answer_logprob_ids(model, prompt, config.max_new_tokens, steps=new_steps())
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


def random_control(mask: NeuronMask, *, seed: int = 0) -> NeuronMask:
    """A mask with the same scale values, per layer, on uniformly random neurons (random_like)."""
    chosen = random_like(mask.neurons, seed=seed)
    scale = torch.ones_like(mask.scale)
    for layer in range(scale.shape[0]):
        values = mask.scale[layer][mask.scale[layer] != 1.0]  # [count]
        scale[layer][chosen.grid[layer]] = values
    provenance = {"kind": "random_control", "seed": seed, "control_of": mask.key()}
    return NeuronMask(scale, mask.model, provenance)


@dataclass(frozen=True)
class AblationReport:
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

    def save(self, path: Path) -> Path:
        path = Path(path)
        store.write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: Path) -> "AblationReport":
        data = store.read_json(Path(path))
        if not isinstance(data, dict) or not {"base", "masked"} <= set(data):
            raise ArtifactError(f"{path}: expected an ablation report with 'base' and 'masked' reports.")
        control = data.get("control")
        return cls(EvalReport.from_json(data["base"], f"{path} (base)"),
                   EvalReport.from_json(data["masked"], f"{path} (masked)"),
                   EvalReport.from_json(control, f"{path} (control)") if control is not None else None)


def ablate(
    model: Any,
    examples: Sequence[RagExample],
    config: EvalConfig,
    mask: NeuronMask,
    *,
    control_seed: int | None = 0,
    strict: bool = True,
    on_progress: ProgressFn = no_progress,
) -> AblationReport:
    """Evaluate without the mask, with it, and (unless control_seed is None) with random_control.

    Prompt by prompt: the unmasked answer (remembered, see _unmasked_answer) drafts the masked and
    control answers, and on the fast path their prefills start at their masks' lowest layers from
    the unmasked one. The reports equal three separate `evaluate` runs.
    """
    examples = list(examples)
    mask.check(model, strict=strict)  # fail before the (long) run
    control_mask = random_control(mask, seed=control_seed) if control_seed is not None else None
    runs = {"base": None, "masked": mask, **({"control": control_mask} if control_mask is not None else {})}
    plan, skipped = _prompt_plan(model, examples, config)
    results: dict[str, list[ExampleResult]] = {name: [] for name in runs}
    n, total, done = config.max_new_tokens, len(plan) * len(runs), 0
    fingerprint = model_identity(model).fingerprint
    for example, k, prompt in plan:
        before = _unmasked_answer(model, prompt, n)
        replay = _PREFILLS.get((fingerprint, prompt.token_ids, prompt.answer_ids, n))
        for name, run_mask in runs.items():
            if run_mask is None:
                answer, logprob = before[:2]
            else:
                with torch.no_grad(), decoding(model, run_mask, strict=strict) as new_steps:
                    answer, logprob, _ = _answer_logprob_ids(model, prompt, n, draft=before[2],
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


_UNMASKED: "OrderedDict[tuple[Any, ...], tuple[str, float, list[int]]]" = OrderedDict()
_UNMASKED_SIZE = 256
# The unmasked prefills' residual streams and keys/values (fast path only), the newest that fit in
# fastpath.RECORD_BUDGET: a masked prefill of the same prompt starts at the mask's lowest layer.
_PREFILLS: "OrderedDict[tuple[Any, ...], fastpath.PrefillRecord]" = OrderedDict()


def _remember_prefill(key: tuple[Any, ...], record: "fastpath.PrefillRecord | None") -> None:
    if record is None:
        return
    _PREFILLS[key] = record
    while sum(r.nbytes for r in _PREFILLS.values()) > fastpath.RECORD_BUDGET:
        _PREFILLS.popitem(last=False)


@torch.no_grad()
def _unmasked_answer(model: Any, prompt: Prompt, max_new_tokens: int) -> tuple[str, float, list[int]]:
    """_answer_logprob_ids without a mask, remembered per (weights, prompt): a what-if that only
    changes the mask recomputes the masked side alone, with the unmasked tokens as its draft and,
    on the fast path, the unmasked prefill below the mask's lowest layer."""
    key = (model_identity(model).fingerprint, prompt.token_ids, prompt.answer_ids, max_new_tokens)
    if key in _UNMASKED:
        _UNMASKED.move_to_end(key)
        return _UNMASKED[key]
    with decoding(model) as new_steps:
        steps = new_steps(record=True)
        result = _answer_logprob_ids(model, prompt, max_new_tokens, steps=steps)
    _remember_prefill(key, getattr(steps, "record", None))
    _UNMASKED[key] = result
    if len(_UNMASKED) > _UNMASKED_SIZE:
        _UNMASKED.popitem(last=False)
    return result


def _what_if_plan(model: Any, example: RagExample, config: EvalConfig, views: Sequence[str] | None) -> list[Prompt]:
    chosen = tuple(views) if views is not None else config.views
    plan, _ = _prompt_plan(model, [example], dataclasses.replace(config, views=chosen, noise_levels=()))
    return [p for _, _, p in plan]


def answers_without_mask(
    model: Any, example: RagExample, config: EvalConfig, *, views: Sequence[str] | None = None
) -> list[tuple[str, str, float]]:
    """(view, answer, gold log-prob) of the unmasked model per view, remembered for what_if: the
    workbench computes them when an example is picked, so each what-if only runs the masked side."""
    return [(p.view, *_unmasked_answer(model, p, config.max_new_tokens)[:2])
            for p in _what_if_plan(model, example, config, views)]


def what_if(
    model: Any,
    example: RagExample,
    mask: NeuronMask,
    config: EvalConfig,
    *,
    views: Sequence[str] | None = None,
    strict: bool = True,
) -> list[WhatIf]:
    """The UI's fast path: one example, each view (noisy at prompt.n_distractors), without and with the mask.

    A view the example cannot be shown under is left out with a warning.
    """
    plan = _what_if_plan(model, example, config, views)
    before = [_unmasked_answer(model, p, config.max_new_tokens) for p in plan]
    fingerprint = model_identity(model).fingerprint
    with torch.no_grad(), decoding(model, mask, strict=strict) as new_steps:
        after = []
        for p, b in zip(plan, before):
            replay = _PREFILLS.get((fingerprint, p.token_ids, p.answer_ids, config.max_new_tokens))
            after.append(_answer_logprob_ids(model, p, config.max_new_tokens, draft=b[2], steps=new_steps(replay=replay)))
    return [
        WhatIf(view=p.view, answer_before=b[0], answer_after=a[0], logprob_before=b[1], logprob_after=a[1],
               correct_before=contains_answer(b[0], example.answers),
               correct_after=contains_answer(a[0], example.answers))
        for p, b, a in zip(plan, before, after)
    ]
