import copy
import logging

import pytest

from neurorit.data import Passage, RagExample, demo_examples, load_examples
from neurorit.errors import ConfigError, DataError
from neurorit.metrics import contains_answer
from neurorit.prompts import VIEWS, PromptConfig, add_distractors, build_prompt
from neurorit.retrieval import build_index


@pytest.fixture(scope="module")
def demo():
    return demo_examples()


@pytest.fixture(scope="module")
def plain_tokenizer(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain


def _ids(tokenizer, text):
    return tuple(tokenizer(text, add_special_tokens=False).input_ids)


# --- PromptConfig ----------------------------------------------------------------------------


def test_config_round_trips_and_hashes_stably():
    config = PromptConfig(n_distractors=2, relevant_position=1, system_prompt="Be brief.")
    assert PromptConfig.from_dict(config.to_dict()) == config
    assert config.hash() == PromptConfig.from_dict(config.to_dict()).hash()
    assert config.hash() != PromptConfig().hash()


@pytest.mark.parametrize(
    "field, value",
    [("n_distractors", -1), ("relevant_position", -2), ("max_passage_tokens", 0), ("instruction", " "), ("seed", 1.5)],
)
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ConfigError, match=f"PromptConfig.{field}"):
        PromptConfig(**{field: value})


def test_config_refuses_unknown_fields():
    with pytest.raises(ConfigError, match="n_distractors"):
        PromptConfig.from_dict({"n_distracters": 3})


# --- views -----------------------------------------------------------------------------------


def test_relevant_view_is_what_the_model_sees(demo, tokenizer):
    example = demo[0]
    prompt = build_prompt(example, "relevant", PromptConfig(), tokenizer)
    assert prompt.passages == example.relevant_passages and not prompt.truncated
    assert prompt.text.startswith("<|im_start|>system") and prompt.text.endswith("<|im_start|>assistant\n")
    assert f"Passage 1 ({example.relevant_passages[0].title}): " in prompt.text
    assert f"Question: {example.question}" in prompt.text
    assert prompt.token_ids == _ids(tokenizer, prompt.text)
    assert tokenizer.decode(prompt.answer_ids) == example.answers[0]
    # the answer tokens continue the prompt exactly as teacher forcing will feed them
    assert _ids(tokenizer, prompt.text + example.answers[0]) == prompt.token_ids + prompt.answer_ids


def test_system_prompt_replaces_the_template_default(demo, tokenizer):
    prompt = build_prompt(demo[0], "relevant", PromptConfig(system_prompt="Be brief."), tokenizer)
    assert prompt.text.startswith("<|im_start|>system\nBe brief.<|im_end|>") and "SmolLM" not in prompt.text


def test_irrelevant_and_closed_book_views(demo, tokenizer):
    example = demo[1]
    config = PromptConfig(n_distractors=3)
    irrelevant = build_prompt(example, "irrelevant", config, tokenizer)
    assert irrelevant.passages == example.irrelevant_passages[:3]
    assert not any(contains_answer(irrelevant.text, [a]) for a in example.answers)
    closed = build_prompt(example, "closed_book", config, tokenizer)
    assert closed.passages == () and "Passage" not in closed.text
    assert config.closed_book_instruction in closed.text and example.question in closed.text
    with pytest.raises(ConfigError, match="n_distractors"):
        build_prompt(example, "irrelevant", PromptConfig(n_distractors=0), tokenizer)


def test_noisy_view_places_the_relevant_passage(demo, tokenizer):
    example = demo[2]
    gold = example.relevant_passages[0]
    prompt = build_prompt(example, "noisy", PromptConfig(n_distractors=2, relevant_position=1), tokenizer)
    assert prompt.passages == (example.irrelevant_passages[0], gold, example.irrelevant_passages[1])
    last = build_prompt(example, "noisy", PromptConfig(n_distractors=3, relevant_position=99), tokenizer)
    assert len(last.passages) == 4 and last.passages[-1] == gold  # clipped to the end
    alone = build_prompt(example, "noisy", PromptConfig(n_distractors=0), tokenizer)
    assert alone.passages == (gold,)


def test_noisy_position_is_seeded_per_example(demo, tokenizer):
    def positions(seed: int) -> list[int]:
        config = PromptConfig(seed=seed)
        return [
            [p.relevant for p in build_prompt(e, "noisy", config, tokenizer).passages].index(True) for e in demo[:12]
        ]

    first = positions(0)
    assert first == positions(0)  # deterministic
    assert len(set(first)) > 1  # not one fixed slot
    assert first != positions(1)  # the seed matters
    assert all(0 <= p <= 4 for p in first)


def test_plain_format_without_a_chat_template(demo, plain_tokenizer):
    example = demo[0]
    prompt = build_prompt(example, "relevant", PromptConfig(), plain_tokenizer)
    assert prompt.text.startswith(PromptConfig().instruction) and prompt.text.endswith("\nAnswer:")
    assert plain_tokenizer.decode(prompt.answer_ids) == " " + example.answers[0]


