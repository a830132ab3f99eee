import gzip
import json
import shutil

import pytest

from neurorit.data import (
    DEMO_PATH,
    FORMATS,
    Passage,
    RagExample,
    demo_examples,
    examples_fingerprint,
    load_examples,
    save_examples,
    save_flashrag,
)
from neurorit.errors import ConfigError, DataError
from neurorit.metrics import contains_answer

NQ = "nq-open-oracle.jsonl.gz"
POPQA = "popqa_longtail_25docs.jsonl"
RETRIEVALQA = "retrievalqa_gpt4.jsonl"
RGB = "rgb_en_fact.jsonl"


def _example(**overrides):
    fields = dict(
        id="x-1",
        question="Who wrote Hamlet?",
        answers=("William Shakespeare", "Shakespeare"),
        passages=(Passage("Hamlet is a tragedy by William Shakespeare.", "Hamlet", True), Passage("Bees make honey.")),
    )
    fields.update(overrides)
    return RagExample(**fields)


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --- RagExample ------------------------------------------------------------------------------


def test_example_round_trips_through_dict():
    example = _example(relevance_rule="isgold", source="test")
    again = RagExample.from_dict(json.loads(json.dumps(example.to_dict())))
    assert again == example
    assert again.relevant_passages == example.passages[:1]
    assert again.irrelevant_passages == example.passages[1:]


def test_lists_become_tuples_and_with_passages_copies():
    example = _example(answers=["Shakespeare"], passages=[Passage("p")])
    assert example.answers == ("Shakespeare",) and isinstance(example.passages, tuple)
    other = example.with_passages([Passage("q", relevant=True)])
    assert other.passages == (Passage("q", relevant=True),) and example.passages == (Passage("p"),)
    assert _example(passages=()).passages == ()  # closed-book data is allowed


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"question": "  "}, "example x-1: question is empty"),
        ({"answers": ()}, "answers is empty"),
        ({"answers": ("Shakespeare", "")}, "non-empty strings"),
        ({"id": ""}, "id"),
    ],
)
def test_bad_examples_are_refused(overrides, message):
    with pytest.raises(DataError, match=message):
        _example(**overrides)


# --- the four shared datasets ----------------------------------------------------------------


def test_nq_open_oracle(shared_data):
    examples = load_examples(shared_data / NQ, limit=3)
    first = examples[0]
    assert len(examples) == 3 and [e.id for e in examples] == ["nq-0", "nq-1", "nq-2"]
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert len(first.passages) == 1 and first.passages[0].relevant
    assert first.passages[0].title == "List of Nobel laureates in Physics"
    assert (first.relevance_rule, first.source) == ("isgold", "nq-open-oracle")


def test_popqa_relevance_is_contains_answer(shared_data):
    examples = load_examples(shared_data / POPQA, limit=4)
    first = examples[0]
    assert first.id == "4382392" and first.question == "What is Henry Feilden's occupation?"
    assert first.answers[0] == "politician" and first.relevance_rule == "contains-answer"
    assert first.passages[0].relevant  # "... was an English Conservative Party politician."
    for example in examples:
        for p in example.passages:
            assert p.relevant == contains_answer(p.text, example.answers)


def test_full_dataset_counts_match_the_data_readme(shared_data):
    """README: nq has 2,655 questions with one gold passage each; 3 of 100 PopQA have no relevant passage."""
    nq = load_examples(shared_data / NQ)
    assert len(nq) == 2655 and all(len(e.relevant_passages) == 1 for e in nq)
    popqa = load_examples(shared_data / POPQA, "popqa")
    assert len(popqa) == 100 and sum(not e.relevant_passages for e in popqa) == 3


def test_retrievalqa_dict_and_string_contexts(shared_data):
    examples = load_examples(shared_data / RETRIEVALQA)
    assert len(examples) == 250
    first = examples[0]
    assert first.id == "realtimeqa-realtimeqa_20231013_1" and first.answers == ("15%",)
    assert first.source == "retrievalqa/realtimeqa" and first.passages[0].title
    toolqa = [e for e in examples if e.source == "retrievalqa/toolqa"]
    assert len(toolqa) == 50 and all(p.title == "" and p.text for e in toolqa for p in e.passages)
    assert all(p.relevant == contains_answer(p.text, e.answers) for e in examples for p in e.passages)


def test_rgb_fields_and_nested_answer_lists(shared_data):
    examples = load_examples(shared_data / RGB)
    raw = [json.loads(line) for line in (shared_data / RGB).read_text().splitlines() if line.strip()]
    first = examples[0]
    assert first.id == "rgb-0" and first.question == "Super Bowl 2021 location"
    assert first.answers == ("Tampa, Florida",) and first.relevance_rule == "rgb-fields"
    assert len(first.relevant_passages) == len(raw[0]["positive"])
    assert len(first.irrelevant_passages) == len(raw[0]["negative"])
    nested = next(i for i, r in enumerate(raw) if isinstance(r["answer"], list))
    assert examples[nested].answers == tuple(dict.fromkeys(raw[nested]["answer"][0]))  # flattened, deduplicated
    wrong = load_examples(shared_data / RGB, "rgb", limit=1, counterfactual=True)[0]
    assert len(wrong.irrelevant_passages) == len(raw[0]["negative"]) + len(raw[0]["positive_wrong"])


