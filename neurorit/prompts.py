"""Prompts: the exact token sequences a model sees for one example under one context view.

Owns: the four views of METHOD.md (relevant-only, irrelevant-only, noisy mix, closed book),
`PromptConfig` (instruction, distractor count, position of the relevant passage, passage
truncation), rendering through the tokenizer's chat template (also for a chosen list of passages:
`build_prompt_from_passages`), the answer tokens that continue the prompt, the token spans of the
passages and the question (`passage_spans`), and `add_distractors` (noise for datasets that ship
without irrelevant passages). Must not: run models, or load tokenizers or datasets (both come in as
arguments).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from neurorit.configs import DictConfig, coerce_fields, is_int
from neurorit.data import Passage, RagExample
from neurorit.errors import ConfigError, DataError
from neurorit.metrics import normalize_answer

log = logging.getLogger(__name__)

VIEWS = ("relevant", "irrelevant", "noisy", "closed_book")


@dataclass(frozen=True, kw_only=True)
class PromptConfig(DictConfig):
    """How an example becomes a prompt.

    The noisy view shows the example's first relevant passage among `n_distractors` irrelevant
    ones (the first in the example's order, which for retrieved data are the retriever's best), at
    `relevant_position` or at a position drawn from `seed` and the example id. Passages longer than
    `max_passage_tokens` are cut to that length with a warning.
    """

    instruction: str = "Answer the question using the passages. Reply with a short answer only, no explanation."
    closed_book_instruction: str = "Answer the question. Reply with a short answer only, no explanation."
    n_distractors: int = 4  # METHOD.md: the noisy input is "a mix"; 4 distractors + 1 gold = 5 passages
    relevant_position: int | None = None  # None: drawn per example from seed and id
    max_passage_tokens: int = 200  # retrieved passages are ~100 words (DPR), this leaves headroom
    seed: int = 0
    system_prompt: str | None = None  # None: the chat template's default system message

    def __post_init__(self) -> None:
        coerce_fields(self)  # "4" -> 4; a bool or "abc" is refused
        for name in ("instruction", "closed_book_instruction"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError.field("PromptConfig", name, value, "a non-empty string")
        if not is_int(self.n_distractors) or self.n_distractors < 0:
            raise ConfigError.field("PromptConfig", "n_distractors", self.n_distractors, "an integer >= 0")
        if self.relevant_position is not None and (not is_int(self.relevant_position) or self.relevant_position < 0):
            raise ConfigError.field(
                "PromptConfig", "relevant_position", self.relevant_position, "an integer >= 0, or None (seeded)"
            )
        if not is_int(self.max_passage_tokens) or self.max_passage_tokens < 1:
            raise ConfigError.field("PromptConfig", "max_passage_tokens", self.max_passage_tokens, "an integer >= 1")
        if not is_int(self.seed):
            raise ConfigError.field("PromptConfig", "seed", self.seed, "an integer")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise ConfigError.field("PromptConfig", "system_prompt", self.system_prompt, "a string or None")


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt: the text, its tokens, the gold answer's tokens, and what it showed."""

    example_id: str
    view: str
    text: str  # the exact prompt string (chat template applied, generation prompt added)
    token_ids: tuple[int, ...]  # tokens of text, exactly what the model sees
    answer_ids: tuple[int, ...]  # tokens of the first gold alias as a continuation of the prompt
    passages: tuple[Passage, ...]  # the passages shown, in order
    truncated: bool  # some passage was cut to max_passage_tokens
    question: str = ""  # the question as shown (stripped); "" for prompts built by hand

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _select_passages(example: RagExample, view: str, config: PromptConfig) -> tuple[Passage, ...]:
    if view == "closed_book":
        return ()
    if not example.passages:
        raise DataError(
            f"example {example.id} has no passages; the {view} view needs some. Use the closed_book "
            "view, or give the examples passages (add_distractors adds irrelevant ones)."
        )
    relevant, irrelevant = example.relevant_passages, example.irrelevant_passages
    if view == "relevant":
        if not relevant:
            raise DataError(
                f"example {example.id} has no relevant passage; the relevant view needs one. Skip the "
                f"example (its passages were flagged by the rule {example.relevance_rule!r})."
            )
        return relevant
    if view == "irrelevant":
        if config.n_distractors == 0:
            raise ConfigError.field(
                "PromptConfig", "n_distractors", 0, "an integer >= 1 for the irrelevant view (it shows no passage)"
            )
        if not irrelevant:
            raise DataError(
                f"example {example.id} has no irrelevant passage; the irrelevant view needs one. Use "
                "add_distractors to give it some."
            )
        return irrelevant[: config.n_distractors]
    # noisy
    if not relevant:
        raise DataError(
            f"example {example.id} has no relevant passage; the noisy view needs one among the distractors."
        )
    distractors = list(irrelevant[: config.n_distractors])
    if config.n_distractors > 0 and not distractors:
        log.warning(
            "example %s has no irrelevant passage: its noisy view shows the relevant passage alone "
            "(use add_distractors to give it some)", example.id,
        )
    if config.relevant_position is None:
        position = random.Random(f"{config.seed}:{example.id}").randint(0, len(distractors))
    else:
        position = min(config.relevant_position, len(distractors))
    distractors.insert(position, relevant[0])
    return tuple(distractors)


