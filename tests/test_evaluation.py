import json
import math
from types import SimpleNamespace

import pytest
import torch

from neurorit.data import Passage, RagExample, demo_examples
from neurorit.errors import ArtifactError, ConfigError, DataError
from neurorit.evaluation import (
    AblationReport,
    EvalConfig,
    EvalReport,
    ExampleResult,
    SkippedPrompt,
    ablate,
    evaluate,
    what_if,
)
from neurorit.decoding import answer_and_logprob, answer_logprob, generate_answer, stop_token_ids
from neurorit.masks import NeuronMask
from neurorit.models import model_identity
from neurorit.neurons import NeuronSet
from neurorit.prompts import PromptConfig, build_prompt
from scale import assert_close_in_scale


SHORT = 40  # max_passage_tokens for the tiny models: short prompts keep the tests fast


@pytest.fixture(scope="module")
def demo() -> list[RagExample]:
    return demo_examples()[:3]


# ---- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"views": ("relevant", "distracted")}, "views"),
        ({"views": ()}, "views"),
        ({"views": ("noisy", "noisy")}, "views"),
        ({"noise_levels": (0, -1)}, "noise_levels"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": PromptConfig(n_distractors=0)}, "prompt.n_distractors"),
    ],
)
def test_eval_config_refuses_bad_values(kwargs, field):
    with pytest.raises(ConfigError, match=f"EvalConfig.{field}"):
        EvalConfig(**kwargs)


def test_eval_config_round_trips_through_json_with_its_nested_prompt_config():
    config = EvalConfig(views=("noisy", "relevant"), noise_levels=(0, 2, 4), max_new_tokens=8,
                        prompt=PromptConfig(n_distractors=3, seed=7, system_prompt="Be brief."))
    back = EvalConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config and isinstance(back.prompt, PromptConfig)
    assert back.hash() == config.hash() != EvalConfig().hash()
    assert config.noise_sweep() == (0, 2, 4) and EvalConfig().noise_sweep() == (4,)
    with pytest.raises(ConfigError, match="unknown field"):
        EvalConfig.from_dict({**config.to_dict(), "temperature": 0.7})


# ---- generation and scoring ---------------------------------------------------------------------


