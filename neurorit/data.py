"""QA examples with flagged passages, and the readers and writers of the dataset formats.

Owns: `Passage` and `RagExample` (validated, immutable values), reading JSON lines (plain or gzip)
in the formats of FORMATS with format detection, deciding which passages are relevant (by the
dataset's own flags or "contains a normalized answer alias"), writing the neurorit and FlashRAG
formats atomically, the bundled demo set, and a fingerprint of a list of examples. Every bad
record becomes a DataError naming the file and the line. Must not: tokenize, build prompts or
load models (see prompts.py), or download anything.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from neurorit.configs import stable_hash
from neurorit.errors import ConfigError, DataError
from neurorit.metrics import contains_answer
from neurorit.store import write_text_atomic

log = logging.getLogger(__name__)

FORMATS = ("neurorit", "flashrag", "nq-open-oracle", "popqa", "retrievalqa", "rgb")
DEMO_PATH = Path(__file__).resolve().parent / "resources" / "demo.jsonl"


@dataclass(frozen=True)
class Passage:
    """One passage shown to the model; `relevant` means it contains or supports the answer."""

    text: str
    title: str = ""
    relevant: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not isinstance(self.title, str):
            raise DataError(
                f"Passage text and title must be strings, got text {type(self.text).__name__} and "
                f"title {type(self.title).__name__}."
            )
        if not isinstance(self.relevant, bool):
            raise DataError(f"Passage.relevant must be a bool, got {self.relevant!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "text": self.text, "relevant": self.relevant}

    @classmethod
    def from_dict(cls, data: Any) -> "Passage":
        if not isinstance(data, dict) or "text" not in data:
            raise DataError(f"a passage must be a mapping with a 'text' field, got {_short(data)}.")
        return cls(text=data["text"], title=data.get("title") or "", relevant=bool(data.get("relevant", False)))


@dataclass(frozen=True)
class RagExample:
    """A question, its gold aliases (the first is the canonical target) and flagged passages."""

    id: str
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...] = ()
    relevance_rule: str = "given"  # how passages were flagged: given, isgold, contains-answer, rgb-fields
    source: str = ""  # the dataset's name
    # how the passages were chosen (retrieval noise kind, seed, corpus, ids); {} for a dataset's own.
    # JSON-able; left out of to_dict when empty, so the fingerprints of plain examples do not change.
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if isinstance(self.answers, str):
            object.__setattr__(self, "answers", (self.answers,))
        object.__setattr__(self, "answers", tuple(self.answers))
        object.__setattr__(self, "passages", tuple(self.passages))
        if not isinstance(self.id, str) or not self.id:
            raise DataError(f"an example id must be a non-empty string, got {self.id!r}.")
        if not isinstance(self.question, str) or not self.question.strip():
            raise DataError(f"example {self.id}: question is empty; expected the question text.")
        if not self.answers:
            raise DataError(
                f"example {self.id}: answers is empty; expected at least one gold alias (the first is "
                "the target). Drop the example or add its answer."
            )
        bad = [a for a in self.answers if not isinstance(a, str) or not a.strip()]
        if bad:
            raise DataError(
                f"example {self.id}: answers must be non-empty strings, got {bad!r} among {list(self.answers)!r}."
            )
        if not isinstance(self.provenance, dict):
            raise DataError(f"example {self.id}: provenance must be a mapping, got {_short(self.provenance)}.")
        bad_passages = [p for p in self.passages if not isinstance(p, Passage)]
        if bad_passages:
            raise DataError(
                f"example {self.id}: passages must be Passage values, got {type(bad_passages[0]).__name__}; "
                "use RagExample.from_dict for plain dicts."
            )

    @property
    def relevant_passages(self) -> tuple[Passage, ...]:
        return tuple(p for p in self.passages if p.relevant)

    @property
    def irrelevant_passages(self) -> tuple[Passage, ...]:
        return tuple(p for p in self.passages if not p.relevant)

    def with_passages(self, passages: Iterable[Passage]) -> "RagExample":
        """A copy with other passages (validated again)."""
        return dataclasses.replace(self, passages=tuple(passages))

    def to_dict(self) -> dict[str, Any]:
        out = {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "passages": [p.to_dict() for p in self.passages],
            "relevance_rule": self.relevance_rule,
            "source": self.source,
        }
        if self.provenance:
            out["provenance"] = json.loads(json.dumps(self.provenance))  # a deep, JSON-safe copy
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "RagExample":
        """Build an example from `to_dict` output; a missing field is a DataError naming it."""
        if not isinstance(data, dict):
            raise DataError(f"an example must be a JSON object, got {_short(data)}.")
        _require(data, ("id", "question", "answers"), "neurorit")
        passages = data.get("passages") or []
        if not isinstance(passages, list):
            raise DataError(f"field 'passages' must be a list of passages, got {_short(passages)}.")
        return cls(
            id=str(data["id"]),
            question=data["question"],
            answers=_aliases(data["answers"]),
            passages=tuple(Passage.from_dict(p) for p in passages),
            relevance_rule=data.get("relevance_rule") or "given",
            source=data.get("source") or "",
            provenance=data.get("provenance") or {},
        )


# ---------------------------------------------------------------------------------------------
# helpers


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _MissingField(DataError):
    """A record lacks a field its format requires: perhaps the file is in another format."""


def _require(record: dict[str, Any], fields: Sequence[str], format: str) -> None:
    for name in fields:
        if name not in record:
            raise _MissingField(
                f"missing field '{name}' for the {format} format (record has {sorted(record)}); expected "
                f"fields {list(fields)}."
            )


def _format_hint(fmt: str, given: bool, format_flag: str) -> str:
    """What to do about a record that does not fit `fmt`: name the option only when it was not used."""
    if given:
        return f"Wrong format? {fmt} was given; check that the file is in the {fmt} format."
    return f"Wrong format? {fmt} was detected; pass {format_flag} explicitly."


def require_unique_ids(examples: Sequence[RagExample], source: str) -> None:
    """Refuse examples sharing an id (mining, evaluation and training key their results by id)."""
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DataError(
                f"{source}: example id {example.id!r} occurs twice; expected unique ids (results are keyed by "
                "id). Rename or drop the duplicate."
            )
        seen.add(example.id)


def _aliases(value: Any) -> tuple[str, ...]:
    """Aliases from a string, or a list possibly nesting lists of aliases (RGB); deduplicated, in order."""
    out: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, (list, tuple)):
            for sub in item:
                walk(sub)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(str(item))
        else:
            out.append(item)  # RagExample validates type and emptiness

    walk(value)
    seen: set[Any] = set()
    return tuple(a for a in out if not (a in seen or seen.add(a)))


def _contains_rule(texts: Iterable[tuple[str, str]], answers: tuple[str, ...]) -> tuple[Passage, ...]:
    """Passages (title, text) flagged relevant when their text contains a normalized alias."""
    return tuple(
        Passage(text=text, title=title, relevant=contains_answer(text, answers)) for title, text in texts if text
    )


def _title_text(item: Any) -> tuple[str, str]:
    """(title, text) of a passage given as {title, text}, {contents: "title\\ntext"} or a plain string."""
    if isinstance(item, str):
        return "", item.strip()
    if not isinstance(item, dict):
        raise DataError(f"a passage must be an object or a string, got {_short(item)}.")
    if "contents" in item and "text" not in item:
        title, _, text = str(item["contents"]).partition("\n")
        return title.strip().strip('"'), text.strip()
    return str(item.get("title") or "").strip(), str(item.get("text") or "").strip()


# ---------------------------------------------------------------------------------------------
# one parser per format: (record, index of the record in the file) -> RagExample


def _parse_neurorit(record: dict[str, Any], index: int, **_: Any) -> RagExample:
    return RagExample.from_dict(record)


def _parse_nq(record: dict[str, Any], index: int, **_: Any) -> RagExample:
    _require(record, ("question", "answers", "ctxs"), "nq-open-oracle")
    passages = []
    for ctx in record["ctxs"]:
        title, text = _title_text(ctx)
        if text:
            passages.append(Passage(text=text, title=title, relevant=bool(ctx.get("isgold", False))))
    return RagExample(
        id=str(record.get("id", f"nq-{index}")),
        question=record["question"],
        answers=_aliases(record["answers"]),
        passages=tuple(passages),
        relevance_rule="isgold",
        source="nq-open-oracle",
    )


def _parse_popqa(record: dict[str, Any], index: int, **_: Any) -> RagExample:
    _require(record, ("question", "answers", "ctxs"), "popqa")
    answers = _aliases(record["answers"])
    return RagExample(
        id=str(record.get("id", f"popqa-{index}")),
        question=record["question"],
        answers=answers,
        passages=_contains_rule((_title_text(c) for c in record["ctxs"]), answers),
        relevance_rule="contains-answer",
        source="popqa",
    )


def _parse_retrievalqa(record: dict[str, Any], index: int, **_: Any) -> RagExample:
    _require(record, ("question", "ground_truth", "context"), "retrievalqa")
    answers = _aliases(record["ground_truth"])
    source = str(record.get("data_source", "retrievalqa"))
    question_id = record.get("question_id", index)
    return RagExample(
        id=f"{source}-{question_id}",
        question=record["question"],
        answers=answers,
        passages=_contains_rule((_title_text(c) for c in record["context"] or []), answers),
        relevance_rule="contains-answer",
        source=f"retrievalqa/{source}",
    )


def _parse_rgb(record: dict[str, Any], index: int, *, counterfactual: bool = False, **_: Any) -> RagExample:
    _require(record, ("query", "answer", "positive", "negative"), "rgb")
    passages = [Passage(text=t.strip(), relevant=True) for t in record["positive"] if t.strip()]
    passages += [Passage(text=t.strip(), relevant=False) for t in record["negative"] if t.strip()]
    if counterfactual:  # the positives rewritten to the fake answer: counterfactual noise
        passages += [Passage(text=t.strip(), relevant=False) for t in record.get("positive_wrong", []) if t.strip()]
    return RagExample(
        id=f"rgb-{record.get('id', index)}",
        question=record["query"],
        answers=_aliases(record["answer"]),
        passages=tuple(passages),
        relevance_rule="rgb-fields+counterfactual" if counterfactual else "rgb-fields",
        source="rgb",
    )


def _flashrag_docs(record: dict[str, Any]) -> list[Any] | None:
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    output = record.get("output") if isinstance(record.get("output"), dict) else {}
    for holder in (metadata, output, record):
        for key in ("retrieval_result", "ctxs", "contexts"):
            if isinstance(holder.get(key), list):
                return holder[key]
    return None


def _parse_flashrag(record: dict[str, Any], index: int, **_: Any) -> RagExample:
    _require(record, ("question", "golden_answers"), "flashrag")
    answers = _aliases(record["golden_answers"])
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    docs = _flashrag_docs(record) or []
    ours = isinstance(metadata.get("relevance_rule"), str)  # written by save_flashrag
    flagged = ours and all(isinstance(d, dict) and isinstance(d.get("relevant"), bool) for d in docs)
    if flagged:  # keep our own flags and rule
        passages = tuple(Passage(text=text, title=title, relevant=d["relevant"])
                         for d, (title, text) in zip(docs, map(_title_text, docs)))
        rule = str(metadata.get("relevance_rule", "given"))
    else:
        passages = _contains_rule((_title_text(d) for d in docs), answers)
        rule = "contains-answer"
    return RagExample(
        id=str(record.get("id", f"flashrag-{index}")),
        question=record["question"],
        answers=answers,
        passages=passages,
        relevance_rule=rule,
        source=str(metadata.get("source", "flashrag")),
    )


_PARSERS: dict[str, Callable[..., RagExample]] = {
    "neurorit": _parse_neurorit,
    "flashrag": _parse_flashrag,
    "nq-open-oracle": _parse_nq,
    "popqa": _parse_popqa,
    "retrievalqa": _parse_retrievalqa,
    "rgb": _parse_rgb,
}
_NAME_HINTS = (("nq-open", "nq-open-oracle"), ("popqa", "popqa"), ("retrievalqa", "retrievalqa"),
               ("rgb", "rgb"), ("flashrag", "flashrag"), ("neurorit", "neurorit"), ("demo", "neurorit"))
_REQUIRED = {
    "neurorit": ("id", "question", "answers"),
    "flashrag": ("question", "golden_answers"),
    "nq-open-oracle": ("question", "answers", "ctxs"),
    "popqa": ("question", "answers", "ctxs"),
    "retrievalqa": ("question", "ground_truth", "context"),
    "rgb": ("query", "answer", "positive", "negative"),
}


def _format_from_keys(record: dict[str, Any]) -> str | None:
    keys = set(record)
    if "golden_answers" in keys:
        return "flashrag"
    if {"query", "positive", "negative"} <= keys:
        return "rgb"
    if {"ground_truth", "context"} <= keys:
        return "retrievalqa"
    if {"answers", "passages"} <= keys:
        return "neurorit"
    if {"answers", "ctxs"} <= keys:
        ctxs = record["ctxs"]
        first = ctxs[0] if isinstance(ctxs, list) and ctxs else {}
        if "nq_annotated_gold" in keys or (isinstance(first, dict) and "isgold" in first):
            return "nq-open-oracle"
        return "popqa"  # any DPR-style file: relevance by "contains an answer alias"
    if {"id", "question", "answers"} <= keys:
        return "neurorit"
    return None


def detect_format(path: Path, first_record: dict[str, Any] | None, *, format_flag: str = "format=") -> str:
    """The format named by the file name when the first record fits it, else the one its keys show.

    `format_flag`: how the caller's option is named in a refusal ("--format" in the CLI).
    """
    name = path.name.lower()
    hinted = next((fmt for hint, fmt in _NAME_HINTS if hint in name), None)
    if first_record is None:
        if hinted:
            return hinted
        raise DataError(f"{path} holds no records, so its format cannot be detected; pass {format_flag} explicitly.")
    if hinted and all(k in first_record for k in _REQUIRED[hinted]):
        return hinted
    by_keys = _format_from_keys(first_record)
    if by_keys is None:
        raise DataError(
            f"{path}: cannot tell the format from the first record's fields {sorted(first_record)}; "
            f"expected one of {list(FORMATS)}. Pass {format_flag} explicitly."
        )
    return by_keys


# ---------------------------------------------------------------------------------------------
# reading and writing


def read_json_lines(path: Path, what: str = "JSON lines file") -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed JSON) for each non-blank line of a .jsonl or .jsonl.gz file.

    A missing, unreadable or malformed file raises one DataError naming the file (and the line);
    `what` says what the file was expected to be ("corpus file", "RGB file", ...)."""
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; expected a {what} (.jsonl or .jsonl.gz).")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); expected "
                        f"one JSON object per line of a {what}. Fix or delete that line."
                    ) from exc
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as {'gzipped ' if opener is gzip.open else ''}UTF-8 JSON lines "
                        f"({exc}); expected a {what}.") from exc


