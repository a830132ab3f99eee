"""Lexical retrieval with BM25 (the `bm25s` package): over a list of passages, and over a corpus.

Owns: `PassageIndex` (a BM25 index over one list of passages, title and text, for picking hard
distractors in prompts.py), `BM25Config` and `BM25Retriever` (the corpus retriever of this
package: same tokenizer, Lucene scoring by default), saving and loading the bm25s index, and
ranking best first with ties broken by passage order, so a ranking is deterministic. Must not:
decide which passages are relevant or build examples (see prompts.py `add_distractors`, noise.py),
or show progress bars.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import bm25s
import numpy as np

from neurorit.data import Passage
from neurorit.errors import ArtifactError, ConfigError
from neurorit.retrieval.base import Hit, check_k, top_k
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG on import


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


# ---------------------------------------------------------------------------------------------
# the corpus retriever

BM25_METHODS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass(frozen=True, kw_only=True)
class BM25Config:
    """BM25 settings (bm25s defaults: Lucene scoring, k1 1.5, b 0.75; English stop words, no stemming)."""

    kind: ClassVar[str] = "bm25"
    k1: float = 1.5  # bm25s / Lucene default
    b: float = 0.75  # bm25s / Lucene default
    method: str = "lucene"  # the idf and tf variant (Kamphuis et al. 2020); Lucene's is bm25s' default

    def __post_init__(self) -> None:
        if self.method not in BM25_METHODS:
            raise ConfigError.field("BM25Config", "method", self.method, f"one of {list(BM25_METHODS)}")
        for name, low, high in (("k1", 0.0, 100.0), ("b", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ConfigError.field("BM25Config", name, value, f"a number in [{low}, {high}]")

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "k1": self.k1, "b": self.b, "method": self.method, "stopwords": "en"}


@dataclass(frozen=True, eq=False)
class BM25Retriever:
    """BM25 over a corpus; `scores(query)` has one score per passage."""

    index: Any  # bm25s.BM25
    size: int
    config: BM25Config
    corpus_fingerprint: str

    @property
    def name(self) -> str:
        return "bm25"

    def settings(self) -> dict[str, Any]:
        return self.config.settings()

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 scores [n_queries, size]; a query with no known token scores 0 everywhere."""
        out = np.zeros((len(queries), self.size), dtype=np.float32)
        for i, tokens in enumerate(tokenize_for_bm25(list(queries))):
            ids = self.index.get_tokens_ids(tokens)
            if ids and self.size:
                out[i] = self.index.get_scores_from_ids(ids)
        return out

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        check_k(k)
        return top_k(self.scores(queries), k) if queries else []


def build_bm25(
    documents: Sequence[str], corpus_fingerprint: str, config: BM25Config, on_progress: ProgressFn = no_progress
) -> BM25Retriever:
    """Index the documents ("title\ntext") with BM25."""
    on_progress(0, len(documents), "bm25: tokenizing")
    index = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    if documents:
        index.index(tokenize_for_bm25(list(documents)), show_progress=False)
    on_progress(len(documents), len(documents), "bm25: indexed")
    return BM25Retriever(index=index, size=len(documents), config=config, corpus_fingerprint=corpus_fingerprint)


def save_bm25(retriever: BM25Retriever, folder: Path) -> None:
    retriever.index.save(str(folder / "bm25"), show_progress=False)


def load_bm25(folder: Path, size: int, config: BM25Config, corpus_fingerprint: str) -> BM25Retriever:
    try:
        index = bm25s.BM25.load(str(folder / "bm25"), show_progress=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ArtifactError(f"{folder}: the BM25 index cannot be read ({exc}); delete the folder to rebuild it.") from exc
    return BM25Retriever(index=index, size=size, config=config, corpus_fingerprint=corpus_fingerprint)