def test_format_is_detected_by_fields_when_the_name_says_nothing(shared_data, tmp_path):
    for i, name in enumerate((POPQA, RETRIEVALQA, RGB)):
        copy = tmp_path / f"copy{i}.jsonl"
        shutil.copy(shared_data / name, copy)
        assert load_examples(copy, limit=2) == load_examples(shared_data / name, limit=2)


# --- bad files -------------------------------------------------------------------------------


def test_invalid_json_line_names_file_and_line(tmp_path):
    good = json.dumps(_example().to_dict())
    path = _write_lines(tmp_path / "bad.jsonl", [good, "", '{"id": "x-2", "question": '])
    with pytest.raises(DataError, match=r"bad\.jsonl line 3 is not valid JSON"):
        load_examples(path, "neurorit")


def test_missing_field_names_line_and_field(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [json.dumps({"query": "q", "answer": "a", "positive": []})])
    with pytest.raises(DataError, match=r"line 1: missing field 'negative'"):
        load_examples(path, "rgb")


def test_empty_answers_in_a_file_names_the_line(tmp_path):
    record = {"question": "who?", "answers": [], "ctxs": [{"title": "t", "text": "x", "isgold": True}]}
    path = _write_lines(tmp_path / "nq-open-small.jsonl", [json.dumps(record)])
    with pytest.raises(DataError, match=r"line 1: .*answers is empty"):
        load_examples(path)


def test_wrong_field_type_is_a_data_error_not_a_traceback(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [json.dumps({"question": "q", "answers": ["a"], "ctxs": 5})])
    with pytest.raises(DataError, match="line 1"):
        load_examples(path, "popqa")


def test_unknown_format_lists_the_formats(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [json.dumps(_example().to_dict())])
    with pytest.raises(ConfigError, match="squad") as info:
        load_examples(path, "squad")
    assert all(name in str(info.value) for name in FORMATS)


def test_undetectable_and_missing_files(tmp_path):
    path = _write_lines(tmp_path / "x.jsonl", [json.dumps({"foo": 1})])
    with pytest.raises(DataError, match="format="):
        load_examples(path)
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")


def test_gzip_and_limit(tmp_path):
    examples = [_example(id=f"x-{i}") for i in range(4)]
    path = tmp_path / "mine.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.writelines(json.dumps(e.to_dict()) + "\n" for e in examples)
    assert load_examples(path, limit=2) == examples[:2]
    assert load_examples(path, limit=0) == []


# --- writing ---------------------------------------------------------------------------------


def test_save_and_load_neurorit_round_trip(tmp_path):
    examples = demo_examples()[:5]
    save_examples(tmp_path / "out.jsonl", examples)
    assert load_examples(tmp_path / "out.jsonl") == examples


def test_flashrag_round_trip(tmp_path):
    examples = demo_examples()[:5] + [_example(relevance_rule="isgold", source="nq-open-oracle", passages=())]
    path = tmp_path / "flashrag.jsonl"
    save_flashrag(path, examples)
    record = json.loads(path.read_text().splitlines()[0])
    assert set(record) == {"id", "question", "golden_answers", "metadata"}
    assert record["metadata"]["retrieval_result"][0]["contents"].count("\n") >= 1
    assert load_examples(path) == examples


def test_foreign_flashrag_records_use_contains_answer(tmp_path):
    record = {
        "id": "q1", "question": "Who wrote Hamlet?", "golden_answers": ["Shakespeare"],
        "metadata": {"retrieval_result": [
            {"id": "1", "contents": '"Hamlet"\nHamlet is a play by William Shakespeare.'},
            {"id": "2", "contents": "Bees\nBees make honey."},
        ]},
    }
    path = _write_lines(tmp_path / "test.jsonl", [json.dumps(record)])
    (example,) = load_examples(path, "flashrag")
    assert example.relevance_rule == "contains-answer"
    assert [(p.title, p.relevant) for p in example.passages] == [("Hamlet", True), ("Bees", False)]


def test_fingerprint_is_stable_and_content_sensitive():
    examples = demo_examples()
    assert examples_fingerprint(examples) == examples_fingerprint(demo_examples())
    changed = [examples[0].with_passages(examples[0].passages[:-1])] + examples[1:]
    assert examples_fingerprint(changed) != examples_fingerprint(examples)


# --- the bundled demo set --------------------------------------------------------------------


def test_demo_set_is_sane():
    examples = demo_examples()
    assert DEMO_PATH.is_file() and len(examples) >= 35
    assert len({e.id for e in examples}) == len(examples) and examples[0].id == "demo-01"
    assert len({e.question for e in examples}) == len(examples)
    for e in examples:
        assert (e.source, e.relevance_rule) == ("demo", "given")
        assert 1 <= len(e.answers) <= 3
        (relevant,) = e.relevant_passages
        assert contains_answer(relevant.text, e.answers), e.id
        assert len(e.irrelevant_passages) >= 4, e.id
        for p in e.irrelevant_passages:
            assert not contains_answer(f"{p.title} {p.text}", e.answers), (e.id, p.title)