def load_examples(
    path: str | Path, format: str | None = None, *, limit: int | None = None, counterfactual: bool = False,
    format_flag: str = "format=",
) -> list[RagExample]:
    """Read examples from a JSON-lines file (optionally gzipped) in one of FORMATS.

    format None detects it from the file name, then the first record's fields. `limit` keeps the
    first examples only. `counterfactual` (rgb only) adds the `positive_wrong` rewrites as
    irrelevant passages. A file without any record is refused. `format_flag`: how the caller's
    format option is named in a refusal ("--format" in the CLI); suggested only when not given.
    """
    path = Path(path)
    if format is not None and format not in FORMATS:
        raise ConfigError.field("load_examples", "format", format, f"one of {list(FORMATS)} or None (detect)")
    if limit is not None and limit < 0:
        raise ConfigError.field("load_examples", "limit", limit, "an integer >= 0 or None (all)")
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; expected a .jsonl or .jsonl.gz dataset.")
    examples: list[RagExample] = []
    fmt = format
    is_empty = True
    for lineno, record in read_json_lines(path, "data file"):
        is_empty = False
        if limit is not None and len(examples) >= limit:
            break
        if not isinstance(record, dict):
            raise DataError(f"{path} line {lineno}: expected a JSON object, got {_short(record)}.")
        if fmt is None:
            fmt = detect_format(path, record, format_flag=format_flag)
            log.debug("%s: detected format %s", path, fmt)
        try:
            examples.append(_PARSERS[fmt](record, len(examples), counterfactual=counterfactual))
        except _MissingField as exc:
            raise DataError(f"{path} line {lineno}: {exc} {_format_hint(fmt, format is not None, format_flag)}") from exc
        except DataError as exc:
            raise DataError(f"{path} line {lineno}: {exc}") from exc
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            fix = "" if format is not None else f", or pass the right {format_flag}"
            raise DataError(
                f"{path} line {lineno}: a {fmt} record has a field of the wrong type ({exc!r}); check the "
                f"line against the {fmt} format{fix}."
            ) from exc
    if is_empty:
        raise DataError(f"{path} is empty: it holds no JSON lines; expected one example (a JSON object) per line.")
    log.info("loaded %d examples from %s (%s)", len(examples), path, fmt)
    return examples


