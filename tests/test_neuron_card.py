"""The neuron card against direct computations: weights through the unembedding, masked runs, scipy."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from cli_harness import ok, reason
from neurorit.activations import build_index
from neurorit.data import demo_examples
from neurorit.errors import ConfigError, ModelMismatchError
from neurorit.masks import NeuronMask
from neurorit.mining import MinedNeurons
from neurorit.models import model_identity, neuron_site
from neurorit.neuron_card import (
    neuron_card, neuron_logit_weights, random_other_neuron, rank_test, switch_off_alone,
    token_effects,
)
from neurorit.neurons import NeuronSet
from neurorit.prompts import PromptConfig, build_prompt
from neurorit.readout import promoted_token_ids
from scale import assert_close_in_scale

CONFIG = PromptConfig(n_distractors=2, max_passage_tokens=40)
VIEWS = ("relevant", "noisy", "irrelevant", "closed_book")


@pytest.fixture(scope="module")
def examples():
    return demo_examples()[:4]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def indexed(request, tiny_llama, tiny_gpt2, examples):
    model = tiny_llama if request.param == "llama" else tiny_gpt2
    index = build_index(model, examples[:3], views=VIEWS, prompt_config=CONFIG, top_k=4, window=2, use_cache=False)
    return model, index


def _direct_logits(model, layer: int, index: int) -> torch.Tensor:
    """W_out row of the neuron times W_U, read from the Hugging Face modules themselves."""
    hf = model.original_model
    if model.cfg.architecture == "GPT2LMHeadModel":
        row = hf.transformer.h[layer].mlp.c_proj.weight[index]  # Conv1D: [d_mlp, d_model]
    else:
        row = hf.model.layers[layer].mlp.down_proj.weight[:, index]  # Linear: [d_model, d_mlp]
    return (hf.lm_head.weight.detach().float() @ row.detach().float())[: len(model.tokenizer)]


def test_promoted_and_suppressed_tokens_equal_a_direct_w_out_w_u_product(indexed):
    model, _ = indexed
    for layer, index in ((0, 0), (1, 17), (1, 47)):
        want = _direct_logits(model, layer, index)
        assert_close_in_scale(neuron_logit_weights(model, layer, index), want, rel=1e-6)
        promoted, suppressed = token_effects(model, layer, index, k=6)
        assert [e.token_id for e in promoted] == want.topk(6).indices.tolist()
        assert [e.token_id for e in suppressed] == want.topk(6, largest=False).indices.tolist()
        assert_close_in_scale(torch.tensor([e.logit for e in promoted]), want.topk(6).values, rel=1e-6)
        assert promoted[0].token == model.tokenizer.decode([promoted[0].token_id])
        assert promoted_token_ids(model, [(layer, index)], k=6)[(layer, index)] == want.topk(6).indices.tolist()


def test_card_reads_contexts_and_graded_activation_from_the_index(indexed, examples):
    model, index = indexed
    card = neuron_card(model, 1, 7, activation_index=index)
    hits = index.top_hits(1, 7)
    assert [c.activation for c in card.contexts] == [h.value for h in hits]
    for c, h in zip(card.contexts, hits):
        assert (c.example_id, c.view, c.position, c.token_id, c.passage) == (h.example_id, h.view, h.position,
                                                                             h.token_id, h.passage)
        assert c.tokens[c.center] == model.tokenizer.decode([c.token_id]) == c.token
        assert c.activations[c.center] == pytest.approx(c.activation, rel=1e-3)  # float16 copy of the hit
        assert c.regions[c.center] == c.region
    last = index.last_token[:, :, 1, 7]
    for v, row in enumerate(card.by_view):
        x = last[:, v].double()
        assert row.view == VIEWS[v] and row.n == 3 and row.values == tuple(x.tolist())
        assert row.mean == pytest.approx(float(x.mean()), rel=1e-12)
        assert row.median == pytest.approx(float(np.quantile(x.numpy(), 0.5)), rel=1e-12)
    assert card.by_region == index.region_stats(1, 7)
    test = sps.mannwhitneyu(last[:, 0].double().numpy(), last[:, 2].double().numpy(), alternative="two-sided")
    assert card.rank_test.u == pytest.approx(float(test.statistic)) and card.rank_test.p_value == pytest.approx(float(test.pvalue))
    assert card.rank_test.rank_biserial == pytest.approx(2 * float(test.statistic) / 9 - 1)
    assert card.direct is None and card.switch_off is None and card.ig is None and card.masks == ()
    text = json.dumps(card.to_json(), allow_nan=False)
    assert json.loads(text)["layer"] == 1 and json.loads(text)["contexts"][0]["token_id"] == hits[0].token_id


def test_rank_test_effect_size_on_known_samples():
    assert rank_test([3.0, 4.0, 5.0], [0.0, 1.0]).rank_biserial == 1.0
    assert rank_test([0.0, 1.0], [3.0, 4.0, 5.0]).rank_biserial == -1.0
    same = rank_test([1.0, 1.0], [1.0, 1.0])
    assert same.rank_biserial == 0.0 and same.p_value == 1.0
    assert rank_test([], [1.0]) is None


def test_direct_effect_is_activation_times_the_gold_logit_weight(indexed, examples):
    model, index = indexed
    site = neuron_site(model)
    for example, source in ((examples[1], "index"), (examples[3], "forward")):  # examples[3] is not indexed
        card = neuron_card(model, 0, 11, activation_index=index, example=example)
        prompt = build_prompt(example, "noisy", CONFIG, model.tokenizer)
        got = {}
        with torch.no_grad(), model.hooks(fwd_hooks=[(site.hook_name(0), lambda x, hook: got.update(a=x[0, -1, 11].item()))]):
            model(torch.tensor([list(prompt.token_ids)]))
        gold = prompt.answer_ids[0]
        weight = float(_direct_logits(model, 0, 11)[gold])
        d = card.direct
        assert (d.example_id, d.view, d.gold_token_id, d.source) == (example.id, "noisy", gold, source)
        assert d.activation == pytest.approx(got["a"], rel=1e-6, abs=1e-7)
        assert d.weight == pytest.approx(weight, rel=1e-5, abs=1e-7)
        assert d.contribution == pytest.approx(d.activation * d.weight, rel=1e-12)


def _manual_logprob(model, prompt, zero: tuple[int, int] | None) -> float:
    """Gold-answer log-prob with one neuron zeroed by a hand-written hook (no NeuronMask)."""
    site = neuron_site(model)

    def off(x, hook):
        x = x.clone()
        x[..., zero[1]] = 0.0
        return x

    hooks = [(site.hook_name(zero[0]), off)] if zero else []
    tokens = torch.tensor([list(prompt.token_ids + prompt.answer_ids)])
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)[0].float()
    n = prompt.n_tokens
    logp = logits[n - 1 : n - 1 + len(prompt.answer_ids)].log_softmax(-1)
    return float(logp.gather(-1, torch.tensor(prompt.answer_ids)[:, None]).sum())


def test_switch_off_alone_equals_a_manual_masked_run(indexed, examples):
    model, _ = indexed
    layer, index = 1, 9
    result = switch_off_alone(model, layer, index, examples[:3], view="noisy", prompt_config=CONFIG, seed=3)
    other = random_other_neuron(layer, index, int(model.cfg.d_mlp), 3)
    assert result.random_index == other != index and 0 <= other < int(model.cfg.d_mlp)
    assert random_other_neuron(layer, index, int(model.cfg.d_mlp), 3) == other  # seeded
    want, want_random = [], []
    for example in examples[:3]:
        prompt = build_prompt(example, "noisy", CONFIG, model.tokenizer)
        base = _manual_logprob(model, prompt, None)
        want.append(_manual_logprob(model, prompt, (layer, index)) - base)
        want_random.append(_manual_logprob(model, prompt, (layer, other)) - base)
    assert result.example_ids == tuple(e.id for e in examples[:3])
    assert_close_in_scale(torch.tensor(result.deltas), torch.tensor(want), rel=1e-4)
    assert_close_in_scale(torch.tensor(result.random_deltas), torch.tensor(want_random), rel=1e-4)
    assert max(abs(x) for x in want) > 0  # the neuron matters on the tiny model: the check is not vacuous
    assert result.neuron.mean == pytest.approx(float(np.mean(result.deltas)), rel=1e-12)
    assert result.neuron.low <= result.neuron.mean <= result.neuron.high and result.neuron.n == 3
    assert result.versus_random.difference == pytest.approx(float(np.mean(result.deltas) - np.mean(result.random_deltas)))


def test_ig_record_and_masks_holding_the_neuron(indexed):
    model, index = indexed
    ident = model_identity(model)
    shape = (ident.n_layers, ident.d_mlp)
    relevant = torch.zeros(shape, dtype=torch.bool)
    irrelevant = torch.zeros(shape, dtype=torch.bool)
    relevant[1, 4] = irrelevant[1, 4] = irrelevant[0, 2] = True
    grid = lambda v: torch.full(shape, v)  # noqa: E731
    mined = MinedNeurons(
        relevant=NeuronSet(relevant, "relevant"), irrelevant=NeuronSet(irrelevant, "irrelevant"),
        relevant_frequency=grid(0.25), irrelevant_frequency=grid(0.75), relevant_mean=grid(0.5),
        irrelevant_mean=grid(-1.5), example_ids=("a", "b"), model=ident,
    )
    holding = NeuronMask.silencing(NeuronSet.from_neurons([(1, 4), (0, 0)], *shape, "hand"), model)
    other = NeuronMask.silencing(NeuronSet.from_neurons([(0, 2)], *shape, "other"), model, scale=2.0)
    card = neuron_card(model, 1, 4, activation_index=index, mined=mined, masks={"mine": holding, "theirs": other})
    assert card.ig.sets == ("relevant", "irrelevant", "shared")
    assert (card.ig.relevant_mean, card.ig.irrelevant_mean, card.ig.relevant_frequency, card.ig.n_examples) == (
        0.5, -1.5, 0.25, 2)
    assert [(m.name, m.scale, m.n_neurons) for m in card.masks] == [("mine", 0.0, 2)]
    card = neuron_card(model, 0, 2, activation_index=index, mined=mined, masks=[holding, other])
    assert card.ig.sets == ("irrelevant", "irrelevant-exclusive")
    assert len(card.masks) == 1 and card.masks[0].scale == 2.0 and card.masks[0].name.startswith("other")


def test_card_refuses_another_model_and_a_neuron_out_of_range(indexed, tiny_llama, tiny_gpt2):
    model, index = indexed
    other = tiny_gpt2 if model is tiny_llama else tiny_llama
    with pytest.raises(ModelMismatchError) as err:
        neuron_card(other, 0, 0, activation_index=index)
    assert index.model.fingerprint in str(err.value) and model_identity(other).fingerprint in str(err.value)
    with pytest.raises(ConfigError, match="neuron 0:48 is outside the model: it has layers 0-1 and neurons 0-47"):
        neuron_card(model, 0, 48, activation_index=index)
    with pytest.raises(ConfigError, match="neuron 2:0 is outside the model"):
        token_effects(model, 2, 0)


def test_card_with_everything_serialises_to_strict_json(indexed, examples):
    model, index = indexed
    card = neuron_card(model, 1, 2, activation_index=index, examples=examples, example=examples[0],
                       n_switch_off=2)
    data = json.loads(json.dumps(card.to_json(), allow_nan=False))
    assert data["switch_off"]["example_ids"] == [examples[0].id, examples[1].id]
    assert data["direct"]["source"] == "index" and len(data["promoted"]) == 10
    assert math.isfinite(data["switch_off"]["neuron"]["mean"])


def test_an_example_without_the_view_leaves_a_note_not_a_failure(indexed, examples):
    model, index = indexed
    lonely = examples[0].with_passages(examples[0].relevant_passages)  # no irrelevant passage
    card = neuron_card(model, 0, 1, activation_index=index, examples=[lonely], example=lonely, view="irrelevant")
    assert card.direct is None and card.switch_off is None and card.contexts
    assert any(n.startswith("no direct effect:") and "no irrelevant passage" in n for n in card.notes)
    assert any(n.startswith("no switch-off test: none of the 1 examples") for n in card.notes)


def test_cli_card_prints_the_main_facts_and_writes_json(tiny_llama_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    assert "no activation index" in reason(capsys, "card", "1:3", "--model", tiny_llama_dir, "--device", "cpu")
    ok(capsys, "index", "--model", tiny_llama_dir, "--device", "cpu", "--data", "demo", "--limit", "3", "--top-k", "3",
       "--quiet")
    out = ok(capsys, "card", "1:3", "--model", tiny_llama_dir, "--device", "cpu", "--data", "demo", "--limit", "3",
             "--switch-off", "2", "--json", tmp_path / "card.json")
    for fact in ("neuron 1:3 of tiny-llama", "top contexts:", "last-token activation by view", "Mann-Whitney",
                 "promotes:", "suppresses:", "direct effect on demo-01", "switched off alone (noisy, 2 examples)"):
        assert fact in out, out
    card = json.loads((tmp_path / "card.json").read_text())
    assert (card["layer"], card["index"], len(card["contexts"])) == (1, 3, 3)
    assert "outside the model" in reason(capsys, "card", "1:99", "--model", tiny_llama_dir,
                                                           "--device", "cpu")
    assert "a neuron is written layer:index" in reason(capsys, "card", "1:3,1:4", "--model", tiny_llama_dir)
    folder = next((tmp_path / "cache" / "activations").iterdir())
    out = ok(capsys, "card", "0:0", "--model", tiny_llama_dir, "--device", "cpu", "--index", folder)
    assert "neuron 0:0" in out and "switched off" not in out
