"""Realistic noise: named, seeded ways to give examples retrieved distractors, and where the relevant passage goes.

Owns: the noise kinds (`hard`: the passages a retriever ranks highest for the question that
mention no gold alias; `random`: random corpus passages that mention no gold alias;
`counterfactual`: RGB's `positive_wrong` rewrites), the relevant passage's position (`first`,
`middle`, `last`, `shuffled`), and `make_noisy_examples`, which turns examples into ordinary
`RagExample`s whose `provenance` records how every passage was chosen. "Mentions a gold alias"
is the project's rule (neurorit.metrics.contains_answer on title + text, as prompts.add_distractors
uses). Every random choice is seeded by (seed, example id, purpose), so a run is reproducible and
one example's draw does not depend on the others. Must not: build indexes (see index.py) or
prompts (see prompts.py).
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from neurorit.data import Passage, RagExample
from neurorit.errors import ConfigError, DataError
from neurorit.metrics import contains_answer
from neurorit.retrieval.base import Retriever
from neurorit.data import read_json_lines
from neurorit.retrieval.corpus import Corpus

log = logging.getLogger(__name__)

NOISE_KINDS = ("hard", "random", "counterfactual")
POSITIONS = ("first", "middle", "last", "shuffled")


def mentions_answer(title: str, text: str, answers: Sequence[str]) -> bool:
    """True when the passage's title or text contains a normalized gold alias (then it is no distractor)."""
    return contains_answer(f"{title} {text}", answers)


def counterfactual_passages(path: str | Path) -> dict[str, tuple[Passage, ...]]:
    """RGB's `positive_wrong` passages (the positives rewritten to a fake answer), by example id.

    Ids are the ones `neurorit.data.load_examples` gives RGB examples: `rgb-<id>`."""
    path = Path(path)
    out: dict[str, tuple[Passage, ...]] = {}
    for index, (lineno, record) in enumerate(read_json_lines(path, "RGB file")):
        if not isinstance(record, dict):
            raise DataError(f"{path} line {lineno}: expected an RGB record (a JSON object).")
        wrong = record.get("positive_wrong") or []
        if not isinstance(wrong, list):
            raise DataError(f"{path} line {lineno}: 'positive_wrong' must be a list of passages, got {type(wrong).__name__}.")
        out[f"rgb-{record.get('id', index)}"] = tuple(Passage(text=t.strip()) for t in wrong if isinstance(t, str) and t.strip())
    return out


def place_relevant(
    relevant: Sequence[Passage], distractors: Sequence[Passage], position: str, rng: random.Random
) -> tuple[list[Passage], list[int]]:
    """The passages in context order, and for each the index it came from in relevant + distractors.

    first / last: the relevant block before / after the distractors; middle: after the first
    len(distractors) // 2 distractors; shuffled: every passage in a seeded random order."""
    if position not in POSITIONS:
        raise ConfigError.field("make_noisy_examples", "position", position, f"one of {list(POSITIONS)}")
    r = list(range(len(relevant)))
    d = [len(relevant) + i for i in range(len(distractors))]
    if position == "first":
        order = r + d
    elif position == "last":
        order = d + r
    elif position == "middle":
        half = len(d) // 2
        order = d[:half] + r + d[half:]
    else:
        order = r + d
        rng.shuffle(order)
    pool = list(relevant) + list(distractors)
    return [pool[i] for i in order], order