def _write_jsonl(path: str | Path, lines: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    if path.name.endswith(".gz"):
        raise DataError(f"{path}: writing gzip is not supported; expected a .jsonl path. Compress it afterwards.")
    write_text_atomic(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


def save_examples(path: str | Path, examples: Iterable[RagExample]) -> None:
    """Write examples as neurorit JSON lines (one `to_dict` per line), atomically."""
    _write_jsonl(path, (e.to_dict() for e in examples))


def to_flashrag(example: RagExample) -> dict[str, Any]:
    """The FlashRAG record of an example; passages go to metadata.retrieval_result as "title\\ntext"."""
    docs = [
        {"id": f"{example.id}-{i}", "contents": f"{p.title.replace(chr(10), ' ')}\n{p.text}", "relevant": p.relevant}
        for i, p in enumerate(example.passages)
    ]
    return {
        "id": example.id,
        "question": example.question,
        "golden_answers": list(example.answers),
        "metadata": {"retrieval_result": docs, "relevance_rule": example.relevance_rule, "source": example.source},
    }


def save_flashrag(path: str | Path, examples: Iterable[RagExample]) -> None:
    """Write examples as FlashRAG JSON lines, atomically; `load_examples` reads them back unchanged."""
    _write_jsonl(path, (to_flashrag(e) for e in examples))


def demo_examples() -> list[RagExample]:
    """The demo set shipped with neurorit: general-knowledge questions, 1 relevant + 4-5 irrelevant passages."""
    return load_examples(DEMO_PATH, "neurorit")


def choose_examples(
    data: str | Path, format: str | None = None, *, offset: int | None = None, limit: int | None = None,
    format_flag: str = "--format",
) -> list[RagExample]:
    """'demo' or a dataset file, from `offset` on, at most `limit` of them, with unique ids.

    An offset past the end is refused with the file's size (as is an empty file, by load_examples).
    """
    if str(data) == "demo":
        examples = demo_examples()
    else:
        examples = load_examples(data, format, limit=None, format_flag=format_flag)
    n_all, offset = len(examples), offset or 0
    examples = examples[offset:]
    if limit is not None:
        examples = examples[:limit]
    if not examples:  # only an offset past the end leaves none
        raise DataError(f"no examples selected from {str(data)!r}: offset {offset} skips all {n_all} of its examples; "
                        f"expected an offset below {n_all}.")
    require_unique_ids(examples, str(data))  # mining, evaluation and training key results by example id
    return examples


def examples_fingerprint(examples: Iterable[RagExample]) -> str:
    """A short stable hash of the examples' content (ids, questions, answers, passages, flags)."""
    return stable_hash([e.to_dict() for e in examples])
