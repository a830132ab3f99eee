"""End-to-end checks on the bundled SmolLM2-135M-Instruct (slow: CI runs them)."""

import pytest
import torch

from neurorit.attribution import AttributionConfig, attribute_neurons
from neurorit.data import demo_examples
from neurorit.masks import NeuronMask, bake
from neurorit.mining import MinedNeurons, mine, mined_dir, prompt_for
from neurorit.neurons import SelectionRule
from neurorit.prompts import PromptConfig
from neurorit.reference import captum_layer_ig
from scale import assert_close_in_scale

pytestmark = pytest.mark.slow


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def demo_prompts(smol):
    example = demo_examples()[0]
    config = PromptConfig(n_distractors=2)
    return prompt_for(smol, example, "noisy", config), prompt_for(smol, example, "closed_book", config)


def test_ig_matches_captum_on_the_bundled_model(smol, demo_prompts):
    prompt, closed = demo_prompts
    config = AttributionConfig(n_steps=20, layers=(0, 14, 29))
    ours = attribute_neurons(smol, prompt.token_ids, prompt.answer_ids, config, baseline_ids=closed.token_ids)
    from neurorit.attribution import baseline_activations

    for layer in config.layers:
        base = baseline_activations(smol, [layer], smol.cfg.d_mlp, config, closed.token_ids)[layer]
        ref = captum_layer_ig(smol, prompt.token_ids, prompt.answer_ids, layer, config, baseline=base, internal_batch_size=20)
        rel = (ours.scores[layer].double() - ref.double()).abs().max() / ref.double().abs().max()
        assert rel < 1e-5, f"layer {layer}: relative difference {float(rel):.2e}"


def test_completeness_under_one_percent_on_every_layer(smol, demo_prompts):
    prompt, closed = demo_prompts
    scores = attribute_neurons(smol, prompt.token_ids, prompt.answer_ids, AttributionConfig(n_steps=20), baseline_ids=closed.token_ids)
    assert scores.layers == tuple(range(30))
    worst = int(torch.nan_to_num(scores.relative_gap, nan=-1).argmax())
    assert scores.max_relative_gap() < 0.01, f"layer {worst}: {float(scores.relative_gap[worst]):.2%}"


def test_zero_baseline_reaches_one_percent_with_refinement(smol, demo_prompts):
    prompt, _ = demo_prompts
    plain = attribute_neurons(smol, prompt.token_ids, prompt.answer_ids, AttributionConfig(n_steps=20, baseline="zero", layers=(0, 1)))
    refined = attribute_neurons(
        smol, prompt.token_ids, prompt.answer_ids,
        AttributionConfig(n_steps=20, baseline="zero", layers=(0, 1), refine_gap=0.01, max_steps=640),
    )
    assert refined.max_relative_gap() < 0.01
    assert refined.max_relative_gap() <= plain.max_relative_gap()


def test_mine_mask_bake_round_trip_on_the_bundled_model(smol, isolated_cache, tmp_path):
    examples = demo_examples()[:2]
    mined = mine(smol, examples, AttributionConfig(n_steps=8), SelectionRule(scope="layer", threshold=0.5),
                 PromptConfig(n_distractors=2))
    assert len(mined.relevant) > 0 and len(mined.irrelevant) > 0
    again = MinedNeurons.load(mined_dir(mined), smol)
    assert again.irrelevant_exclusive == mined.irrelevant_exclusive
    mask = NeuronMask.silencing(mined.irrelevant_exclusive, smol, provenance={"test": True})
    mask.save(tmp_path / "mask")
    loaded = NeuronMask.load(tmp_path / "mask", smol)
    assert torch.equal(loaded.scale, mask.scale)
    out = bake(loaded, smol, tmp_path / "baked")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    prompt = prompt_for(smol, examples[0], "noisy", PromptConfig(n_distractors=2))
    ids = torch.tensor([list(prompt.token_ids)])
    with torch.no_grad(), loaded.applied(smol):
        hooked = smol(ids)
    with torch.no_grad():
        baked = plain(ids).logits
    assert_close_in_scale(baked, hooked, rel=1e-4)


def test_speculative_decoding_gives_the_step_by_step_answers(smol):
    """Prompt lookup and the unmasked draft only save passes: on the bundled model, with and
    without a mask, the answers and gold log-probs equal plain one-token-a-step decoding."""
    from neurorit import decoding, evaluation
    from neurorit.neurons import NeuronSet

    config = evaluation.EvalConfig(views=("relevant", "noisy", "irrelevant"))
    grid = torch.zeros(int(smol.cfg.n_layers), int(smol.cfg.d_mlp), dtype=torch.bool)
    grid[10:20, :64] = True  # enough to change answers
    mask = NeuronMask.silencing(NeuronSet(grid, "test"), smol)

    def step_by_step(prompt):  # type: ignore[no-untyped-def]
        with torch.no_grad():  # through the bridge (and the mask's hooks when applied)
            steps = decoding.BridgeSteps(smol)
            row = steps.prefill(prompt.token_ids, keep=1)[-1]
            ids = decoding.greedy_decode(smol, steps, row, config.max_new_tokens, 10**6)
        return smol.tokenizer.decode(ids, skip_special_tokens=True).lstrip().split("\n")[0].strip()

    changed = 0
    for example in demo_examples()[:4]:
        for prompt in evaluation.what_if_prompts(smol, example, config, None):
            text, logprob, ids = decoding.decode_and_score(smol, prompt, config.max_new_tokens)
            assert text == step_by_step(prompt)
            with mask.applied(smol):
                masked = decoding.decode_and_score(smol, prompt, config.max_new_tokens, draft=ids)
                assert masked[0] == step_by_step(prompt)
                assert masked[1] == pytest.approx(decoding.answer_logprob(smol, prompt), abs=1e-4)
            changed += masked[0] != text
    assert changed >= 2  # the drafts were wrong sometimes, and the answers still right