def test_answer_logprob_equals_an_independent_forward(tiny_llama, tiny_llama_dir, demo):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager", dtype=torch.float32)
    prompt = build_prompt(demo[0], "noisy", PromptConfig(n_distractors=2), tiny_llama.tokenizer)
    assert len(prompt.answer_ids) > 1
    ids = torch.tensor([prompt.token_ids + prompt.answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(hf(ids).logits[0].double(), dim=-1)  # [pos, d_vocab]
    n = prompt.n_tokens
    expected = sum(float(logprobs[n - 1 + i, t]) for i, t in enumerate(prompt.answer_ids))
    assert_close_in_scale(answer_logprob(tiny_llama, prompt), expected, rel=1e-4)


def _full_forward_greedy(model, prompt, n: int) -> str:
    """Reference decoder: no KV cache, full forward per token, stop rules applied afterwards."""
    ids = torch.tensor([prompt.token_ids])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    new = ids[0, prompt.n_tokens:].tolist()
    stops = stop_token_ids(model)
    cut = next((i for i, t in enumerate(new) if t in stops), len(new))
    text = model.tokenizer.decode(new[:cut], skip_special_tokens=True)
    return text.lstrip().split("\n")[0].strip()


def test_kv_cached_greedy_equals_full_forward_greedy(tiny_model, demo):
    prompt = build_prompt(demo[1], "relevant", PromptConfig(), tiny_model.tokenizer)
    answer = generate_answer(tiny_model, prompt, max_new_tokens=6)
    assert answer == _full_forward_greedy(tiny_model, prompt, 6)
    assert answer  # a random tiny model rarely stops at once; guards against a vacuous pass


def test_shared_prefix_path_equals_the_separate_functions(tiny_model, demo):
    for view in ("noisy", "closed_book"):
        config = PromptConfig(n_distractors=1, max_passage_tokens=SHORT)
        prompt = build_prompt(demo[2], view, config, tiny_model.tokenizer)
        answer, logprob = answer_and_logprob(tiny_model, prompt, max_new_tokens=5)
        assert answer == generate_answer(tiny_model, prompt, max_new_tokens=5)
        assert_close_in_scale(logprob, answer_logprob(tiny_model, prompt), rel=1e-4)


def test_generation_under_a_mask_differs_and_leaves_no_hooks(tiny_llama, demo):
    prompt = build_prompt(demo[0], "relevant", PromptConfig(), tiny_llama.tokenizer)
    grid = torch.zeros(2, 48, dtype=torch.bool)
    grid[:, :24] = True
    mask = NeuronMask.silencing(NeuronSet(grid), tiny_llama)
    plain = answer_logprob(tiny_llama, prompt)
    assert answer_logprob(tiny_llama, prompt, mask=mask) != plain
    generate_answer(tiny_llama, prompt, max_new_tokens=2, mask=mask)
    assert answer_logprob(tiny_llama, prompt) == plain


class _ScriptedModel:
    """Stands in for the bridge: its greedy token at step i is script[i]; counts forwards."""

    def __init__(self, tokenizer, script: list[int], n_ctx: int = 1000, extra_eos: int | None = None):
        self.tokenizer = tokenizer
        self.script = script
        self.cfg = SimpleNamespace(n_ctx=n_ctx)
        eos = [tokenizer.eos_token_id] + ([extra_eos] if extra_eos is not None else [])
        self.original_model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos))
        self.calls = 0

    def parameters(self):  # type: ignore[no-untyped-def]
        yield torch.zeros(1)

    def __call__(self, tokens, return_type="logits", past_key_values=None, **kwargs):  # type: ignore[no-untyped-def]
        logits = torch.zeros(1, tokens.shape[1], len(self.tokenizer))
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return (logits, object()) if return_type == "logits_and_cache" else logits


def _prompt(tokenizer, n_tokens: int = 5):  # type: ignore[no-untyped-def]
    from neurorit.prompts import Prompt

    return Prompt("x", "closed_book", "q", tuple(range(10, 10 + n_tokens)), (11,), (), False)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def test_generation_stops_at_eos_newline_and_the_length_limits(tokenizer):
    paris, nl = _ids(tokenizer, " Paris"), _ids(tokenizer, "\n")
    assert len(nl) == 1
    eos = tokenizer.eos_token_id
    model = _ScriptedModel(tokenizer, paris + [eos] + paris)
    assert generate_answer(model, _prompt(tokenizer)) == "Paris" and model.calls == len(paris) + 1
    model = _ScriptedModel(tokenizer, paris + nl + paris)
    assert generate_answer(model, _prompt(tokenizer)) == "Paris"
    model = _ScriptedModel(tokenizer, nl + paris + nl)  # a newline before any text does not stop
    assert generate_answer(model, _prompt(tokenizer)) == "Paris"
    im_end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model = _ScriptedModel(tokenizer, paris + [im_end], extra_eos=im_end)  # generation_config's eos list
    assert generate_answer(model, _prompt(tokenizer)) == "Paris"
    model = _ScriptedModel(tokenizer, _ids(tokenizer, " a b c d e f g h"))
    assert generate_answer(model, _prompt(tokenizer), max_new_tokens=3) == "a b c" and model.calls == 3
    model = _ScriptedModel(tokenizer, _ids(tokenizer, " a b c d e f g h"), n_ctx=6)  # 5 prompt tokens
    assert generate_answer(model, _prompt(tokenizer), max_new_tokens=8) == "a b" and model.calls == 2
    with pytest.raises(DataError, match="context of 4"):
        generate_answer(_ScriptedModel(tokenizer, paris, n_ctx=4), _prompt(tokenizer))


