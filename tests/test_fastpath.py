"""The fast path (neurorit/fastpath.py) against its oracle, the hooked bridge: same logits, with and
without neuron scales, across cache steps, crops and prefill replay; and it steps aside whenever it
could not reproduce the model (hooks, adapters, other architectures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurorit import decoding, evaluation, fastpath
from neurorit.data import demo_examples
from neurorit.masks import NeuronMask
from neurorit.models import forget_identity, load_model, model_identity
from neurorit.neurons import NeuronSet
from scale import assert_close_in_scale



@pytest.fixture
def demo():  # type: ignore[no-untyped-def]
    return demo_examples()[:3]


def _bridge_logits(model, ids, mask=None):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        if mask is None:
            return model(torch.tensor([list(ids)]))[0]
        with mask.applied(model):
            return model(torch.tensor([list(ids)]))[0]


def _mask(model, pairs, value=0.0):  # type: ignore[no-untyped-def]
    ident = model_identity(model)
    neurons = NeuronSet.from_neurons(pairs, ident.n_layers, ident.d_mlp)
    return NeuronMask.silencing(neurons, ident, scale=value)


@pytest.fixture(scope="module")
def llama_variant(tmp_path_factory, tokenizer):  # type: ignore[no-untyped-def]
    """A tiny Llama with what the bundled one lacks: llama3 rotary scaling, attention and MLP
    biases, an untied unembedding."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=1024, tie_word_embeddings=False,
        attention_bias=True, mlp_bias=True, initializer_range=0.2,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    for name, param in model.named_parameters():  # biases start at zero: make them matter
        if name.endswith("bias"):
            torch.nn.init.normal_(param, std=0.2)
    path = tmp_path_factory.mktemp("models") / "tiny-llama-variant"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return load_model(str(path), device="cpu", dtype="float32")


@pytest.fixture(params=["tiny", "variant"])
def llama(request, tiny_llama, llama_variant):  # type: ignore[no-untyped-def]
    return tiny_llama if request.param == "tiny" else llama_variant


def test_fast_forward_equals_the_bridge_with_and_without_scales(llama, demo):  # type: ignore[no-untyped-def]
    assert fastpath.why_not(llama) is None
    ids = evaluation.build_prompt(demo[0], "noisy", evaluation.PromptConfig(n_distractors=2), llama.tokenizer).token_ids
    fast = fastpath.of(llama)
    for mask in (None, _mask(llama, [(0, 1), (0, 7), (1, 3)]), _mask(llama, [(1, i) for i in range(20)], value=2.0)):
        scale = None if mask is None else mask.scale
        with torch.no_grad():
            got = fast.forward(ids, fast.new_cache(8), scale=scale, keep=len(ids))
        assert_close_in_scale(got, _bridge_logits(llama, ids, mask), rel=1e-4)


def test_cache_steps_and_crops_equal_one_forward(llama, demo):  # type: ignore[no-untyped-def]
    """Prefill a prefix, extend in uneven chunks (one past the buffer's size), crop a wrong guess and
    extend again: every position's logits equal a single forward over the final sequence."""
    ids = evaluation.build_prompt(demo[1], "relevant", evaluation.PromptConfig(), llama.tokenizer).token_ids[:60]
    fast = fastpath.of(llama)
    scale = _mask(llama, [(0, 2), (1, 5)]).scale
    with torch.no_grad():
        cache = fast.new_cache(10)  # grows as needed
        pieces = [fast.forward(ids[:30], cache, scale=scale, keep=30)]
        pieces.append(fast.forward(ids[30:31], cache, scale=scale))
        fast.forward([7, 8, 9], cache, scale=scale, keep=3)  # proposals the model turned down
        cache.crop_last(3)
        pieces.append(fast.forward(ids[31:45], cache, scale=scale, keep=14))
        pieces.append(fast.forward(ids[45:], cache, scale=scale, keep=len(ids) - 45))
    assert cache.n == len(ids)
    assert_close_in_scale(torch.cat(pieces), _bridge_logits(llama, ids, _mask(llama, [(0, 2), (1, 5)])), rel=1e-4)


