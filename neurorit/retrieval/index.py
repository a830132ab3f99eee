"""The cached on-disk index of a retriever over a corpus, and retriever configs by name.

Owns: `retriever_config` (names "bm25", "dense", "splade", "hybrid" = bm25+dense, or any
"a+b[+c]" fusion), configs to and from dicts, and `build_retriever`: one index per (corpus
fingerprint, retriever settings, model fingerprint) under `cache/retrieval/<kind>-<key>/`,
written atomically, reloaded for free next time (the query encoder is still loaded). Must not:
score or rank itself (see the retriever modules), or decide relevance (see noise.py).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from neurorit.configs import stable_hash
from neurorit.errors import ArtifactError, ConfigError, DataError
from neurorit.retrieval.base import Retriever
from neurorit.retrieval.bm25 import BM25Config, build_bm25, load_bm25, save_bm25
from neurorit.retrieval.corpus import Corpus
from neurorit.retrieval.dense import DenseConfig, DenseRetriever, build_dense
from neurorit.retrieval.encoders import TextEncoder, load_text_encoder
from neurorit.retrieval.hybrid import HybridConfig, HybridRetriever
from neurorit.retrieval.splade import SpladeConfig, SpladeRetriever, build_splade
from neurorit.store import load_cached, read_json, read_tensors, save_cached, write_json, write_tensors
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "dense", "splade", "hybrid")
RetrieverConfig = Union[BM25Config, DenseConfig, SpladeConfig, HybridConfig]
_SINGLE = {"bm25": BM25Config, "dense": DenseConfig, "splade": SpladeConfig}
CACHE_KIND = "retrieval"
MARKER = "index.json"


def retriever_config(
    name: str,
    *,
    dense_model: str | None = None,
    splade_model: str | None = None,
    rrf_k: int = 60,
    depth: int = 100,
) -> RetrieverConfig:
    """The config of a retriever by name: bm25, dense, splade, hybrid (= bm25+dense) or e.g. "bm25+splade"."""
    if not isinstance(name, str) or not name:
        raise ConfigError.field("retriever_config", "name", name, f"one of {list(RETRIEVERS)} or a fusion like bm25+dense")
    models = {"dense": dense_model, "splade": splade_model}

    def single(part: str) -> Any:
        if part not in _SINGLE:
            raise ConfigError.field("retriever_config", "name", name,
                                    f"one of {list(RETRIEVERS)} or a fusion of {sorted(_SINGLE)} joined by '+'")
        return _SINGLE[part](model_path=models[part]) if part in models else _SINGLE[part]()

    parts = ["bm25", "dense"] if name == "hybrid" else name.split("+")
    if len(parts) == 1:
        return single(parts[0])
    if len(set(parts)) != len(parts):
        raise ConfigError.field("retriever_config", "name", name, "each retriever at most once in a fusion")
    return HybridConfig(parts=tuple(single(p) for p in parts), rrf_k=rrf_k, depth=depth)


def config_to_dict(config: RetrieverConfig) -> dict[str, Any]:
    """{"kind": ..., fields...}; a hybrid's parts as a list of such dicts."""
    if isinstance(config, HybridConfig):
        return {"kind": "hybrid", "parts": [config_to_dict(p) for p in config.parts], "rrf_k": config.rrf_k,
                "depth": config.depth}
    fields = {k: getattr(config, k) for k in config.__dataclass_fields__}
    return {"kind": config.kind, **fields}


