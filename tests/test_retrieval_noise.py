"""Noise kinds: reproducible from the seed, hard negatives mention no gold alias, the relevant
passage lands where asked, provenance is recorded and survives a save and load; recall@k."""

from __future__ import annotations

import json

import pytest

from neurorit.data import Passage, RagExample, load_examples, save_examples
from neurorit.errors import ConfigError
from neurorit.metrics import normalize_answer
from neurorit.retrieval import (
    Corpus,
    build_retriever,
    counterfactual_passages,
    make_noisy_examples,
    place_relevant,
    recall_at_k,
)

TEXTS = [
    ("Paris", "Paris is the capital and largest city of France."),
    ("Lyon", "Lyon is the third-largest city of France."),
    ("Marseille", "Marseille is a port city in the south of France."),
    ("France", "France is a country in Western Europe; its capital is famous for the Eiffel Tower."),
    ("Berlin", "Berlin is the capital of Germany."),
    ("Canberra", "Canberra is the capital city of Australia."),
    ("Sydney", "Sydney is the largest city in Australia."),
    ("Melbourne", "Melbourne is the capital of the state of Victoria in Australia."),
    ("Australia", "Australia is a country whose capital was chosen as a compromise."),
    ("Jupiter", "Jupiter is the largest planet in the Solar System."),
    ("Saturn", "Saturn is the second-largest planet, known for its rings."),
    ("Everest", "Mount Everest is the highest mountain above sea level."),
] + [(f"Filler {i}", f"Filler passage number {i} about nothing in particular.") for i in range(12)]
CORPUS = Corpus(name="tiny", ids=tuple(f"p{i}" for i in range(len(TEXTS))),
                titles=tuple(t for t, _ in TEXTS), texts=tuple(x for _, x in TEXTS))
EXAMPLES = [
    RagExample(id="q-paris", question="What is the capital of France?", answers=("Paris",),
               passages=(Passage(TEXTS[0][1], title="Paris", relevant=True), Passage("Old irrelevant text."))),
    RagExample(id="q-canberra", question="What is the capital city of Australia?", answers=("Canberra",),
               passages=(Passage(TEXTS[5][1], title="Canberra", relevant=True),)),
    RagExample(id="q-jupiter", question="Which is the largest planet?", answers=("Jupiter", "planet Jupiter"),
               passages=(Passage(TEXTS[9][1], title="Jupiter", relevant=True),)),
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def bm25():
    return build_retriever(CORPUS, "bm25")


def _no_alias(example: RagExample) -> bool:
    aliases = [normalize_answer(a) for a in example.answers]
    return all(not any(a in normalize_answer(f"{p.title} {p.text}") for a in aliases)
               for p in example.passages if not p.relevant)


@pytest.mark.parametrize("kind", ["hard", "random"])
def test_noise_is_reproducible_and_never_mentions_a_gold_alias(bm25, kind):
    make = lambda seed: make_noisy_examples(EXAMPLES, CORPUS, bm25, kind=kind, n_distractors=4,  # noqa: E731
                                            position="shuffled", seed=seed)
    first, again = make(0), make(0)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in again]
    for example in first:
        assert len(example.passages) == 5 and len(example.relevant_passages) == 1
        assert _no_alias(example)
        assert len({(p.title, p.text) for p in example.passages}) == 5  # no repeats
        assert "Old irrelevant text." not in [p.text for p in example.passages]  # own distractors replaced
    others = [make(seed) for seed in range(1, 6)]
    assert any([e.to_dict() for e in o] != [e.to_dict() for e in first] for o in others)  # the seed matters


def test_hard_takes_the_top_ranked_passages_without_the_answer(bm25):
    (paris,) = make_noisy_examples(EXAMPLES[:1], CORPUS, bm25, kind="hard", n_distractors=3, position="first")
    ranking = [j for j, _ in bm25.search([paris.question], len(CORPUS))[0]]
    expected = [j for j in ranking if "paris" not in normalize_answer(f"{TEXTS[j][0]} {TEXTS[j][1]}")][:3]
    assert [p.title for p in paris.passages[1:]] == [TEXTS[j][0] for j in expected]
    ranks = [s["rank"] for s in paris.provenance["passages"][1:]]
    assert ranks == sorted(ranks) and [s["id"] for s in paris.provenance["passages"][1:]] == [f"p{j}" for j in expected]
    assert paris.provenance["retriever"]["name"] == "bm25" and paris.provenance["corpus"]["fingerprint"] == CORPUS.fingerprint


@pytest.mark.parametrize(("position", "where"), [("first", 0), ("middle", 2), ("last", 4)])
def test_the_relevant_passage_goes_where_asked(bm25, position, where):
    for example in make_noisy_examples(EXAMPLES, CORPUS, bm25, kind="hard", n_distractors=4, position=position):
        assert [p.relevant for p in example.passages].index(True) == where
        assert example.provenance["relevant_at"] == [where]
        assert example.provenance["passages"][where] == {"from": "example", "relevant": True}