def _truncate(passages: tuple[Passage, ...], limit: int, tokenizer: Any, example_id: str) -> tuple[tuple[Passage, ...], bool]:
    out, truncated = [], False
    for i, passage in enumerate(passages):
        ids = tokenizer(passage.text, add_special_tokens=False).input_ids
        if len(ids) > limit:
            log.warning(
                "example %s: passage %d has %d tokens, cut to PromptConfig.max_passage_tokens = %d",
                example_id, i + 1, len(ids), limit,
            )
            passage = Passage(text=tokenizer.decode(ids[:limit]).strip(), title=passage.title, relevant=passage.relevant)
            truncated = True
        out.append(passage)
    return tuple(out), truncated


def _passage_line(i: int, p: Passage) -> str:
    return f"Passage {i} ({p.title}): {p.text}" if p.title else f"Passage {i}: {p.text}"


def _user_message(example: RagExample, passages: tuple[Passage, ...], config: PromptConfig) -> str:
    if not passages:
        return f"{config.closed_book_instruction}\n\nQuestion: {example.question.strip()}"
    lines = [_passage_line(i, p) for i, p in enumerate(passages, start=1)]
    return f"{config.instruction}\n\n" + "\n\n".join(lines) + f"\n\nQuestion: {example.question.strip()}"


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(user: str, config: PromptConfig, tokenizer: Any) -> str:
    """The prompt text: the chat template with a generation prompt, else a plain "Answer:" format."""
    if has_chat_template(tokenizer):
        messages = [{"role": "user", "content": user}]
        if config.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    system = f"{config.system_prompt}\n\n" if config.system_prompt else ""
    return f"{system}{user}\nAnswer:"


def build_prompt(
    example: RagExample, view: str, config: PromptConfig, tokenizer: Any, *, max_tokens: int | None = None
) -> Prompt:
    """The prompt of one example under one view (see VIEWS), tokenized as the model sees it.

    max_tokens: refuse (DataError) a prompt whose tokens plus answer tokens exceed it, e.g. the
    model's context length.
    """
    if view not in VIEWS:
        raise ConfigError(f"view {view!r} is not allowed; expected one of {list(VIEWS)}.")
    passages = _select_passages(example, view, config)
    return build_prompt_from_passages(example, passages, view, config, tokenizer, max_tokens=max_tokens)


def build_prompt_from_passages(
    example: RagExample, passages: Sequence[Passage], view: str, config: PromptConfig, tokenizer: Any, *,
    max_tokens: int | None = None,
) -> Prompt:
    """The prompt showing exactly `passages`, in order, under the template of build_prompt.

    For variants of a view (e.g. the noisy view with one passage left out); no passage shows the
    closed-book instruction. `view` is recorded only. max_tokens as in build_prompt.
    """
    passages, truncated = _truncate(tuple(passages), config.max_passage_tokens, tokenizer, example.id)
    text = render(_user_message(example, passages, config), config, tokenizer)
    token_ids = tuple(tokenizer(text, add_special_tokens=False).input_ids)
    answer = example.answers[0].strip()
    if not has_chat_template(tokenizer):
        answer = " " + answer  # continues "Answer:" as a separate word
    answer_ids = tuple(tokenizer(answer, add_special_tokens=False).input_ids)
    if not answer_ids:
        raise DataError(f"example {example.id}: answer {example.answers[0]!r} tokenizes to nothing.")
    if max_tokens is not None and len(token_ids) + len(answer_ids) > max_tokens:
        raise DataError(
            f"example {example.id}: the {view} prompt is {len(token_ids)} tokens (+{len(answer_ids)} answer "
            f"tokens), over the limit of {max_tokens}. Fix: fewer distractors (PromptConfig.n_distractors = "
            f"{config.n_distractors}) or a smaller PromptConfig.max_passage_tokens (= {config.max_passage_tokens})."
        )
    return Prompt(
        example_id=example.id, view=view, text=text, token_ids=token_ids, answer_ids=answer_ids,
        passages=passages, truncated=truncated, question=example.question.strip(),
    )