# ---- evaluate and reports -----------------------------------------------------------------------


def test_evaluate_on_demo_examples_returns_one_result_per_prompt(tiny_llama, demo):
    no_relevant = RagExample(
        id="no-gold", question="Who won?", answers=("Nobody",),
        passages=(Passage("Cats sleep a lot.", "Cats"), Passage("Rain is wet.", "Rain")),
    )
    config = EvalConfig(noise_levels=(0, 2), max_new_tokens=3,
                        prompt=PromptConfig(n_distractors=2, max_passage_tokens=SHORT))
    calls = []
    report = evaluate(tiny_llama, [*demo, no_relevant], config, label="tiny",
                      on_progress=lambda d, t, m: calls.append((d, t)))
    # 3 full examples x (relevant + noisy@0 + noisy@2 + irrelevant + closed_book) + 2 views of no-gold
    assert len(report.results) == 3 * 5 + 2
    assert calls == [(i, 17) for i in range(1, 18)]
    assert {(s.example_id, s.view) for s in report.skipped} == {
        ("no-gold", "relevant"), ("no-gold", "noisy")} and len(report.skipped) == 3
    table = report.table()
    assert list(table["view"]) == ["relevant", "noisy", "noisy", "irrelevant", "closed_book"]
    assert list(table["n_distractors"]) == [0, 0, 2, 2, 0]
    assert list(table["n"]) == [3, 3, 3, 4, 4] and list(table["skipped"]) == [1, 1, 1, 0, 0]
    noisy2 = [r for r in report.results if r.view == "noisy" and r.n_distractors == 2]
    assert all(r.n_passages == 3 for r in noisy2)
    assert all(math.isfinite(r.logprob) and r.logprob < 0 for r in report.results)
    assert report.model == model_identity(tiny_llama).__dict__ and report.mask is None
    assert EvalConfig.from_dict(report.config) == config


def test_prompts_over_the_context_are_skipped(tiny_llama, demo, monkeypatch, caplog):
    monkeypatch.setattr(tiny_llama.cfg, "n_ctx", 100)
    config = EvalConfig(views=("relevant", "closed_book"), max_new_tokens=2)
    with caplog.at_level("WARNING", logger="neurorit.evaluation"):
        report = evaluate(tiny_llama, demo[:2], config)
    assert {r.view for r in report.results} == {"closed_book"}
    assert [s.view for s in report.skipped] == ["relevant", "relevant"]
    assert "over the limit of 100" in report.skipped[0].reason and "skipping example" in caplog.text


def _hand_made_report() -> EvalReport:
    def r(eid, view, k, answer, correct, exact, f1, lp):  # type: ignore[no-untyped-def]
        return ExampleResult(eid, view, k, answer, correct, exact, f1, lp, k)

    results = (
        r("a", "relevant", 0, "Paris", True, True, 1.0, -1.0),
        r("b", "relevant", 0, "in Paris", True, False, 0.5, -2.0),
        r("c", "relevant", 0, "Rome", False, False, 0.0, -6.0),
        r("a", "noisy", 1, "Lyon", False, False, 0.0, -3.0),
        r("b", "noisy", 1, "Paris", True, True, 1.0, -1.0),
        r("a", "noisy", 4, "no idea", False, False, 0.0, -5.0),
    )
    skipped = (SkippedPrompt("c", "noisy", 1, "no relevant passage"), SkippedPrompt("c", "noisy", 4, "x"))
    return EvalReport(results, "hand", {"views": ["relevant", "noisy"]}, {"name": "m"}, None, skipped)


