"""What every retriever shares: the `Retriever` interface and ranking with a deterministic tie-break.

Owns: `Hit` (passage index, score), the `Retriever` protocol (`search(queries, k)` -> ranked hits
per query), `EncoderConfig` (the settings every model-encoded index has), and `top_k` over a score matrix (best first, ties broken by the lower passage index,
so rankings are identical on every run and machine). Must not: know any particular scoring rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from neurorit.errors import ConfigError

Hit = tuple[int, float]  # (passage index in the corpus, score); higher is better


@runtime_checkable
class Retriever(Protocol):
    """A search index over one corpus (`size` passages, content `corpus_fingerprint`)."""

    size: int
    corpus_fingerprint: str

    @property
    def name(self) -> str: ...

    def settings(self) -> dict[str, Any]: ...

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


@dataclass(frozen=True, kw_only=True)
class EncoderConfig:
    """Settings of an index whose passages a model encodes (dense, SPLADE); all but batch_size are
    part of the index's cache key. Subclasses set `kind` and their own defaults."""

    kind: ClassVar[str] = ""
    model_path: str | None = None  # None: the model the retriever ships with
    max_length: int = 256
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError.field(type(self).__name__, name, value, "an integer >= 1")

    def settings(self) -> dict[str, Any]:
        return {"kind": self.kind, "model_path": self.model_path, "max_length": self.max_length}


def check_k(k: Any, owner: str = "search") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ConfigError.field(owner, "k", k, "an integer >= 0 (how many passages to return)")
    return int(k)


def top_k(scores: np.ndarray, k: int) -> list[list[Hit]]:
    """The k best (index, score) per row of scores [n_queries, n_passages], best first, ties by index."""
    k = min(check_k(k), scores.shape[1])
    if k == 0 or scores.shape[0] == 0:
        return [[] for _ in range(scores.shape[0])]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [query, k]; stable: lower index first on ties
    return [[(int(j), float(row[j])) for j in idx] for row, idx in zip(scores, order)]
