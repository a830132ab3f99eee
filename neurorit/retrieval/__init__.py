"""Retrieval: corpora, retrievers (BM25, dense, SPLADE, hybrid), their cached indexes, and noise.

Owns nothing itself: it re-exports the public names of its modules so that callers write
`from neurorit.retrieval import ...`. The output of this package is ordinary `RagExample`s, so
nothing downstream (prompts, mining, evaluation, training) needs to know how passages were chosen.
Modules: corpus (readers), base (interface, ranking), bm25, dense, splade, hybrid (one per
retriever), encoders (local weights), index (configs by name, the cached index), noise, recall.
Must not: import streamlit or tqdm, or download anything.
"""

from neurorit.retrieval.base import Hit, Retriever, top_k
from neurorit.retrieval.bm25 import (
    BM25Config,
    BM25Retriever,
    PassageIndex,
    build_index,
    rank_passages,
    tokenize_for_bm25,
)
from neurorit.retrieval.corpus import (
    Corpus,
    combine_corpora,
    corpus_from_examples,
    corpus_from_passages,
    load_corpus,
    load_corpus_file,
    load_dataset_corpus,
    save_corpus_file,
    wiki_summaries_corpus,
)
from neurorit.retrieval.dense import DenseConfig, DenseRetriever, embed_texts, mean_pool
from neurorit.retrieval.encoders import TextEncoder, bundled_model_dir, load_text_encoder
from neurorit.retrieval.hybrid import HybridConfig, HybridRetriever, rrf_fuse
from neurorit.retrieval.index import (
    RETRIEVERS,
    build_retriever,
    config_from_dict,
    config_to_dict,
    index_info,
    retriever_config,
)
from neurorit.retrieval.noise import (
    NOISE_KINDS,
    POSITIONS,
    counterfactual_passages,
    make_noisy_examples,
    mentions_answer,
    noise_function,
    place_relevant,
    with_retrieved,
)
from neurorit.retrieval.recall import RecallReport, is_hit, recall_at_k
from neurorit.retrieval.splade import SpladeConfig, SpladeRetriever, encode_sparse, splade_weights, top_terms

__all__ = [
    "BM25Config", "BM25Retriever", "Corpus", "DenseConfig", "DenseRetriever", "Hit", "HybridConfig",
    "HybridRetriever", "NOISE_KINDS", "POSITIONS", "PassageIndex", "RETRIEVERS", "RecallReport", "Retriever",
    "SpladeConfig", "SpladeRetriever", "TextEncoder", "build_index", "build_retriever", "bundled_model_dir",
    "combine_corpora", "config_from_dict", "config_to_dict", "corpus_from_examples", "corpus_from_passages",
    "counterfactual_passages", "embed_texts", "encode_sparse", "index_info", "is_hit", "load_corpus",
    "load_corpus_file", "load_dataset_corpus", "load_text_encoder", "make_noisy_examples", "mean_pool",
    "mentions_answer", "noise_function", "place_relevant", "rank_passages", "recall_at_k", "retriever_config", "rrf_fuse",
    "save_corpus_file", "splade_weights", "tokenize_for_bm25", "top_k", "top_terms", "wiki_summaries_corpus", "with_retrieved",
]