def test_metrics_roll_up_on_a_hand_made_report():
    report = _hand_made_report()
    table = report.table().set_index(["view", "n_distractors"])
    assert list(table.index) == [("relevant", 0), ("noisy", 1), ("noisy", 4)]
    rel = table.loc[("relevant", 0)]
    assert rel["n"] == 3 and rel["skipped"] == 0
    torch.testing.assert_close(
        [rel["accuracy"], rel["exact"], rel["f1"], rel["logprob"]], [2 / 3, 1 / 3, 0.5, -3.0])
    noisy = table.loc[("noisy", 1)]
    torch.testing.assert_close([noisy["accuracy"], noisy["f1"], noisy["logprob"]], [0.5, 0.5, -2.0])
    assert noisy["skipped"] == 1 and table.loc[("noisy", 4)]["accuracy"] == 0.0
    assert report.accuracy("relevant") == pytest.approx(2 / 3)
    assert report.accuracy("noisy") == pytest.approx(1 / 3)
    assert report.accuracy("noisy", 1) == 0.5
    with pytest.raises(DataError, match="closed_book"):
        report.accuracy("closed_book")


def test_eval_report_save_load_round_trip(tmp_path):
    report = _hand_made_report()
    path = report.save(tmp_path / "reports" / "eval.json")
    assert EvalReport.load(path) == report
    path.write_text(json.dumps({"format_version": 1, "results": []}))
    with pytest.raises(ArtifactError, match="lacks field"):
        EvalReport.load(path)
    path.write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        EvalReport.load(path)


def test_random_control_keeps_counts_and_values_per_layer(tiny_llama):
    scale = torch.ones(2, 48)
    scale[0, [1, 2, 3]] = 0.0
    scale[1, [5]] = 2.0
    mask = NeuronMask(scale, model_identity(tiny_llama), {"set_label": "I-R"})
    control = mask.random_control(3)
    assert control.counts_per_layer() == [3, 1]
    assert sorted(control.scale[0][control.scale[0] != 1].tolist()) == [0.0, 0.0, 0.0]
    assert control.scale[1][control.scale[1] != 1].tolist() == [2.0]
    assert not torch.equal(control.scale, mask.scale)
    assert control.provenance["control_of"] == mask.key() and control.provenance["seed"] == 3
    assert torch.equal(mask.random_control(3).scale, control.scale)


def test_ablate_with_base_masked_and_control(tiny_llama, demo, tmp_path):
    grid = torch.zeros(2, 48, dtype=torch.bool)
    grid[0, :16] = True
    grid[1, 30:38] = True
    mask = NeuronMask.silencing(NeuronSet(grid, "I-R"), tiny_llama)
    config = EvalConfig(views=("relevant", "noisy"), max_new_tokens=2,
                        prompt=PromptConfig(n_distractors=1, max_passage_tokens=SHORT))
    progress = []
    report = ablate(tiny_llama, demo[:2], config, mask, control_seed=1,
                    on_progress=lambda d, t, m: progress.append((d, t, m)))
    assert [p[:2] for p in progress] == [(i, 12) for i in range(1, 13)]
    assert progress[0][2].startswith("base:") and progress[-1][2].startswith("control:")
    assert report.control is not None
    assert report.control.mask["counts_per_layer"] == [16, 8] == report.masked.mask["counts_per_layer"]
    assert report.control.mask["provenance"]["kind"] == "random_control"
    table = report.table()
    assert list(table["view"]) == ["relevant", "noisy"]
    for column in ("accuracy_base", "accuracy_masked", "accuracy_control", "delta_accuracy_masked",
                   "delta_logprob_masked", "delta_logprob_control", "logprob_control"):
        assert column in table.columns
    torch.testing.assert_close(
        table["delta_logprob_masked"].tolist(),
        (table["logprob_masked"] - table["logprob_base"]).tolist(),
    )
    assert (table["delta_logprob_masked"].abs() > 0).all()  # 24 of 96 neurons off changes the model
    # prompt by prompt, drafted and replayed, the runs are what evaluate gives for each mask
    assert evaluate(tiny_llama, demo[:2], config, label="base").results == report.base.results
    assert evaluate(tiny_llama, demo[:2], config, mask=mask, label="masked").results == report.masked.results
    control_mask = mask.random_control(1)
    assert evaluate(tiny_llama, demo[:2], config, mask=control_mask).results == report.control.results
    back = AblationReport.load(report.save(tmp_path / "ablation.json"))
    assert back == report