def test_place_relevant_orders():
    import random

    rel, dis = [Passage("R", relevant=True)], [Passage(str(i)) for i in range(3)]
    assert [p.text for p in place_relevant(rel, dis, "middle", random.Random(0))[0]] == ["0", "R", "1", "2"]
    assert [p.text for p in place_relevant(rel, dis, "last", random.Random(0))[0]] == ["0", "1", "2", "R"]
    shuffled, order = place_relevant(rel, dis, "shuffled", random.Random(3))
    assert sorted(order) == [0, 1, 2, 3] and [p.text for p in shuffled] == [(rel + dis)[o].text for o in order]
    with pytest.raises(ConfigError, match="position"):
        place_relevant(rel, dis, "center", random.Random(0))


def test_provenance_round_trips_through_the_data_file(bm25, tmp_path):
    noisy = make_noisy_examples(EXAMPLES, CORPUS, bm25, kind="hard", n_distractors=2, position="last", seed=7)
    path = tmp_path / "noisy.jsonl"
    save_examples(path, noisy)
    again = load_examples(path)
    assert again == noisy and [e.provenance for e in again] == [e.provenance for e in noisy]
    assert again[0].provenance["noise"] == "hard" and again[0].provenance["seed"] == 7
    assert "provenance" not in EXAMPLES[0].to_dict()  # plain examples keep their old form and fingerprint
    twice = make_noisy_examples(again, CORPUS, kind="random", n_distractors=1, position="first")
    assert twice[0].provenance["previous"]["noise"] == "hard"


def test_counterfactual_from_rgb_positive_wrong(tmp_path):
    record = {"id": 3, "query": "Who won the 2022 prize?", "answer": ["Alice"], "fakeanswer": "Bob",
              "positive": ["Alice won the 2022 prize."], "negative": ["The prize is old."],
              "positive_wrong": ["Bob won the 2022 prize.", "Judges gave Bob the 2022 prize.", "Alice and Bob met."]}
    path = tmp_path / "rgb_en_fact.jsonl"
    path.write_text(json.dumps(record) + "\n")
    (example,) = load_examples(path)
    wrong = counterfactual_passages(path)
    assert list(wrong) == [example.id]
    (noisy,) = make_noisy_examples([example], kind="counterfactual", n_distractors=3, position="first",
                                   counterfactuals=wrong)
    assert [p.text for p in noisy.passages] == ["Alice won the 2022 prize.", "Bob won the 2022 prize.",
                                                "Judges gave Bob the 2022 prize."]  # "Alice and Bob met." names the answer
    assert noisy.provenance["n_found"] == 2 and noisy.provenance["passages"][1] == {"from": "counterfactual", "index": 0}


def test_bad_noise_requests(bm25):
    with pytest.raises(ConfigError, match="kind"):
        make_noisy_examples(EXAMPLES, CORPUS, bm25, kind="loud")
    with pytest.raises(ConfigError, match="n_distractors"):
        make_noisy_examples(EXAMPLES, CORPUS, bm25, n_distractors=-1)
    with pytest.raises(ConfigError, match="needs a retriever"):
        make_noisy_examples(EXAMPLES, CORPUS, kind="hard")
    with pytest.raises(ConfigError, match="needs RGB"):
        make_noisy_examples(EXAMPLES, kind="counterfactual")
    other = build_retriever(Corpus(name="o", ids=("a",), titles=("",), texts=("other",)), "bm25")
    with pytest.raises(ConfigError, match="another corpus"):
        make_noisy_examples(EXAMPLES, CORPUS, other, kind="hard")


def test_recall_at_k_counts_gold_or_answer_in_top_k(bm25):
    report = recall_at_k(EXAMPLES, CORPUS, bm25, ks=(1, 3, 24))
    ranks = []
    for example in EXAMPLES:
        ranking = [j for j, _ in bm25.search([example.question], len(CORPUS))[0]]
        ranks.append(next(r for r, j in enumerate(ranking, 1)
                          if any(a.lower() in TEXTS[j][1].lower() for a in example.answers)))
    assert report.first_hit == tuple(ranks)
    assert report.recall == tuple(sum(r <= k for r in ranks) / 3 for k in (1, 3, 24))
    assert report.recall[-1] == 1.0
    with pytest.raises(ConfigError, match="ks"):
        recall_at_k(EXAMPLES, CORPUS, bm25, ks=(0,))


def test_with_retrieved_flags_by_answer_and_records_ranks(bm25):
    from neurorit.retrieval import with_retrieved

    hits = bm25.search([EXAMPLES[0].question], 3)[0]
    example = with_retrieved(EXAMPLES[0], CORPUS, hits, bm25)
    assert [p.title for p in example.passages] == [TEXTS[j][0] for j, _ in hits]
    assert [p.relevant for p in example.passages] == ["paris" in TEXTS[j][1].lower() for j, _ in hits]
    assert [s["rank"] for s in example.provenance["passages"]] == [1, 2, 3]
    assert RagExample.from_dict(example.to_dict()) == example


def test_noise_function_for_studies(tmp_path):
    from neurorit.retrieval import noise_function, save_corpus_file

    path = tmp_path / "corpus.jsonl"
    save_corpus_file(path, CORPUS)
    noise = noise_function("hard", corpus=[str(path)], position="first")
    direct = make_noisy_examples(EXAMPLES, CORPUS, build_retriever(CORPUS, "bm25"), kind="hard", n_distractors=2,
                                 position="first", seed=1)
    assert [e.passages for e in noise(EXAMPLES, 2, 1)] == [e.passages for e in direct]
    with pytest.raises(ConfigError, match="counterfactuals_from"):
        noise_function("counterfactual")
