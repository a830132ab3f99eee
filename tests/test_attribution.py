"""IG against captum (an independent implementation), the completeness axiom, and config checks."""

import pytest
import torch

from neurorit.attribution import AttributionConfig, attribute_neurons, preview_neurons, quadrature_rule
from neurorit.configs import from_dict, to_dict
from neurorit.errors import ConfigError
from neurorit.reference import captum_layer_ig
from scale import assert_close_in_scale


def _ids(tokenizer, prompt: str, answer: str):
    return tokenizer(prompt).input_ids, tokenizer(answer, add_special_tokens=False).input_ids


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("quadrature", ["midpoint", "gauss_legendre"])
@pytest.mark.parametrize("baseline", ["zero", "no_context"])
def test_last_position_ig_matches_captum(tiny_model, tokenizer, quadrature, baseline):
    prompt, answer = _ids(tokenizer, "Passage: the sky over Paris is blue today. Question: what colour is the sky? Answer:", " blue sky")
    closed = tokenizer("Question: what colour is the sky? Answer:").input_ids
    config = AttributionConfig(n_steps=7, quadrature=quadrature, baseline=baseline, max_rows_per_pass=5)
    scores = attribute_neurons(tiny_model, prompt, answer, config, baseline_ids=closed)
    for layer in range(tiny_model.cfg.n_layers):
        base = None
        if baseline == "no_context":
            from neurorit.attribution import baseline_activations

            base = baseline_activations(tiny_model, [layer], tiny_model.cfg.d_mlp, config, closed)[layer]
        ref = captum_layer_ig(tiny_model, prompt, answer, layer, config, baseline=base)
        assert _rel(scores.scores[layer], ref) < 1e-5


@pytest.mark.parametrize("target", ["answer", "first_token"])
def test_all_position_ig_matches_captum(tiny_model, tokenizer, target):
    prompt, answer = _ids(tokenizer, "Passage: water boils at one hundred degrees. Question: when does water boil?", " at 100 degrees")
    config = AttributionConfig(baseline="zero", n_steps=5, positions="all", target=target, max_rows_per_pass=4)
    scores = attribute_neurons(tiny_model, prompt, answer, config)
    targets = answer[:1] if target == "first_token" else answer
    for layer in range(tiny_model.cfg.n_layers):
        ref = captum_layer_ig(tiny_model, prompt, targets, layer, config)
        assert _rel(scores.scores[layer], ref) < 1e-5


def test_completeness_gap_small_with_20_midpoint_steps(tiny_model, tokenizer):
    prompt, answer = _ids(tokenizer, "Passage: Rome is the capital of Italy. Question: capital of Italy?", " Rome")
    scores = attribute_neurons(tiny_model, prompt, answer, AttributionConfig(baseline="zero", n_steps=20))
    assert scores.max_relative_gap() < 0.01
    # the gap is measured, not assumed: with one step it is clearly larger
    coarse = attribute_neurons(tiny_model, prompt, answer, AttributionConfig(baseline="zero", n_steps=1))
    assert coarse.max_relative_gap() > scores.max_relative_gap()


def test_chunking_does_not_change_scores(tiny_llama, tokenizer):
    prompt, answer = _ids(tokenizer, "Passage: cats purr when content. Question: what do cats do?", " they purr")
    a = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=6, max_rows_per_pass=1))
    b = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=6, max_rows_per_pass=100))
    assert_close_in_scale(a.scores, b.scores, rel=1e-4)


def test_layer_subset_only_scores_those_layers(tiny_llama, tokenizer):
    prompt, answer = _ids(tokenizer, "Question: what is two plus two? Answer:", " four")
    scores = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=4, layers=(1,)))
    assert scores.layers == (1,)
    assert torch.count_nonzero(scores.scores[0]) == 0 and torch.count_nonzero(scores.scores[1]) > 0
    assert torch.isnan(scores.gap[0]) and not torch.isnan(scores.gap[1])


