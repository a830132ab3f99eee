"""Lexical retrieval over passages with BM25 (the `bm25s` package), for picking hard distractors.

Owns: `PassageIndex` (a BM25 index over one list of passages, title and text), scoring a query
against every passage, and ranking best first with ties broken by passage order, so a ranking is
deterministic. Must not: decide which passages are relevant or build examples (see prompts.py
`add_distractors`), or show progress bars.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import bm25s
import numpy as np

from neurorit.data import Passage
from neurorit.errors import ConfigError

log = logging.getLogger(__name__)


def tokenize_for_bm25(texts: Sequence[str]) -> list[list[str]]:
    """Lower-cased word tokens of each text, English stop words removed (bm25s' tokenizer)."""
    if not texts:
        return []
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


def _passage_text(passage: Passage) -> str:
    return f"{passage.title} {passage.text}" if passage.title else passage.text


@dataclass(frozen=True, eq=False)
class PassageIndex:
    """A BM25 index over `size` passages; `scores(query)[i]` is passage i's score."""

    retriever: Any  # bm25s.BM25, built once by build_index
    size: int

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for the query, shape [size]; all zero when nothing matches."""
        tokens = tokenize_for_bm25([query])[0]
        if self.size == 0 or not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores(tokens), dtype=np.float32)

    def rank(self, query: str, k: int | None = None) -> list[int]:
        """Passage indices, best first (ties in passage order); the first k, or all when k is None."""
        if k is not None and k < 0:
            raise ConfigError(f"rank: k = {k} is not allowed; expected an integer >= 0 or None.")
        order = np.argsort(-self.scores(query), kind="stable")
        ranked = [int(i) for i in order]
        return ranked if k is None else ranked[:k]


def build_index(passages: Sequence[Passage]) -> PassageIndex:
    """Index the passages (title and text) with BM25 (bm25s defaults: Lucene scoring, k1 1.5, b 0.75)."""
    retriever = bm25s.BM25()
    if passages:
        corpus = tokenize_for_bm25([_passage_text(p) for p in passages])
        retriever.index(corpus, show_progress=False)
    log.debug("built a BM25 index over %d passages", len(passages))
    return PassageIndex(retriever=retriever, size=len(passages))


def rank_passages(query: str, passages: Sequence[Passage], k: int) -> list[int]:
    """Indices of the k passages BM25 ranks highest for the query, best first (fewer if fewer exist)."""
    if k < 0:
        raise ConfigError(f"rank_passages: k = {k} is not allowed; expected an integer >= 0.")
    return build_index(passages).rank(query, k)