def test_ablating_a_mask_of_ones_changes_nothing(tiny_llama, demo):
    config = EvalConfig(views=("noisy",), max_new_tokens=2,
                        prompt=PromptConfig(n_distractors=1, max_passage_tokens=SHORT))
    report = ablate(tiny_llama, demo[:1], config, NeuronMask.identity(tiny_llama), control_seed=None)
    assert report.control is None
    pairs = [(r.answer, r.logprob) for r in report.masked.results]
    assert pairs == [(r.answer, r.logprob) for r in report.base.results]
    assert (report.table()["delta_logprob_masked"] == 0).all()


def test_what_if_one_example(tiny_llama, demo):
    config = EvalConfig(max_new_tokens=2, prompt=PromptConfig(n_distractors=1, max_passage_tokens=SHORT))
    same = what_if(tiny_llama, demo[0], NeuronMask.identity(tiny_llama), config)
    assert [w.view for w in same] == list(config.views)
    assert all(w.answer_before == w.answer_after and w.logprob_before == w.logprob_after for w in same)
    grid = torch.zeros(2, 48, dtype=torch.bool)
    grid[:, ::2] = True
    changed = what_if(tiny_llama, demo[0], NeuronMask.silencing(NeuronSet(grid), tiny_llama), config,
                      views=("closed_book",))
    assert len(changed) == 1 and changed[0].logprob_after != changed[0].logprob_before


@pytest.mark.slow
def test_bundled_model_answers_an_easy_question_with_its_passage(smol):
    example = next(e for e in demo_examples() if e.id == "demo-02")  # capital of Australia
    prompt = build_prompt(example, "relevant", PromptConfig(), smol.tokenizer, max_tokens=smol.cfg.n_ctx)
    answer = generate_answer(smol, prompt, max_new_tokens=16)
    assert answer.strip()
    assert "Canberra" in answer


def test_what_if_reuses_the_unmasked_side_and_stays_correct(tiny_llama, monkeypatch):
    """The second what-if with another mask computes only the masked answers, with equal results."""
    from neurorit import decoding, evaluation
    from neurorit.data import demo_examples
    from neurorit.masks import NeuronMask
    from neurorit.neurons import NeuronSet

    example = demo_examples()[0]
    config = evaluation.EvalConfig(views=("relevant",), max_new_tokens=3)
    mask_a = NeuronMask.silencing(NeuronSet.from_neurons([(0, 1)], 2, 48), tiny_llama)
    mask_b = NeuronMask.silencing(NeuronSet.from_neurons([(1, 2)], 2, 48), tiny_llama)
    first = evaluation.what_if(tiny_llama, example, mask_a, config)
    calls = []
    real = evaluation.decode_and_score
    monkeypatch.setattr(evaluation, "decode_and_score", lambda *a, **k: calls.append(k.get("draft")) or real(*a, **k))
    second = evaluation.what_if(tiny_llama, example, mask_b, config)
    assert len(calls) == 1 and calls[0]  # only the masked side ran, drafted by the unmasked tokens
    assert (second[0].answer_before, second[0].logprob_before) == (first[0].answer_before, first[0].logprob_before)
    prompt = evaluation.build_prompt(example, "relevant", config.prompt, tiny_llama.tokenizer)
    assert (second[0].answer_before, second[0].logprob_before) == decoding.answer_and_logprob(tiny_llama, prompt, max_new_tokens=3)
    with mask_b.applied(tiny_llama):  # through the bridge and the mask's hooks
        hooked = decoding.answer_and_logprob(tiny_llama, prompt, max_new_tokens=3)
    assert second[0].answer_after == hooked[0]
    assert second[0].logprob_after == pytest.approx(hooked[1], abs=1e-4)