def _check(kind: str, n_distractors: int, position: str, seed: int) -> None:
    if kind not in NOISE_KINDS:
        raise ConfigError.field("make_noisy_examples", "kind", kind, f"one of {list(NOISE_KINDS)}")
    if isinstance(n_distractors, bool) or not isinstance(n_distractors, int) or n_distractors < 0:
        raise ConfigError.field("make_noisy_examples", "n_distractors", n_distractors, "an integer >= 0")
    if position not in POSITIONS:
        raise ConfigError.field("make_noisy_examples", "position", position, f"one of {list(POSITIONS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError.field("make_noisy_examples", "seed", seed, "an integer")


def _random_order(size: int, n: int, rng: random.Random) -> list[int]:
    """Corpus indices in a seeded random order: a small sample first (usually enough), then the rest."""
    first = rng.sample(range(size), min(size, 4 * n + 16))
    rest = sorted(set(range(size)) - set(first))
    rng.shuffle(rest)
    return first + rest


def make_noisy_examples(
    examples: Sequence[RagExample],
    corpus: Corpus | None = None,
    retriever: Retriever | None = None,
    *,
    kind: str = "hard",
    n_distractors: int = 4,
    position: str = "shuffled",
    seed: int = 0,
    counterfactuals: dict[str, tuple[Passage, ...]] | None = None,
    n_relevant: int | None = 1,
    depth: int = 100,
) -> list[RagExample]:
    """Examples whose context is their relevant passage(s) plus n_distractors of the given kind, placed.

    hard needs `corpus` and a `retriever` built over it; random needs `corpus`; counterfactual
    needs `counterfactuals` (see counterfactual_passages). `n_relevant` keeps the first relevant
    passages (None: all). Distractors never mention a gold alias nor repeat a kept passage; where
    fewer qualify, the example gets fewer (logged, and recorded in its provenance).
    """
    _check(kind, n_distractors, position, seed)
    if kind in ("hard", "random") and corpus is None:
        raise ConfigError(f"noise kind {kind!r} needs a corpus to draw distractors from; pass corpus=.")
    if kind == "hard":
        if retriever is None:
            raise ConfigError("noise kind 'hard' needs a retriever built over the corpus; pass retriever=.")
        if retriever.corpus_fingerprint != corpus.fingerprint:  # type: ignore[union-attr]
            raise ConfigError(
                f"the retriever indexes another corpus (fingerprint {retriever.corpus_fingerprint}, corpus "
                f"{corpus.name} has {corpus.fingerprint}); build the retriever over this corpus."  # type: ignore[union-attr]
            )
    if kind == "counterfactual" and counterfactuals is None:
        raise ConfigError("noise kind 'counterfactual' needs RGB's positive_wrong passages; pass "
                          "counterfactuals=counterfactual_passages(rgb_file).")
    examples = list(examples)
    ranked: list[list[tuple[int, float]]] = []
    if kind == "hard" and n_distractors and examples:
        ranked = retriever.search([e.question for e in examples], max(depth, 4 * n_distractors))  # type: ignore[union-attr]

    out = []
    short = 0
    for i, example in enumerate(examples):
        relevant = list(example.relevant_passages)
        relevant = relevant if n_relevant is None else relevant[:n_relevant]
        kept = {(p.title, p.text) for p in relevant} | {("", p.text) for p in relevant}
        chosen: list[Passage] = []
        origins: list[dict[str, Any]] = []

        def usable(title: str, text: str) -> bool:
            return (title, text) not in kept and ("", text) not in kept and not mentions_answer(title, text, example.answers)

        def take(title: str, text: str, origin: dict[str, Any]) -> None:
            kept.add((title, text))
            chosen.append(Passage(text=text, title=title, relevant=False))
            origins.append(origin)

        if kind == "hard":
            hits = ranked[i] if n_distractors else []
            if len([1 for j, _ in hits if usable(corpus.titles[j], corpus.texts[j])]) < n_distractors:  # type: ignore[union-attr]
                hits = retriever.search([example.question], len(corpus))[0]  # type: ignore[union-attr, arg-type]
            for rank, (j, score) in enumerate(hits, start=1):
                if len(chosen) == n_distractors:
                    break
                if usable(corpus.titles[j], corpus.texts[j]):  # type: ignore[union-attr]
                    take(corpus.titles[j], corpus.texts[j], {"from": "corpus", "id": corpus.ids[j], "rank": rank,  # type: ignore[union-attr]
                                                             "score": round(float(score), 6)})
        elif kind == "random":
            rng = random.Random(f"{seed}:{example.id}:random")
            for j in _random_order(len(corpus), n_distractors, rng) if n_distractors else []:  # type: ignore[arg-type]
                if len(chosen) == n_distractors:
                    break
                if usable(corpus.titles[j], corpus.texts[j]):  # type: ignore[union-attr]
                    take(corpus.titles[j], corpus.texts[j], {"from": "corpus", "id": corpus.ids[j]})  # type: ignore[union-attr]
        else:
            for j, p in enumerate(counterfactuals.get(example.id, ())):  # type: ignore[union-attr]
                if len(chosen) == n_distractors:
                    break
                if usable(p.title, p.text):
                    take(p.title, p.text, {"from": "counterfactual", "index": j})
        if len(chosen) < n_distractors:
            short += 1
            log.debug("example %s: only %d of %d %s distractors", example.id, len(chosen), n_distractors, kind)

        rng = random.Random(f"{seed}:{example.id}:position")
        passages, order = place_relevant(relevant, chosen, position, rng)
        sources = [{"from": "example", "relevant": True}] * len(relevant) + origins
        provenance: dict[str, Any] = {
            "noise": kind, "n_distractors": n_distractors, "n_found": len(chosen), "position": position,
            "seed": seed, "relevant_at": [k for k, o in enumerate(order) if o < len(relevant)],
            "passages": [sources[o] for o in order],
        }
        if kind in ("hard", "random"):
            provenance["corpus"] = corpus.describe()  # type: ignore[union-attr]
        if kind == "hard":
            provenance["retriever"] = {"name": retriever.name, "settings": retriever.settings()}  # type: ignore[union-attr]
        if example.provenance:
            provenance["previous"] = example.provenance
        out.append(RagExample(
            id=example.id, question=example.question, answers=example.answers, passages=tuple(passages),
            relevance_rule=example.relevance_rule, source=example.source, provenance=provenance,
        ))
    if short:
        log.warning("%d of %d examples got fewer than %d %s distractors", short, len(examples), n_distractors, kind)
    return out


def with_retrieved(
    example: RagExample, corpus: Corpus, hits: Sequence[tuple[int, float]], retriever: Retriever | None = None,
    *, question: str | None = None,
) -> RagExample:
    """The example with the retrieved passages (best first) as its context, each flagged relevant when
    it mentions a gold alias; its provenance records the query, the corpus, ids, ranks and scores."""
    passages = tuple(corpus.passage(j, relevant=mentions_answer(corpus.titles[j], corpus.texts[j], example.answers))
                     for j, _ in hits)
    provenance: dict[str, Any] = {
        "noise": "retrieved", "query": question or example.question, "corpus": corpus.describe(),
        "passages": [{"from": "corpus", "id": corpus.ids[j], "rank": r, "score": round(float(s), 6)}
                     for r, (j, s) in enumerate(hits, start=1)],
    }
    if retriever is not None:
        provenance["retriever"] = {"name": retriever.name, "settings": retriever.settings()}
    return RagExample(id=example.id, question=example.question, answers=example.answers, passages=passages,
                      relevance_rule="contains-answer", source=example.source, provenance=provenance)


def noise_function(
    kind: str,
    *,
    corpus: Sequence[str] | None = None,
    retriever: str = "bm25",
    position: str = "shuffled",
    counterfactuals_from: str | Path | None = None,
) -> Callable[[Sequence[RagExample], int, int], list[RagExample]]:
    """A noise step `(examples, n_distractors, seed) -> examples` for study runners (see neurorit.study).

    corpus: load_corpus specs; None = the examples' own passages plus the Wikipedia summaries.
    The index is built once and then reloaded from the cache; counterfactual reads RGB's file."""
    _check(kind, 0, position, 0)
    from neurorit.retrieval.corpus import combine_corpora, corpus_from_examples, load_corpus
    from neurorit.retrieval.index import build_retriever

    if kind == "counterfactual" and counterfactuals_from is None:
        raise ConfigError("noise kind 'counterfactual' needs counterfactuals_from=<RGB file with positive_wrong>.")

    def noise(examples: Sequence[RagExample], n: int, seed: int) -> list[RagExample]:
        if kind == "counterfactual":
            return make_noisy_examples(examples, kind=kind, n_distractors=n, position=position, seed=seed,
                                       counterfactuals=counterfactual_passages(counterfactuals_from))  # type: ignore[arg-type]
        pool = load_corpus(corpus) if corpus else combine_corpora(
            [corpus_from_examples(list(examples), name="examples"), load_corpus("wiki")])
        index = build_retriever(pool, retriever) if kind == "hard" else None
        return make_noisy_examples(examples, pool, index, kind=kind, n_distractors=n, position=position, seed=seed)

    return noise
