"""Answer normalization and the string metrics of QA: accuracy (contains), exact match, token F1.

Owns: `normalize_answer` (SQuAD style: lower case, no punctuation, no articles a/an/the, single
spaces) and the three per-prediction metrics METHOD.md names. Every metric takes gold aliases and
scores the best one; an alias that normalizes to the empty string never matches. Must not: run
models, read datasets, or aggregate over examples (see evaluation).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, drop punctuation, drop articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _aliases(answers: Sequence[str] | str) -> list[str]:
    """Normalized, non-empty aliases; a bare string counts as one alias (not its characters)."""
    if isinstance(answers, str):
        answers = [answers]
    normalized = (normalize_answer(a) for a in answers)
    return [a for a in normalized if a]


def contains_answer(prediction: str, answers: Sequence[str] | str) -> bool:
    """True when some normalized alias is a substring of the normalized prediction (METHOD.md accuracy)."""
    text = normalize_answer(prediction)
    return any(alias in text for alias in _aliases(answers))


def exact_match(prediction: str, answers: Sequence[str] | str) -> bool:
    """True when the normalized prediction equals some normalized alias."""
    text = normalize_answer(prediction)
    return bool(text) and text in _aliases(answers)


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    n_same = sum(common.values())
    if n_same == 0:
        return 0.0
    precision = n_same / len(prediction_tokens)
    recall = n_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, answers: Sequence[str] | str) -> float:
    """SQuAD token F1 between the normalized prediction and its best alias; 0.0 when nothing overlaps."""
    prediction_tokens = normalize_answer(prediction).split()
    if not prediction_tokens:
        return 0.0
    return max((_f1(prediction_tokens, alias.split()) for alias in _aliases(answers)), default=0.0)