def test_preview_is_gradient_times_activation(tiny_llama, tokenizer):
    prompt, answer = _ids(tokenizer, "Question: name a red fruit. Answer:", " apple")
    preview = preview_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero"))
    # one midpoint step at alpha=1 is the same estimate (gradient at the real activation)
    ig_at_end = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=1))
    assert preview.method == "preview" and preview.scores.shape == ig_at_end.scores.shape
    assert torch.corrcoef(torch.stack([preview.scores.flatten(), ig_at_end.scores.flatten()]))[0, 1] > 0.5


def test_quadrature_weights_integrate_polynomials_exactly():
    for rule in ("midpoint", "gauss_legendre"):
        alphas, weights = quadrature_rule(10, rule)
        torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close((weights * alphas).sum(), torch.tensor(0.5, dtype=torch.float64))
    alphas, weights = quadrature_rule(4, "gauss_legendre")
    torch.testing.assert_close((weights * alphas**7).sum(), torch.tensor(1 / 8, dtype=torch.float64))


def test_mining_config_round_trip_and_errors():
    config = AttributionConfig(layers=(3, 1, 1), n_steps=10, quadrature="gauss_legendre")
    assert config.layers == (1, 3)
    assert from_dict(AttributionConfig, to_dict(config)) == config
    assert AttributionConfig(max_rows_per_pass=8).key() == AttributionConfig(max_rows_per_pass=99).key()
    assert AttributionConfig(n_steps=8).key() != AttributionConfig(n_steps=9).key()
    with pytest.raises(ConfigError, match="n_steps"):
        AttributionConfig(n_steps=0)
    with pytest.raises(ConfigError, match="baseline"):
        AttributionConfig(baseline="mean")
    with pytest.raises(ConfigError, match="no_context"):
        AttributionConfig(baseline="no_context", positions="all")
    with pytest.raises(ConfigError, match="unknown field"):
        from_dict(AttributionConfig, {"steps": 3})


def test_layers_outside_the_model_are_refused(tiny_llama, tokenizer):
    prompt, answer = _ids(tokenizer, "Question: hi? Answer:", " hello")
    with pytest.raises(ConfigError, match="has 2 layers"):
        attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", layers=(5,)))


def test_refinement_meets_the_gap_it_asks_for(tiny_llama, tokenizer):
    prompt, answer = _ids(tokenizer, "Passage: the Nile flows north. Question: which way does the Nile flow?", " north")
    coarse = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=1))
    assert coarse.max_relative_gap() > 1e-4
    refined = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=1, refine_gap=1e-4, max_steps=512))
    assert refined.max_relative_gap() <= 1e-4
    assert refined.config["steps_per_layer"]  # some layer needed more steps
    # refined scores equal a direct run at the step count refinement settled on
    layer, steps = next(iter(refined.config["steps_per_layer"].items()))
    direct = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=steps))
    assert_close_in_scale(refined.scores[int(layer)], direct.scores[int(layer)], rel=1e-4)


def test_own_answer_target_attributes_the_generated_tokens(tiny_llama, tokenizer):
    from neurorit.decoding import generate_tokens

    prompt, answer = _ids(tokenizer, "Question: what is the colour of grass? Answer:", " green")
    own = generate_tokens(tiny_llama, prompt, max_new_tokens=3)
    scores = attribute_neurons(tiny_llama, prompt, answer, AttributionConfig(baseline="zero", n_steps=4, target="own_answer", own_answer_max_tokens=3))
    assert scores.config["target_ids"] == own
    direct = attribute_neurons(tiny_llama, prompt, own, AttributionConfig(baseline="zero", n_steps=4))
    torch.testing.assert_close(scores.scores, direct.scores)


def test_completeness_with_the_no_context_baseline(tiny_model, tokenizer):
    prompt, answer = _ids(tokenizer, "Passage: Rome is the capital of Italy. Question: capital of Italy?", " Rome")
    closed = tokenizer("Question: capital of Italy?").input_ids
    scores = attribute_neurons(tiny_model, prompt, answer, AttributionConfig(n_steps=20), baseline_ids=closed)
    assert scores.max_relative_gap() < 0.01
    with pytest.raises(ConfigError, match="closed-book"):
        attribute_neurons(tiny_model, prompt, answer, AttributionConfig(n_steps=20))
