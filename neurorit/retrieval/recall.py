"""Retrieval quality: recall@k of a retriever on QA examples (gold passage or an answer in the top k).

Owns: `RecallReport` and `recall_at_k`. A retrieved passage is a hit for an example when it is one
of the example's relevant (gold) passages (same title and text) or its text contains a
normalized gold alias (DPR's "has answer" convention, text only). Must not: build indexes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from neurorit.data import RagExample
from neurorit.errors import ConfigError
from neurorit.metrics import contains_answer
from neurorit.retrieval.base import Retriever
from neurorit.retrieval.corpus import Corpus
from neurorit.types import ProgressFn, no_progress


@dataclass(frozen=True)
class RecallReport:
    """recall[i] = share of questions with a hit in the top ks[i]; first_hit[q] = 1-based rank or None."""

    retriever: str
    corpus: dict[str, Any]
    ks: tuple[int, ...]
    recall: tuple[float, ...]
    first_hit: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"retriever": self.retriever, "corpus": self.corpus, "n_questions": len(self.first_hit),
                "recall": {f"@{k}": r for k, r in zip(self.ks, self.recall)}}


def is_hit(corpus: Corpus, index: int, example: RagExample) -> bool:
    """Passage `index` is a gold passage of the example, or its text contains a gold alias."""
    title, text = corpus.titles[index], corpus.texts[index]
    return any(p.text == text and p.title in ("", title) for p in example.relevant_passages) or contains_answer(
        text, example.answers)


def recall_at_k(
    examples: Sequence[RagExample],
    corpus: Corpus,
    retriever: Retriever,
    ks: Sequence[int] = (1, 5, 10, 20),
    *,
    batch_size: int = 64,
    on_progress: ProgressFn = no_progress,
) -> RecallReport:
    """Recall@k for each k: the share of examples with a hit among the retriever's top k passages."""
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError.field("recall_at_k", "ks", ks, "one or more integers >= 1")
    if retriever.corpus_fingerprint != corpus.fingerprint:
        raise ConfigError(f"recall_at_k: the retriever indexes another corpus than {corpus.name}; build it over this one.")
    depth = max(ks)
    first_hit: list[int | None] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        for example, hits in zip(batch, retriever.search([e.question for e in batch], depth)):
            rank = next((r for r, (j, _) in enumerate(hits, start=1) if is_hit(corpus, j, example)), None)
            first_hit.append(rank)
        on_progress(min(start + batch_size, len(examples)), len(examples), f"recall: {retriever.name}")
    n = max(len(first_hit), 1)
    recall = tuple(sum(1 for r in first_hit if r is not None and r <= k) / n for k in ks)
    return RecallReport(retriever=retriever.name, corpus=corpus.describe(), ks=ks, recall=recall,
                        first_hit=tuple(first_hit))