@dataclass(frozen=True)
class PromptSpans:
    """Token spans [start, end) of a prompt's parts (indices into Prompt.token_ids)."""

    passages: tuple[tuple[int, int], ...]  # one per Prompt.passages: its whole line "Passage i (title): text"
    question: tuple[int, int] | None  # the line "Question: ...", None when the prompt records no question


def passage_spans(prompt: Prompt, tokenizer: Any) -> PromptSpans:
    """Where each passage and the question sit in the prompt's tokens.

    A token belongs to a part when its characters overlap the part's line (a token straddling two
    parts goes to the first); spans never overlap. Needs a fast tokenizer (character offsets).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"passage_spans needs a fast tokenizer (character offsets); got {type(tokenizer).__name__}.")
    encoded = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    if tuple(encoded.input_ids) != prompt.token_ids:
        raise DataError(
            f"example {prompt.example_id}: the prompt's tokens are not this tokenizer's tokens of its text; "
            "was the prompt built with another tokenizer?"
        )
    offsets = [tuple(o) for o in encoded["offset_mapping"]]
    chars: list[tuple[int, int]] = []
    at = 0
    for i, passage in enumerate(prompt.passages, start=1):
        line = _passage_line(i, passage)
        start = prompt.text.find(line, at)
        if start < 0:
            raise DataError(f"example {prompt.example_id}: passage {i} is not in the prompt text.")
        chars.append((start, start + len(line)))
        at = start + len(line)
    question = None
    if prompt.question:
        line = f"Question: {prompt.question}"
        start = prompt.text.rfind(line, at)
        if start < 0:
            raise DataError(f"example {prompt.example_id}: the question is not in the prompt text.")
        question = (start, start + len(line))
    spans: list[tuple[int, int]] = []
    for lo, hi in chars + ([question] if question else []):
        first = next((t for t, (s, e) in enumerate(offsets) if e > lo and e > s), len(offsets))
        end = next((t for t, (s, e) in enumerate(offsets) if s >= hi), len(offsets))
        first = max(first, spans[-1][1] if spans else 0)
        spans.append((first, max(first, end)))
    return PromptSpans(passages=tuple(spans[: len(chars)]), question=spans[-1] if question else None)


def _draw_order(size: int, n: int, seed: int, example_id: str) -> Iterator[int]:
    """Pool indices in a random order seeded by seed and the example id: a small sample first, then the rest."""
    rng = random.Random(f"{seed}:{example_id}")
    first = rng.sample(range(size), min(size, 4 * n + 16))  # usually enough, without shuffling the pool
    yield from first
    rest = sorted(set(range(size)) - set(first))
    rng.shuffle(rest)
    yield from rest


def add_distractors(
    examples: Sequence[RagExample], n: int, *, seed: int = 0, hard: bool = False
) -> list[RagExample]:
    """Give each example n irrelevant passages taken from the other examples' passages.

    Never a passage whose title or text contains one of this example's answer aliases, nor one
    the example already has. hard=True takes the passages BM25 ranks highest for the question
    (one index over all passages), else a random draw seeded by seed and the example id. The
    examples' own passages are kept first; the added ones are flagged irrelevant.
    """
    if not is_int(n) or n < 0:
        raise ConfigError.field("add_distractors", "n", n, "an integer >= 0")
    examples = list(examples)
    if n == 0:
        return examples
    pool: list[Passage] = []  # distinct passages (by title and text) with their owners
    owners: list[set[int]] = []
    where: dict[tuple[str, str], int] = {}
    for i, example in enumerate(examples):
        for p in example.passages:
            key = (p.title, p.text)
            if key not in where:
                where[key] = len(pool)
                pool.append(Passage(text=p.text, title=p.title, relevant=False))
                owners.append(set())
            owners[where[key]].add(i)
    normalized = [normalize_answer(f"{p.title} {p.text}") for p in pool]
    from neurorit.retrieval import build_index  # imported on use: it loads torch

    index = build_index(pool) if hard else None

    out = []
    for i, example in enumerate(examples):
        aliases = [a for a in (normalize_answer(x) for x in example.answers) if a]

        def usable(j: int) -> bool:
            return i not in owners[j] and not any(a in normalized[j] for a in aliases)

        candidates = index.rank(example.question) if index is not None else _draw_order(len(pool), n, seed, example.id)
        chosen: list[int] = []
        for j in candidates:
            if usable(j):
                chosen.append(j)
                if len(chosen) == n:
                    break
        if len(chosen) < n:
            log.warning("example %s: only %d of %d distractors available", example.id, len(chosen), n)
        out.append(example.with_passages(example.passages + tuple(pool[j] for j in chosen)))
    return out
