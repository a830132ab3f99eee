import math

import numpy as np
import pytest

from neurorit.data import Passage
from neurorit.errors import ConfigError
from neurorit.retrieval import build_index, rank_passages
from scale import assert_close_in_scale

CORPUS = [
    Passage("Berlin is the capital of Germany.", title="Berlin"),
    Passage("Paris is the capital and largest city of France.", title="Paris"),
    Passage("The Seine flows through Paris.", title="Seine"),
    Passage("Penguins are flightless seabirds.", title="Penguin"),
]


def test_rank_puts_the_matching_passage_first():
    assert rank_passages("capital of France", CORPUS, k=2)[0] == 1
    assert rank_passages("flightless birds penguins", CORPUS, k=1) == [3]


def test_rank_lengths_and_ties():
    assert sorted(rank_passages("Paris", CORPUS, k=10)) == [0, 1, 2, 3]  # k beyond the corpus: all of it
    assert rank_passages("zebra", CORPUS, k=4) == [0, 1, 2, 3]  # all scores tie: passage order
    assert rank_passages("the of and", CORPUS, k=2) == [0, 1]  # stop words only: no tokens, no crash
    assert rank_passages("Paris", [], k=3) == []
    with pytest.raises(ConfigError, match="k"):
        rank_passages("Paris", CORPUS, k=-1)


def test_scores_match_hand_computed_lucene_bm25():
    """Oracle: Lucene BM25 by hand (k1 = 1.5, b = 0.75; Lucene drops the constant (k1 + 1) factor)."""
    docs = [Passage("apple banana apple"), Passage("banana cherry"), Passage("cherry durian elderberry fig")]
    tokens = [d.text.split() for d in docs]
    n, avgdl, k1, b = len(docs), sum(map(len, tokens)) / len(docs), 1.5, 0.75

    def bm25(query: list[str], doc: list[str]) -> float:
        total = 0.0
        for term in query:
            df = sum(term in t for t in tokens)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = doc.count(term)
            total += idf * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        return total

    index = build_index(docs)
    query = "apple cherry"
    expected = np.array([bm25(query.split(), t) for t in tokens], dtype=np.float32)
    assert_close_in_scale(index.scores(query), expected, rel=1e-4)
    assert index.rank(query) == [int(i) for i in np.argsort(-expected, kind="stable")]
