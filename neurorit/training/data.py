"""Training data: the deterministic split, the noisy training inputs, and their tokens.

Owns: splitting examples into train / dev / test by a hash of their id (`split_of`,
`split_examples`), giving every split its distractors (the example's own irrelevant passages,
then other examples' of the same split: prompts.add_distractors), filtering to usable examples
(`TrainData`), one training input as tokens with the loss on the target only (`TrainItem`:
prompt + first gold alias + the chat template's end-of-turn token), and which inputs make up
optimizer step s (`items_for_step`, a pure function of the config and s, so a resumed run sees
exactly the inputs an uninterrupted one would). Must not: run models or hold tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import Any, Sequence

from neurorit.data import RagExample
from neurorit.errors import DataError
from neurorit.prompts import add_distractors, build_prompt, has_chat_template
from neurorit.training.config import TrainConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_SENTINEL = "NEURORIT_ANSWER_SENTINEL"


# ---- split --------------------------------------------------------------------------------------


def _unit(*parts: Any) -> float:
    """A number in [0, 1) from a hash of the parts: stable across processes and machines."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(example_id: str, *, seed: int = 0, dev_fraction: float = 0.1, test_fraction: float = 0.2) -> str:
    """'test', 'dev' or 'train' for an example id: a hash, so adding examples never moves others."""
    u = _unit("split", seed, example_id)
    if u < test_fraction:
        return "test"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def split_examples(examples: Sequence[RagExample], config: TrainConfig) -> dict[str, list[RagExample]]:
    """The examples of each split, in their original order."""
    out: dict[str, list[RagExample]] = {name: [] for name in SPLITS}
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DataError(f"example id {example.id!r} occurs twice; the split needs unique ids.")
        seen.add(example.id)
        out[split_of(example.id, seed=config.split_seed, dev_fraction=config.dev_fraction,
                     test_fraction=config.test_fraction)].append(example)
    return out


def with_distractors(examples: Sequence[RagExample], n: int, config: TrainConfig) -> list[RagExample]:
    """Examples with at least n irrelevant passages where the pool allows (own ones first).

    own_then_others: keep the example's irrelevant passages, then add other examples' passages;
    own: no additions; others: drop the example's own irrelevant passages, add other examples'.
    """
    examples = list(examples)
    if config.distractors_from == "own" or n == 0:
        return examples
    if config.distractors_from == "others":
        examples = [e.with_passages(e.relevant_passages) for e in examples]
    return add_distractors(examples, n, seed=config.split_seed, hard=config.hard_distractors)


# ---- one training input -------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainItem:
    """One training sequence: prompt tokens then target tokens; the loss reads the targets only.

    teacher_prompt_ids: the relevant-only prompt of the same example (for stage-2 KL distillation).
    """

    example_id: str
    view: str
    n_distractors: int
    prompt_ids: tuple[int, ...]
    target_ids: tuple[int, ...]  # the answer then the end-of-turn token(s)
    teacher_prompt_ids: tuple[int, ...] = ()

    @property
    def input_ids(self) -> tuple[int, ...]:
        return self.prompt_ids + self.target_ids

    @property
    def loss_mask(self) -> tuple[bool, ...]:
        """True where the token is a target: the loss is on the answer (and its end token) only."""
        return (False,) * len(self.prompt_ids) + (True,) * len(self.target_ids)

    @property
    def n_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.target_ids)


def end_of_turn_ids(tokenizer: Any) -> tuple[int, ...]:
    """The tokens the chat template puts after an assistant answer (`<|im_end|>`, `<|eot_id|>` ...).

    Without a chat template (or when it adds nothing), the tokenizer's eos token.
    """
    if has_chat_template(tokenizer):
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False
            )
        except Exception as exc:  # a template that refuses this conversation shape
            log.warning("chat template could not render an answer (%s); using eos as the end token", exc)
            text = ""
        if _SENTINEL in text:
            suffix = text.split(_SENTINEL, 1)[1].strip()
            ids = tuple(tokenizer(suffix, add_special_tokens=False).input_ids) if suffix else ()
            if ids:
                return ids
    eos = getattr(tokenizer, "eos_token_id", None)
    return (int(eos),) if eos is not None else ()


def _target_example(example: RagExample, config: TrainConfig) -> RagExample:
    if config.target_alias == "shortest" and len(example.answers) > 1:
        shortest = min(example.answers, key=len)
        rest = tuple(a for a in example.answers if a != shortest)
        return dataclasses.replace(example, answers=(shortest, *rest))
    return example


def build_item(
    example: RagExample,
    view: str,
    n_distractors: int,
    prompt_seed: int,
    tokenizer: Any,
    config: TrainConfig,
    *,
    end_ids: tuple[int, ...] | None = None,
    with_teacher: bool = False,
) -> TrainItem:
    """One training input; a prompt too long for max_prompt_tokens drops distractors until it fits.

    A noisy prompt may drop all of them (the relevant passage alone), an irrelevant one keeps one.

    Raises DataError when the example cannot be shown under the view within the limit.
    """
    example = _target_example(example, config)
    end_ids = end_of_turn_ids(tokenizer) if end_ids is None else end_ids
    limit = config.max_prompt_tokens
    k = n_distractors
    while True:
        prompt_config = dataclasses.replace(config.prompt, n_distractors=max(k, 1) if view == "irrelevant" else k,
                                            seed=prompt_seed, relevant_position=None)
        prompt = build_prompt(example, view, prompt_config, tokenizer)
        target = prompt.answer_ids + end_ids
        if len(prompt.token_ids) + len(target) <= limit:
            break
        if (view == "noisy" and k > 0) or (view == "irrelevant" and k > 1):
            k -= 1
            continue
        raise DataError(
            f"example {example.id}: the {view} prompt is {len(prompt.token_ids)} tokens (+{len(target)} target "
            f"tokens), over TrainConfig.max_prompt_tokens = {limit}. Raise the limit or shorten passages "
            f"(prompt.max_passage_tokens = {config.prompt.max_passage_tokens})."
        )
    teacher: tuple[int, ...] = ()
    if with_teacher:
        teacher = build_prompt(example, "relevant", prompt_config, tokenizer).token_ids
    n_shown = sum(not p.relevant for p in prompt.passages)
    return TrainItem(example.id, view, n_shown, prompt.token_ids, target, teacher)


