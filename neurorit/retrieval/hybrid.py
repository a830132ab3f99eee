"""Hybrid retrieval by reciprocal-rank fusion (RRF) of two or more retrievers.

Owns: `HybridConfig` and `rrf_fuse`: a passage's fused score is the sum over retrievers of
1 / (rrf_k + rank), rank 1-based within that retriever's top `depth` (Cormack, Clarke and
Buettcher 2009; rrf_k = 60 is their constant); a passage outside a retriever's top `depth` gets
nothing from it. Ties go to the lower passage index. Must not: build the parts' indexes (see
index.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from neurorit.errors import ConfigError
from neurorit.retrieval.base import Hit, Retriever, check_k


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """RRF over the retrievers of `parts` (configs of bm25, dense or splade)."""

    kind: ClassVar[str] = "hybrid"
    parts: tuple[Any, ...]  # BM25Config | DenseConfig | SpladeConfig, two or more
    rrf_k: int = 60  # Cormack et al. 2009
    depth: int = 100  # how deep each part's ranking is read

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        if len(self.parts) < 2:
            raise ConfigError.field("HybridConfig", "parts", [getattr(p, "kind", p) for p in self.parts],
                                    "two or more retrievers, e.g. bm25+dense")
        if any(getattr(p, "kind", None) not in ("bm25", "dense", "splade") for p in self.parts):
            raise ConfigError.field("HybridConfig", "parts", self.parts, "configs of bm25, dense or splade")
        for name, low in (("rrf_k", 0), ("depth", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError.field("HybridConfig", name, value, f"an integer >= {low}")

    @property
    def name(self) -> str:
        return "+".join(p.kind for p in self.parts)

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "parts": [p.settings() for p in self.parts], "rrf_k": self.rrf_k, "depth": self.depth}


def rrf_fuse(rankings: Sequence[Sequence[int]], k: int, *, rrf_k: int = 60) -> list[Hit]:
    """Fuse rankings (passage indices, best first) into the k best (index, RRF score), ties by index."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, index in enumerate(ranking, start=1):
            fused[index] = fused.get(index, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]


@dataclass(frozen=True, eq=False)
class HybridRetriever:
    """RRF of part retrievers built over the same corpus."""

    parts: tuple[Retriever, ...]
    config: HybridConfig

    def __post_init__(self) -> None:
        fingerprints = {p.corpus_fingerprint for p in self.parts}
        if len(fingerprints) != 1:
            raise ConfigError(f"hybrid retriever: the parts index different corpora ({sorted(fingerprints)}); build them over one corpus.")

    @property
    def size(self) -> int:
        return self.parts[0].size

    @property
    def corpus_fingerprint(self) -> str:
        return self.parts[0].corpus_fingerprint

    @property
    def name(self) -> str:
        return f"hybrid({self.config.name})"

    def settings(self) -> dict[str, Any]:
        return {**self.config.settings(), "parts": [p.settings() for p in self.parts]}

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        check_k(k)
        depth = max(self.config.depth, k)
        per_part = [part.search(queries, depth) for part in self.parts]  # [part][query][hit]
        return [
            rrf_fuse([[i for i, _ in hits[q]] for hits in per_part], k, rrf_k=self.config.rrf_k)
            for q in range(len(queries))
        ]
