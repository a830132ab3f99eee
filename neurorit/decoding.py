"""Decoding: the model's greedy answer to a prompt and the teacher-forced log-probability of the gold answer.

Owns: the step engines (`step_engine`: fastpath.py's hook-free forward when it can stand in for
the model, else the bridge with the mask's hooks and HF's KV cache), greedy decoding with
speculative proposals (the unmasked answer as a draft, prompt lookup), stop tokens, the prompt
length check, `generate_answer` / `generate_tokens`, `answer_logprob`, `decode_and_score` (both
from one prefill) and `AnswerCache` (the unmasked answers and fast-path prefills a what-if reuses;
one object with `clear()`). Must not: build prompts, score answers against gold aliases, load
models, spell hook names (masks.py applies masks), or print.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Any, Iterator, Sequence

import torch

from neurorit import fastpath
from neurorit.errors import ConfigError, DataError
from neurorit.masks import NeuronMask
from neurorit.models import model_identity, prefill
from neurorit.prompts import Prompt
from neurorit.types import BatchTokenIds

log = logging.getLogger(__name__)


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


def check_length(model: Any, prompt: Prompt, extra: int) -> None:
    n_ctx = int(model.cfg.n_ctx)
    if prompt.n_tokens + extra > n_ctx:
        raise DataError(
            f"example {prompt.example_id}: the {prompt.view} prompt is {prompt.n_tokens} tokens (+{extra}), "
            f"over the model's context of {n_ctx}. Fix: fewer distractors or shorter passages "
            "(PromptConfig.n_distractors, max_passage_tokens)."
        )


def _maybe_masked(mask: NeuronMask | None, model: Any, strict: bool) -> Any:
    return mask.applied(model, strict=strict) if mask is not None else contextlib.nullcontext(model)


class BridgeSteps:
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


Steps = Any  # BridgeSteps | fastpath.FastSteps: prefill(ids, keep), extend(ids), crop_last(k)


@contextlib.contextmanager
def step_engine(model: Any, mask: NeuronMask | None = None, *, strict: bool = True) -> Iterator[Any]:
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
            yield lambda record=False, replay=None: BridgeSteps(model)


# Prompt lookup: match the answer's last 1..3 tokens in the prompt and propose the token that
# followed them. On the fast path a pass over 1, 2, 3, 4 tokens costs 43.5, 46.9, 50.0, 69.3 ms
# (bundled model, 2 cores); decoding the bundled model's answers to 8 demo questions x 3 views twice
# took 36.1 s unmasked / 34.8 s masked in total proposing 1 token, 36.2 / 36.1 s with 2, 39.4 /
# 39.3 s with 3 (bench notes in bench/results/what_if_cpu.md).
LOOKUP_NGRAM = 3
LOOKUP_TOKENS = 1


def lookup_proposal(context: Sequence[int], generated: Sequence[int], k: int) -> list[int]:
    """The k tokens that follow the latest place in the prompt where the answer's last n tokens
    stand (longest n first): answers copy the question and the passages."""
    for n in range(min(LOOKUP_NGRAM, len(generated)), 0, -1):
        tail = list(generated[-n:])
        for start in range(len(context) - n - 1, -1, -1):
            if list(context[start : start + n]) == tail:
                return list(context[start + n : start + n + k])
    return []


def greedy_decode(
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
            proposal = lookup_proposal(context, generated, min(LOOKUP_TOKENS, room_left)) if room_left > 0 else []
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
    with step_engine(model) as new_steps:
        steps = new_steps()
        row = steps.prefill(prompt_ids, keep=1)[-1]
        room = int(model.cfg.n_ctx) - len(prompt_ids) + 1
        generated = greedy_decode(model, steps, row, max_new_tokens, room, context=list(prompt_ids))
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
    max_new_tokens; returns the decoded answer, stripped. With a mask, runs with it (see step_engine).
    """
    if max_new_tokens < 1:
        raise ConfigError.field("generate_answer", "max_new_tokens", max_new_tokens, "an integer >= 1")
    check_length(model, prompt, 0)
    with step_engine(model, mask, strict=strict) as new_steps:
        steps = new_steps()
        row = steps.prefill(prompt.token_ids, keep=1)[-1]
        generated = greedy_decode(model, steps, row, max_new_tokens, _room(model, prompt), context=prompt.token_ids)
    return _answer_text(model, generated)