# ---- the data of a run --------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainData:
    """The usable examples of each split (distractors added) and why others were dropped."""

    train: tuple[RagExample, ...]
    dev: tuple[RagExample, ...]
    test: tuple[RagExample, ...]
    dropped: dict[str, str]  # example id -> reason
    n_loaded: int

    def summary(self) -> dict[str, Any]:
        return {"n_loaded": self.n_loaded, "train": len(self.train), "dev": len(self.dev), "test": len(self.test),
                "dropped": len(self.dropped), "dropped_examples": dict(list(self.dropped.items())[:20])}


def prepare_data(examples: Sequence[RagExample], tokenizer: Any, config: TrainConfig) -> TrainData:
    """Split, add distractors per split (no passage crosses splits), and keep the usable examples.

    A training example is usable when its smallest noisy input fits max_prompt_tokens; dev and
    test examples need a relevant passage. Raises DataError when no training example is left.
    """
    examples = list(examples)
    if not examples:
        raise DataError(f"TrainConfig.data = {config.data!r} gave no examples; expected at least a few QA examples.")
    splits = split_examples(examples, config)
    n_needed = max(max(config.n_distractors), *config.eval.noise_sweep(), config.eval.prompt.n_distractors)
    dropped: dict[str, str] = {}
    kept: dict[str, list[RagExample]] = {}
    end_ids = end_of_turn_ids(tokenizer)
    for name in SPLITS:
        part = with_distractors(splits[name], n_needed, config)
        kept[name] = []
        for example in part:
            if not example.relevant_passages:
                dropped[example.id] = f"{name}: no relevant passage (rule {example.relevance_rule!r})"
                continue
            if name == "train":
                try:
                    build_item(example, "noisy", min(config.n_distractors), config.seed, tokenizer, config,
                               end_ids=end_ids)
                except DataError as exc:
                    dropped[example.id] = f"train: {exc}"
                    continue
            kept[name].append(example)
    if not kept["train"]:
        reasons = sorted({r.split(":", 1)[1].strip()[:120] for r in dropped.values()})[:3]
        raise DataError(
            f"no usable training examples: {len(examples)} loaded from {config.data!r}, {len(splits['train'])} in "
            f"the train split, {len(dropped)} dropped (e.g. {reasons}). Fix: use a dataset with relevant "
            "passages, more examples (limit), a larger max_prompt_tokens, or another test/dev fraction."
        )
    if not kept["test"]:
        raise DataError(
            f"no usable test examples among {len(splits['test'])} in the test split of {config.data!r}; "
            f"raise TrainConfig.test_fraction (= {config.test_fraction}) or the number of examples."
        )
    if dropped:
        log.warning("dropped %d of %d examples (first: %s)", len(dropped), len(examples), next(iter(dropped.items())))
    return TrainData(tuple(kept["train"]), tuple(kept["dev"]), tuple(kept["test"]), dropped, len(examples))


# ---- which inputs make up a step ----------------------------------------------------------------


def _view_for(config: TrainConfig, rng: random.Random) -> str:
    if config.method != "retrobust":
        return "noisy"
    if rng.random() < config.retrobust_relevant_share:
        return "relevant"
    return "irrelevant" if rng.random() < 0.5 else "noisy"


def items_for_step(
    step: int, data: TrainData, tokenizer: Any, config: TrainConfig, *, end_ids: tuple[int, ...] | None = None,
    with_teacher: bool = False,
) -> list[TrainItem]:
    """The batch_size x grad_accum inputs of optimizer step `step` (counted from 0 over all stages).

    Epoch e visits the training examples in a permutation seeded by (seed, e); the number of
    distractors, the view (RetRobust) and the relevant passage's position are drawn from
    (seed, e, example id). A pure function of its arguments: resuming at any step is exact.
    """
    n = len(data.train)
    per_step = config.items_per_step
    end_ids = end_of_turn_ids(tokenizer) if end_ids is None else end_ids
    items = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, position = divmod(slot, n)
        order = list(range(n))
        random.Random(f"order:{config.seed}:{epoch}").shuffle(order)
        example = data.train[order[position]]
        rng = random.Random(f"item:{config.seed}:{epoch}:{example.id}")
        k = rng.choice(config.n_distractors)
        view = _view_for(config, rng)
        prompt_seed = config.seed * 100_003 + epoch  # the relevant passage moves between epochs
        items.append(build_item(example, view, k, prompt_seed, tokenizer, config, end_ids=end_ids,
                                with_teacher=with_teacher))
    return items


def dev_items(data: TrainData, tokenizer: Any, config: TrainConfig) -> list[TrainItem]:
    """Fixed noisy inputs of the first n_dev dev examples (for the dev loss curve)."""
    end_ids = end_of_turn_ids(tokenizer)
    out = []
    k = max(config.n_distractors)
    for example in data.dev[: config.n_dev]:
        try:
            out.append(build_item(example, "noisy", k, config.seed, tokenizer, config, end_ids=end_ids))
        except DataError as exc:
            log.warning("dev example %s left out of the dev loss: %s", example.id, exc)
    return out