# --- refusals --------------------------------------------------------------------------------


def test_example_without_passages_is_refused_except_closed_book(tokenizer):
    example = RagExample(id="cb-1", question="What is the capital of France?", answers=("Paris",))
    for view in ("relevant", "irrelevant", "noisy"):
        with pytest.raises(DataError, match="example cb-1 has no passages"):
            build_prompt(example, view, PromptConfig(), tokenizer)
    assert build_prompt(example, "closed_book", PromptConfig(), tokenizer).passages == ()


def test_missing_relevant_or_irrelevant_passages_are_refused(tokenizer):
    only_noise = RagExample(id="n-1", question="Who?", answers=("Ada",), passages=(Passage("Bees make honey."),))
    for view in ("relevant", "noisy"):
        with pytest.raises(DataError, match="example n-1 has no relevant passage; the .* view needs one"):
            build_prompt(only_noise, view, PromptConfig(), tokenizer)
    only_gold = RagExample(id="g-1", question="Who?", answers=("Ada",), passages=(Passage("Ada did.", relevant=True),))
    with pytest.raises(DataError, match="no irrelevant passage"):
        build_prompt(only_gold, "irrelevant", PromptConfig(), tokenizer)


def test_unknown_view_is_a_config_error(demo, tokenizer):
    with pytest.raises(ConfigError, match="closed_book"):
        build_prompt(demo[0], "mixed", PromptConfig(), tokenizer)
    assert VIEWS == ("relevant", "irrelevant", "noisy", "closed_book")


def test_overlong_passage_is_truncated_with_a_warning_or_refused(tokenizer, caplog):
    long = Passage(" ".join(["Ada Lovelace wrote the first published algorithm."] * 800), "Ada", relevant=True)
    example = RagExample(id="long-1", question="Who wrote the first algorithm?", answers=("Ada Lovelace",),
                         passages=(long, Passage("Bees make honey.")))
    config = PromptConfig(max_passage_tokens=64)
    with caplog.at_level(logging.WARNING, logger="neurorit.prompts"):
        prompt = build_prompt(example, "noisy", config, tokenizer, max_tokens=2048)
    assert prompt.truncated and "long-1" in caplog.text and "max_passage_tokens" in caplog.text
    shown = next(p for p in prompt.passages if p.relevant)
    assert len(_ids(tokenizer, shown.text)) <= 64 + 1
    assert len(prompt.token_ids) < 300
    with pytest.raises(DataError, match=r"over the limit of 100\. Fix: fewer distractors"):
        build_prompt(example, "noisy", config, tokenizer, max_tokens=100)


# --- add_distractors -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nq(shared_data):
    return load_examples(shared_data / "nq-open-oracle.jsonl.gz", limit=40)


@pytest.mark.parametrize("hard", [False, True])
def test_add_distractors_never_adds_the_answer(nq, hard):
    out = add_distractors(nq, 3, seed=0, hard=hard)
    assert [e.id for e in out] == [e.id for e in nq]
    for before, after in zip(nq, out):
        assert after.passages[: len(before.passages)] == before.passages  # own passages kept, first
        added = after.passages[len(before.passages):]
        assert len(added) == 3 and not any(p.relevant for p in added)
        assert not set(added) & set(before.passages)
        assert not any(contains_answer(f"{p.title} {p.text}", before.answers) for p in added)
        assert len(after.relevant_passages) == 1


def test_add_distractors_is_deterministic_by_seed(nq):
    a = add_distractors(nq, 3, seed=0)
    assert a == add_distractors(nq, 3, seed=0)
    assert a != add_distractors(nq, 3, seed=1)
    assert add_distractors(nq, 3, hard=True) == add_distractors(nq, 3, hard=True)
    assert add_distractors(nq, 0) == nq
    with pytest.raises(ConfigError, match="n"):
        add_distractors(nq, -1)


def test_hard_distractors_are_the_top_bm25_candidates(nq):
    out = add_distractors(nq, 2, hard=True)
    pool = list(dict.fromkeys(Passage(p.text, p.title) for e in nq for p in e.passages))
    index = build_index(pool)
    for before, after in zip(nq[:10], out[:10]):
        scores = index.scores(before.question)
        added = {pool.index(p) for p in after.passages[len(before.passages):]}
        eligible = [j for j, p in enumerate(pool)
                    if p.text not in {q.text for q in before.passages}
                    and not contains_answer(f"{p.title} {p.text}", before.answers)]
        worst_added = min(scores[j] for j in added)
        assert all(scores[j] <= worst_added for j in eligible if j not in added)


def test_noisy_view_works_on_nq_after_add_distractors(nq, tokenizer):
    noisy = add_distractors(nq, 4, seed=0)
    prompt = build_prompt(noisy[0], "noisy", PromptConfig(), tokenizer, max_tokens=2048)
    assert len(prompt.passages) == 5 and sum(p.relevant for p in prompt.passages) == 1