def test_replay_starts_the_masked_prefill_at_the_lowest_masked_layer(llama, demo):  # type: ignore[no-untyped-def]
    ids = evaluation.build_prompt(demo[2], "relevant", evaluation.PromptConfig(), llama.tokenizer).token_ids
    fast = fastpath.of(llama)
    top = fast.n_layers - 1
    unmasked = fastpath.FastSteps(fast, record=True)
    with torch.no_grad():
        unmasked.prefill(ids, keep=1)
        record = unmasked.record
        assert record is not None and record.resid.shape == (fast.n_layers, len(ids), fast.d_model)
        scale = _mask(llama, [(top, 3)]).scale
        replayed = fastpath.FastSteps(fast, scale, replay=record)
        plain = fastpath.FastSteps(fast, scale)
        calls = []
        real_attend = fast._attend
        fast._attend = lambda *a: calls.append(1) or real_attend(*a)  # type: ignore[method-assign]
        try:
            got = replayed.prefill(ids, keep=4)
        finally:
            del fast._attend
        want = plain.prefill(ids, keep=4)
        assert_close_in_scale(got, want, rel=1e-4)
        assert len(calls) == 1  # only the top layer ran
        n = len(ids)
        assert_close_in_scale(replayed.cache.keys[:, :, :n], plain.cache.keys[:, :, :n], rel=1e-4)
        assert_close_in_scale(replayed.extend([5, 6]), plain.extend([5, 6]), rel=1e-4)  # decoding goes on alike
        with pytest.raises(AssertionError):  # a record of other tokens is refused
            fast.forward(ids[:-1], fast.new_cache(4), scale=scale, replay=record, first_layer=1)


def test_what_if_on_the_fast_path_equals_the_bridge(tiny_llama, monkeypatch):  # type: ignore[no-untyped-def]
    config = evaluation.EvalConfig(views=("relevant", "noisy", "irrelevant"), max_new_tokens=6)
    mask = _mask(tiny_llama, [(0, i) for i in range(0, 48, 3)] + [(1, 4)])
    for example in demo_examples()[:3]:
        decoding.ANSWER_CACHE.clear()
        fast = evaluation.what_if(tiny_llama, example, mask, config)
        assert len(decoding.ANSWER_CACHE.prefills) == len(fast)  # the unmasked prefills were recorded for replay
        monkeypatch.setenv("NEURORIT_FASTPATH", "0")
        decoding.ANSWER_CACHE.clear()
        hooked = evaluation.what_if(tiny_llama, example, mask, config)
        monkeypatch.delenv("NEURORIT_FASTPATH")
        for a, b in zip(fast, hooked, strict=True):
            assert (a.view, a.answer_before, a.answer_after) == (b.view, b.answer_before, b.answer_after)
            assert a.logprob_before == pytest.approx(b.logprob_before, abs=1e-4)
            assert a.logprob_after == pytest.approx(b.logprob_after, abs=1e-4)


def test_the_fast_path_steps_aside_when_it_cannot_reproduce_the_model(tiny_llama, tiny_gpt2, monkeypatch):  # type: ignore[no-untyped-def]
    assert fastpath.why_not(tiny_llama) is None
    assert "GPT2LMHeadModel" in fastpath.why_not(tiny_gpt2)
    mask = _mask(tiny_llama, [(1, 1)])
    with mask.applied(tiny_llama):
        assert "hooks" in fastpath.why_not(tiny_llama)  # a mask applied with hooks is never skipped
    with tiny_llama.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda x, hook: x)]):
        assert "hooks" in fastpath.why_not(tiny_llama)
    assert fastpath.why_not(tiny_llama) is None
    handle = tiny_llama.original_model.model.norm.register_forward_hook(lambda *a: None)  # a user's torch hook
    try:
        assert "hooks" in fastpath.why_not(tiny_llama)
    finally:
        handle.remove()
    monkeypatch.setenv("NEURORIT_FASTPATH", "0")
    assert "NEURORIT_FASTPATH" in fastpath.why_not(tiny_llama)