@torch.no_grad()
def answer_logprob(model: Any, prompt: Prompt, *, mask: NeuronMask | None = None, strict: bool = True) -> float:
    """Sum of the log-probabilities of prompt.answer_ids after prompt.token_ids (one forward)."""
    check_length(model, prompt, len(prompt.answer_ids))
    n_prompt, n_answer = prompt.n_tokens, len(prompt.answer_ids)
    with _maybe_masked(mask, model, strict):
        logits = model(_tokens(model, prompt.token_ids + prompt.answer_ids))  # [1, pos, d_vocab]
    predicting = logits[0, n_prompt - 1 : n_prompt - 1 + n_answer].float()  # [answer, d_vocab]
    targets = torch.tensor(prompt.answer_ids, device=predicting.device)
    return float(predicting.log_softmax(-1).gather(-1, targets[:, None]).sum())


def answer_and_logprob(model: Any, prompt: Prompt, *, max_new_tokens: int = 16) -> tuple[str, float]:
    """generate_answer and answer_logprob sharing one prefix forward (the caller applies any mask)."""
    with step_engine(model) as new_steps:
        text, logprob, _ = decode_and_score(model, prompt, max_new_tokens, steps=new_steps())
    return text, logprob


@torch.no_grad()
def decode_and_score(
    model: Any, prompt: Prompt, max_new_tokens: int, draft: Sequence[int] = (), *, lookup: bool = True,
    steps: Steps | None = None,
) -> tuple[str, float, list[int]]:
    """answer_and_logprob, also returning the greedy token ids; draft as in greedy_decode; lookup=False
    decodes without prompt-lookup proposals (one pass a token unless drafted; benchmarks).

    One prefill scores the gold answer too: it runs over the prompt and the gold answer but its last
    token, keeps the logits of the answer's positions, then crops the cache back to the prompt.
    """
    check_length(model, prompt, len(prompt.answer_ids))
    if steps is None:
        with step_engine(model) as new_steps:
            return decode_and_score(model, prompt, max_new_tokens, draft, lookup=lookup, steps=new_steps())
    answer_ids = list(prompt.answer_ids)
    scored = answer_ids[:-1]
    logits = steps.prefill(list(prompt.token_ids) + scored, keep=len(scored) + 1)  # [answer, d_vocab]
    logprob = 0.0
    if answer_ids:
        targets = torch.tensor(answer_ids, device=logits.device)
        logprob = float(logits.float().log_softmax(-1).gather(-1, targets[:, None]).sum())
    steps.crop_last(len(scored))
    context = prompt.token_ids if lookup else ()
    ids = greedy_decode(model, steps, logits[0], max_new_tokens, _room(model, prompt), draft, context)
    return _answer_text(model, ids), logprob, ids


class AnswerCache:
    """The unmasked side of what-ifs, remembered per (weights, prompt): the answer, its gold
    log-prob and token ids (the newest `size`), and on the fast path the unmasked prefill's
    residual streams and keys/values (the newest that fit in fastpath.RECORD_BUDGET), from which a
    masked prefill of the same prompt starts at the mask's lowest layer."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.answers: "OrderedDict[tuple[Any, ...], tuple[str, float, list[int]]]" = OrderedDict()
        self.prefills: "OrderedDict[tuple[Any, ...], fastpath.PrefillRecord]" = OrderedDict()

    def clear(self) -> None:
        self.answers.clear()
        self.prefills.clear()

    @staticmethod
    def key(model: Any, prompt: Prompt, max_new_tokens: int) -> tuple[Any, ...]:
        return (model_identity(model).fingerprint, prompt.token_ids, prompt.answer_ids, max_new_tokens)

    def replay(self, model: Any, prompt: Prompt, max_new_tokens: int) -> "fastpath.PrefillRecord | None":
        """The remembered unmasked prefill of this prompt, if any (fast path only)."""
        return self.prefills.get(self.key(model, prompt, max_new_tokens))

    def _remember_prefill(self, key: tuple[Any, ...], record: "fastpath.PrefillRecord | None") -> None:
        if record is None:
            return
        self.prefills[key] = record
        while sum(r.nbytes for r in self.prefills.values()) > fastpath.RECORD_BUDGET:
            self.prefills.popitem(last=False)

    @torch.no_grad()
    def unmasked(self, model: Any, prompt: Prompt, max_new_tokens: int) -> tuple[str, float, list[int]]:
        """decode_and_score without a mask, remembered: a what-if that only changes the mask
        recomputes the masked side alone, with these tokens as its draft."""
        key = self.key(model, prompt, max_new_tokens)
        if key in self.answers:
            self.answers.move_to_end(key)
            return self.answers[key]
        with step_engine(model) as new_steps:
            steps = new_steps(record=True)
            result = decode_and_score(model, prompt, max_new_tokens, steps=steps)
        self._remember_prefill(key, getattr(steps, "record", None))
        self.answers[key] = result
        if len(self.answers) > self.size:
            self.answers.popitem(last=False)
        return result


ANSWER_CACHE = AnswerCache()
"""The process's cache (the workbench's what-ifs); `ANSWER_CACHE.clear()` forgets it."""