def config_from_dict(data: dict[str, Any]) -> RetrieverConfig:
    if not isinstance(data, dict) or data.get("kind") not in RETRIEVERS:
        raise ConfigError(f"a retriever config must be a mapping with kind in {list(RETRIEVERS)}, got {data!r}.")
    fields = {k: v for k, v in data.items() if k != "kind"}
    if data["kind"] == "hybrid":
        fields["parts"] = tuple(config_from_dict(p) for p in fields.get("parts", ()))
        cls: type = HybridConfig
    else:
        cls = _SINGLE[data["kind"]]
    unknown = sorted(set(fields) - set(cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(cls.__dataclass_fields__)}.")
    return cls(**fields)


@functools.lru_cache(maxsize=4)
def _encoder(kind: str, model_path: str | None, device: str) -> TextEncoder:
    return load_text_encoder(kind, model_path, device=device)


def index_key(corpus: Corpus, config: RetrieverConfig, model_fingerprint: str | None) -> str:
    """The cache key of one index: corpus content, the retriever's settings, the model's weights."""
    return f"{config.kind}-{stable_hash(corpus.fingerprint, config.settings(), model_fingerprint)}"


def build_retriever(
    corpus: Corpus,
    config: RetrieverConfig | str,
    *,
    device: str = "cpu",
    on_progress: ProgressFn = no_progress,
    use_cache: bool = True,
    encoder: TextEncoder | None = None,
) -> Retriever:
    """A retriever over the corpus: its cached index when there is one, else built (and cached).

    `encoder` replaces the dense/SPLADE model named by the config (tests inject one); for a
    hybrid, each part loads its own. `use_cache=False` always builds (and still writes the cache).
    """
    if isinstance(config, str):
        config = retriever_config(config)
    if len(corpus) == 0:
        raise DataError(f"corpus {corpus.name} holds no passages; nothing to index.")
    if isinstance(config, HybridConfig):
        parts = tuple(
            build_retriever(corpus, p, device=device, on_progress=on_progress, use_cache=use_cache) for p in config.parts
        )
        return HybridRetriever(parts=parts, config=config)
    if not isinstance(config, (BM25Config, DenseConfig, SpladeConfig)):
        raise ConfigError.field("build_retriever", "config", config, f"a retriever config or one of {list(RETRIEVERS)}")
    if encoder is None and config.kind != "bm25":
        encoder = _encoder(config.kind, config.model_path, device)
    key = index_key(corpus, config, encoder.fingerprint if encoder is not None else None)
    if use_cache:
        cached = load_cached(CACHE_KIND, key, MARKER, lambda folder: _load(folder, corpus, config, encoder))
        if cached is not None:
            log.info("reloaded the %s index of %s from the cache (%s)", config.kind, corpus.name, key)
            return cached
    start = time.perf_counter()
    documents = corpus.documents()
    if isinstance(config, BM25Config):
        retriever: Any = build_bm25(documents, corpus.fingerprint, config, on_progress)
    elif isinstance(config, DenseConfig):
        retriever = build_dense(documents, corpus.fingerprint, config, encoder, on_progress)  # type: ignore[arg-type]
    else:
        retriever = build_splade(documents, corpus.fingerprint, config, encoder, on_progress)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    meta = {"kind": config.kind, "config": config_to_dict(config), "settings": retriever.settings(),
            "corpus": corpus.describe(), "build_seconds": round(seconds, 3)}
    save_cached(CACHE_KIND, key, lambda folder: _save(folder, retriever, meta))
    log.info("built the %s index of %s in %.1f s (%s)", config.kind, corpus.name, seconds, key)
    return retriever


def index_info(corpus: Corpus, config: RetrieverConfig, encoder: TextEncoder | None = None) -> dict[str, Any] | None:
    """The metadata of the cached index (build_seconds, corpus, settings), or None when not built."""
    if encoder is None and config.kind in ("dense", "splade"):
        encoder = _encoder(config.kind, config.model_path, "cpu")  # type: ignore[union-attr]
    key = index_key(corpus, config, encoder.fingerprint if encoder is not None else None)
    return load_cached(CACHE_KIND, key, MARKER, lambda folder: read_json(folder / MARKER))


def _save(folder: Path, retriever: Any, meta: dict[str, Any]) -> None:
    if isinstance(retriever, DenseRetriever):
        write_tensors(folder / "embeddings.safetensors", {"embeddings": torch.from_numpy(retriever.embeddings)})
    elif isinstance(retriever, SpladeRetriever):
        write_tensors(folder / "weights.safetensors", {
            "indptr": torch.from_numpy(retriever.indptr), "indices": torch.from_numpy(retriever.indices),
            "values": torch.from_numpy(retriever.values)})
    else:
        save_bm25(retriever, folder)
    write_json(folder / MARKER, meta)  # the marker goes last


def _load(folder: Path, corpus: Corpus, config: Any, encoder: TextEncoder | None) -> Any:
    meta = read_json(folder / MARKER)
    if meta.get("corpus", {}).get("fingerprint") != corpus.fingerprint or meta["corpus"].get("size") != len(corpus):
        raise ArtifactError(f"{folder}: index of another corpus ({meta.get('corpus')}); it will be rebuilt.")
    if isinstance(config, BM25Config):
        return load_bm25(folder, len(corpus), config, corpus.fingerprint)
    if isinstance(config, DenseConfig):
        embeddings = read_tensors(folder / "embeddings.safetensors")["embeddings"].numpy()
        if embeddings.shape[0] != len(corpus):
            raise ArtifactError(f"{folder}: {embeddings.shape[0]} embeddings for {len(corpus)} passages; it will be rebuilt.")
        return DenseRetriever(embeddings=np.ascontiguousarray(embeddings), encoder=encoder, config=config,
                              corpus_fingerprint=corpus.fingerprint)
    tensors = read_tensors(folder / "weights.safetensors")
    if tensors["indptr"].shape[0] != len(corpus) + 1:
        raise ArtifactError(f"{folder}: SPLADE weights for another number of passages; it will be rebuilt.")
    return SpladeRetriever(indptr=tensors["indptr"].numpy(), indices=tensors["indices"].numpy(),
                           values=tensors["values"].numpy(), encoder=encoder, config=config,
                           corpus_fingerprint=corpus.fingerprint)