def test_compatibility_mode_turns_the_fast_path_off(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    model.enable_compatibility_mode(disable_warnings=True)  # folds norms into weights
    assert "compatibility mode" in fastpath.why_not(model)


def test_adapters_turn_the_fast_path_off(tiny_llama_dir: Path):  # type: ignore[no-untyped-def]
    from neurorit.training.config import TrainConfig
    from neurorit.training.methods import inject_lora

    model = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    assert fastpath.why_not(model) is None
    inject_lora(model, TrainConfig(method="lora"))
    assert "adapters" in fastpath.why_not(model)


def test_weights_written_in_place_show_through_and_change_the_identity(tiny_llama_dir: Path, demo):  # type: ignore[no-untyped-def]
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="float32")
    ids = evaluation.build_prompt(demo[0], "relevant", evaluation.PromptConfig(), model.tokenizer).token_ids[:40]
    before = model_identity(model)
    assert model_identity(model) is before  # remembered while nothing changes
    fast = fastpath.of(model)
    with torch.no_grad():
        model.original_model.model.layers[1].mlp.down_proj.weight.mul_(3.0)  # what an optimizer step does
        got = fastpath.of(model).forward(ids, fast.new_cache(8), keep=len(ids))
    assert_close_in_scale(got, _bridge_logits(model, ids), rel=1e-4)
    changed = model_identity(model)
    assert changed.fingerprint != before.fingerprint
    model.original_model.model.layers[0].mlp.up_proj.weight.data.mul_(2.0)  # no counter sees this
    assert model_identity(model) is changed
    forget_identity(model)
    assert model_identity(model).fingerprint != changed.fingerprint


@pytest.mark.slow
def test_bundled_model_fast_path_equals_the_bridge(smol):  # type: ignore[no-untyped-def]
    """On the real model: logits within 1e-4 (logit scale ~30), masked and not, and the greedy
    answers and gold log-probs of what_if equal through both paths."""
    grid = torch.zeros(int(smol.cfg.n_layers), int(smol.cfg.d_mlp), dtype=torch.bool)
    grid[8:20, :96] = True  # enough to change answers
    mask = NeuronMask.silencing(NeuronSet(grid, "test"), smol)
    config = evaluation.EvalConfig(views=("relevant", "noisy", "irrelevant"))
    fast = fastpath.of(smol)
    changed = 0
    for example in demo_examples()[:3]:
        prompts = evaluation.what_if_prompts(smol, example, config, None)
        ids = prompts[1].token_ids
        with torch.no_grad():
            got = fast.forward(ids, fast.new_cache(8), scale=mask.scale, keep=len(ids))
        assert_close_in_scale(got, _bridge_logits(smol, ids, mask), rel=1e-4)
        decoding.ANSWER_CACHE.clear()
        on_fast = evaluation.what_if(smol, example, mask, config)
        decoding.ANSWER_CACHE.clear()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("NEURORIT_FASTPATH", "0")
            on_bridge = evaluation.what_if(smol, example, mask, config)
        for a, b in zip(on_fast, on_bridge, strict=True):
            assert (a.answer_before, a.answer_after) == (b.answer_before, b.answer_after)
            assert (a.logprob_before, a.logprob_after) == pytest.approx((b.logprob_before, b.logprob_after), abs=1e-3)
            changed += a.answer_after != a.answer_before
    assert changed >= 2  # the masked side was tested on answers of its own


def test_bfloat16_weights_give_the_bridge_logits(tiny_llama_dir: Path, demo):  # type: ignore[no-untyped-def]
    """The GPU default precision: in bfloat16 the fast path keeps the bridge's eager attention, so
    the logits are the bridge's (the fused kernel would differ by ~2 % of the logit scale)."""
    model = load_model(str(tiny_llama_dir), device="cpu", dtype="bfloat16")
    assert fastpath.why_not(model) is None
    ids = evaluation.build_prompt(demo[0], "relevant", evaluation.PromptConfig(), model.tokenizer).token_ids[:48]
    fast = fastpath.of(model)
    scale = _mask(model, [(0, 3), (1, 9)], value=0.5).scale
    with torch.no_grad():
        cache = fast.new_cache(8)
        got = torch.cat([fast.forward(ids[:40], cache, scale=scale, keep=40),
                         fast.forward(ids[40:], cache, scale=scale, keep=len(ids) - 40)])
    want = _bridge_logits(model, ids, _mask(model, [(0, 3), (1, 9)], value=0.5))
    assert got.dtype == torch.bfloat16
    assert_close_in_scale(got.float(), want.float(), rel=1e-3)