class _CountingModel:
    """The model, counting forward passes."""

    def __init__(self, model) -> None:  # type: ignore[no-untyped-def]
        self.model, self.calls = model, 0

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.calls += 1
        self.grad_enabled = getattr(self, "grad_enabled", False) or torch.is_grad_enabled()
        return self.model(*args, **kwargs)


def test_a_draft_gives_the_greedy_tokens_in_fewer_passes(tiny_llama, demo):
    """Speculative decoding with greedy verification: whatever the draft, the tokens are those of
    step-by-step decoding; a right draft costs one pass instead of one per token."""
    from neurorit.decoding import decode_and_score

    prompt = build_prompt(demo[0], "noisy", PromptConfig(n_distractors=2), tiny_llama.tokenizer)
    counting = _CountingModel(tiny_llama)
    text, logprob, ids = decode_and_score(counting, prompt, 8)
    assert len(ids) >= 4, ids
    assert counting.calls == 1 + len(ids) - 1  # prefix with gold scoring, one step per further token
    wrong = (ids[2] + 1) % tiny_llama.cfg.d_vocab
    for draft in (ids, ids[:2], ids[:2] + [wrong] + ids[3:], [wrong] * 6, ids + ids, [wrong]):
        counting.calls = 0
        assert decode_and_score(counting, prompt, 8, draft) == (text, logprob, ids), draft
        if draft == ids:
            assert counting.calls == 2  # prefix with gold scoring, the draft pass
    counting.calls = 0
    assert decode_and_score(counting, prompt, 2, ids)[2] == ids[:2]  # the limit still holds


def _greedy_from_scratch(model, prompt_ids, max_new_tokens, context=()):  # type: ignore[no-untyped-def]
    from neurorit.decoding import BridgeSteps, greedy_decode

    with torch.no_grad():
        steps = BridgeSteps(model)
        row = steps.prefill(prompt_ids, keep=1)[-1]
        return greedy_decode(model, steps, row, max_new_tokens, 10**6, context=context)


def test_prompt_lookup_proposes_from_the_context_and_keeps_the_greedy_tokens(tiny_llama, demo):
    from neurorit.decoding import lookup_proposal

    assert lookup_proposal([5, 6, 7, 8, 5, 6, 9, 1], [3, 5, 6], 2) == [9, 1]  # the latest place of the longest tail
    assert lookup_proposal([5, 6, 7, 8], [4, 6], 3) == [7, 8] and lookup_proposal([5, 6, 7], [9], 2) == []
    prompt = build_prompt(demo[1], "relevant", PromptConfig(), tiny_llama.tokenizer).token_ids
    counting = _CountingModel(tiny_llama)
    plain = _greedy_from_scratch(counting, prompt, 10)
    steps = counting.calls
    assert len(plain) == 10 and steps == 10  # the prefix, then one pass per further token
    for context in ([1, 2] + plain[:4] + [3] + plain[4:] + [4], list(reversed(plain)), plain[:3] * 3):
        counting.calls = 0
        assert _greedy_from_scratch(counting, prompt, 10, context) == plain, context
        if context[2:6] == plain[:4]:
            assert counting.calls < steps  # right guesses saved passes


def test_generation_paths_build_no_autograd_graph(tiny_llama, demo):
    from neurorit.decoding import decode_and_score, generate_tokens

    prompt = build_prompt(demo[0], "relevant", PromptConfig(), tiny_llama.tokenizer)
    counting = _CountingModel(tiny_llama)
    generate_tokens(counting, prompt.token_ids, max_new_tokens=3)
    generate_answer(counting, prompt, max_new_tokens=3)
    decode_and_score(counting, prompt, 3)
    assert counting.calls >= 6 and not counting.grad_enabled
