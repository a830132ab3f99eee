"""UI side of retrieval: the corpora and retrievers the app keeps loaded, and the table of hits.

Owns: the corpus choices the Model & data page offers, one cached resource per corpus and per
(corpus, retriever) so an index is loaded once per server, and `hits_frame` (a pure view).
Must not: score, rank or flag passages itself; it calls neurorit.retrieval.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from neurorit.data import RagExample, examples_fingerprint
from neurorit.retrieval import Corpus, Retriever, build_retriever, corpus_from_examples, load_corpus, mentions_answer
from neurorit.types import ProgressFn, no_progress

CORPORA = {  # label -> load_corpus spec; "dataset" = the loaded dataset's passages
    "Wikipedia lead paragraphs (10,033)": "wiki",
    "The loaded dataset's passages": "dataset",
    "The demo set's passages": "demo",
}
RETRIEVER_CHOICES = ("bm25", "dense", "splade", "hybrid", "bm25+dense+splade")


@st.cache_resource(max_entries=4, show_spinner=False)
def _named_corpus(specs: tuple[str, ...]) -> Corpus:
    return load_corpus(list(specs))


@st.cache_resource(max_entries=4, show_spinner=False)
def _dataset_corpus(fingerprint: str, _examples: tuple[RagExample, ...], label: str) -> Corpus:
    return corpus_from_examples(_examples, name=label)


def corpus(labels: Sequence[str], examples: Sequence[RagExample], dataset_label: str) -> Corpus:
    """The corpus of the chosen labels (combined), cached per server."""
    from neurorit.retrieval import combine_corpora

    parts = []
    specs = tuple(CORPORA[label] for label in labels if CORPORA[label] != "dataset")
    if specs:
        parts.append(_named_corpus(specs))
    if any(CORPORA[label] == "dataset" for label in labels):
        parts.append(_dataset_corpus(examples_fingerprint(examples), tuple(examples), dataset_label))
    return combine_corpora(parts)


@st.cache_resource(max_entries=6, show_spinner=False)
def _retriever(fingerprint: str, name: str, _corpus: Corpus, _on_progress: ProgressFn) -> Retriever:
    return build_retriever(_corpus, name, on_progress=_on_progress)


def retriever(corpus_: Corpus, name: str, on_progress: ProgressFn = no_progress) -> Retriever:
    """The retriever over the corpus, its index read from (or written to) the on-disk cache once per server."""
    return _retriever(corpus_.fingerprint, name, corpus_, on_progress)


def hits_frame(corpus_: Corpus, hits: Sequence[tuple[int, float]], answers: Sequence[str]) -> pd.DataFrame:
    """One row per hit: rank, score, relevant (mentions a gold alias), id, title, text."""
    return pd.DataFrame(
        [{"rank": r, "score": round(s, 4),
          "relevant": mentions_answer(corpus_.titles[j], corpus_.texts[j], answers) if answers else None,
          "id": corpus_.ids[j], "title": corpus_.titles[j], "text": corpus_.texts[j]}
         for r, (j, s) in enumerate(hits, start=1)],
        columns=["rank", "score", "relevant", "id", "title", "text"],
    )
