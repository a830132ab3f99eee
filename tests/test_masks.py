import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from neurorit.errors import ArtifactError, ConfigError, ModelMismatchError
from neurorit.masks import MASK_JSON, MASK_TENSORS, NeuronMask, bake, random_like
from neurorit.models import ModelIdentity, model_identity, neuron_site
from neurorit.neurons import NeuronSet
from scale import assert_close_in_scale

TEXT = "The capital of France is Paris. Berlin is the capital of Germany, and Rome"


def _ids(model, text: str = TEXT) -> torch.Tensor:
    return torch.tensor([model.tokenizer(text).input_ids])


def _mixed_mask(model, seed: int = 0) -> NeuronMask:
    """Some neurons off, some amplified, some halved, in every layer."""
    n_layers, d_mlp = model.cfg.n_layers, model.cfg.d_mlp
    g = torch.Generator().manual_seed(seed)
    scale = torch.ones(n_layers, d_mlp)
    for layer in range(n_layers):
        idx = torch.randperm(d_mlp, generator=g)[:9]
        scale[layer, idx[:3]] = 0.0
        scale[layer, idx[3:6]] = 2.0
        scale[layer, idx[6:]] = 0.5
    return NeuronMask(scale, model_identity(model), {"kind": "test"})


def _capture(model, layer: int):  # type: ignore[no-untyped-def]
    seen: list[torch.Tensor] = []

    def grab(acts, hook):  # type: ignore[no-untyped-def]
        seen.append(acts.detach().clone())
        return acts

    return seen, [(neuron_site(model).hook_name(layer), grab)]


def test_mask_of_ones_is_a_no_op(tiny_model):
    ids = _ids(tiny_model)
    with torch.no_grad():
        plain = tiny_model(ids)
        with NeuronMask.identity(tiny_model).applied(tiny_model):
            masked = tiny_model(ids)
    assert torch.equal(plain, masked)


def test_silencing_zeroes_the_hooked_activations_and_only_those(tiny_model):
    neurons = NeuronSet.from_neurons([(0, 3), (0, 17), (1, 40)], 2, 48, label="toy")
    mask = NeuronMask.silencing(neurons, tiny_model)
    ids = _ids(tiny_model)
    seen_plain, capture_plain = _capture(tiny_model, 0)
    seen, capture = _capture(tiny_model, 0)
    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=capture_plain):
            plain_logits = tiny_model(ids)
        with mask.applied(tiny_model), tiny_model.hooks(fwd_hooks=capture):  # capture runs after the mask
            masked_logits = tiny_model(ids)
    before, after = seen_plain[0], seen[0]  # [batch, pos, d_mlp]
    assert before[..., [3, 17]].abs().min() > 0
    assert torch.equal(after[..., [3, 17]], torch.zeros_like(after[..., [3, 17]]))
    keep = [i for i in range(48) if i not in (3, 17)]
    assert torch.equal(after[..., keep], before[..., keep])
    assert not torch.equal(plain_logits, masked_logits)
    assert mask.counts_per_layer() == [2, 1] and mask.neurons == neurons
    # the hooks are gone after the block
    with torch.no_grad():
        assert torch.equal(tiny_model(ids), plain_logits)


def test_hooks_are_removed_when_the_block_raises(tiny_llama):
    mask = _mixed_mask(tiny_llama)
    ids = _ids(tiny_llama)
    with torch.no_grad():
        plain = tiny_llama(ids)
        with pytest.raises(RuntimeError, match="boom"):
            with mask.applied(tiny_llama):
                raise RuntimeError("boom")
        assert torch.equal(tiny_llama(ids), plain)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_hook_masking_equals_baked_checkpoint(which, tiny_llama, tiny_gpt2, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama if which == "llama" else tiny_gpt2
    mask = _mixed_mask(model)
    out = bake(mask, model, tmp_path / "baked")
    baked = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    ids = _ids(model)
    with torch.no_grad():
        with mask.applied(model):
            hooked = model(ids)
        plain = model(ids)
        from_disk = baked(ids).logits
    assert_close_in_scale(from_disk, hooked, rel=1e-4)
    assert (from_disk - plain).abs().max() > 1e-2  # the mask really changed the output
    record = json.loads((out / "neurorit_mask.json").read_text())
    assert record["key"] == mask.key() and record["provenance"] == {"kind": "test"}
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


def test_bake_does_not_touch_the_model_and_refuses_a_full_folder(tiny_llama, tmp_path):
    site = neuron_site(tiny_llama)
    from neurorit.models import hf_state_dict

    before = hf_state_dict(tiny_llama)[site.down_proj_name(0)].clone()
    mask = _mixed_mask(tiny_llama)
    target = tmp_path / "out"
    target.mkdir()
    (target / "something.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not empty"):
        bake(mask, tiny_llama, target)
    with pytest.raises(ArtifactError, match="not a neurorit export"):  # overwrite replaces exports only
        bake(mask, tiny_llama, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["something.txt"]
    assert (target / "something.txt").read_text() == "keep me"
    (target / "something.txt").unlink()
    bake(mask, tiny_llama, target)  # an empty folder may be used
    (target / "stale.txt").write_text("from the earlier export")
    bake(mask, tiny_llama, target, overwrite=True)  # an earlier export is replaced whole
    assert not (target / "stale.txt").exists() and (target / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary sibling left behind
    assert torch.equal(hf_state_dict(tiny_llama)[site.down_proj_name(0)], before)


def test_a_tuned_model_bakes_its_current_weights_with_strict_false(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    from neurorit.models import hf_state_dict

    mask = _mixed_mask(tiny_llama)
    weight = hf_state_dict(tiny_llama)[neuron_site(tiny_llama).down_proj_name(1)]  # shares storage
    saved = weight.clone()
    ids = _ids(tiny_llama)
    try:
        with torch.no_grad():
            weight.mul_(1.5)  # "fine-tuning"
        with pytest.raises(ModelMismatchError, match="strict=False"):
            bake(mask, tiny_llama, tmp_path / "strict")
        out = bake(mask, tiny_llama, tmp_path / "tuned", strict=False)
        with torch.no_grad(), mask.applied(tiny_llama, strict=False):
            hooked = tiny_llama(ids)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    baked = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        assert_close_in_scale(baked(ids).logits, hooked, rel=1e-4)


def test_bake_refuses_a_bridge_only_weight_it_cannot_write(tiny_llama, tmp_path):
    from neurorit.models import hf_state_dict

    bias = hf_state_dict(tiny_llama).get("lm_head.bias")
    if bias is None:
        pytest.skip("this bridge adds no lm_head bias")
    try:
        with torch.no_grad():
            bias.add_(0.5)
        with pytest.raises(ArtifactError, match="lm_head.bias"):
            bake(NeuronMask.identity(tiny_llama), tiny_llama, tmp_path / "out")
    finally:
        with torch.no_grad():
            bias.zero_()
    assert not (tmp_path / "out").exists()


def test_save_load_round_trip(tiny_llama, tmp_path):
    mask = _mixed_mask(tiny_llama)
    folder = mask.save(tmp_path / "m")
    back = NeuronMask.load(folder, tiny_llama)
    assert torch.equal(back.scale, mask.scale) and back.scale.dtype == torch.float32
    assert back.model == mask.model and back.provenance == mask.provenance
    assert back.key() == mask.key()
    meta = json.loads((folder / MASK_JSON).read_text())
    assert meta["counts_per_layer"] == [9, 9] and meta["n_neurons"] == 18
    assert NeuronMask.load(folder / MASK_TENSORS).key() == mask.key()  # the file path works too


def test_key_changes_with_scale_and_provenance(tiny_llama):
    neurons = NeuronSet.from_neurons([(0, 1)], 2, 48)
    a = NeuronMask.silencing(neurons, tiny_llama)
    assert a.key() == NeuronMask.silencing(neurons, tiny_llama).key()
    assert a.key() != NeuronMask.silencing(neurons, tiny_llama, scale=2.0).key()
    assert a.key() != NeuronMask.silencing(neurons, tiny_llama, provenance={"data": "x"}).key()


def test_mask_for_another_model_shape_is_refused(tiny_llama, tmp_path):
    other = ModelIdentity("Other-360M", "LlamaForCausalLM", 24, 1536, "0" * 16)
    mask = NeuronMask(torch.ones(24, 1536), other, {})
    folder = mask.save(tmp_path / "other")
    with pytest.raises(ModelMismatchError, match=r"mask has 24 layers x 1536 neurons.*model has 2 layers x 48"):
        NeuronMask.load(folder, tiny_llama)
    with pytest.raises(ModelMismatchError, match="24 layers"):
        with mask.applied(tiny_llama):
            pass  # pragma: no cover


def test_mask_for_another_architecture_is_refused(tiny_llama, tiny_gpt2):
    mask = NeuronMask.identity(tiny_gpt2)  # same 2 x 48 grid, other architecture
    with pytest.raises(ModelMismatchError, match="GPT2LMHeadModel"):
        mask.check(tiny_llama)


def test_other_weights_need_strict_false(tiny_llama, caplog):
    ident = model_identity(tiny_llama)
    tuned = ModelIdentity(ident.name, ident.architecture, ident.n_layers, ident.d_mlp, "f" * 16)
    mask = NeuronMask(torch.ones(2, 48), tuned, {})
    with pytest.raises(ModelMismatchError, match="strict=False"):
        mask.check(tiny_llama)
    with caplog.at_level("WARNING", logger="neurorit.masks"):
        mask.check(tiny_llama, strict=False)
    assert "other weights" in caplog.text


def test_silencing_a_set_of_another_shape_is_refused(tiny_llama):
    with pytest.raises(ModelMismatchError, match="3 layers x 48"):
        NeuronMask.silencing(NeuronSet.empty(3, 48), tiny_llama)


def test_nan_scale_is_refused(tiny_llama):
    scale = torch.ones(2, 48)
    scale[1, 2] = float("nan")
    with pytest.raises(ConfigError, match="NaN"):
        NeuronMask(scale, model_identity(tiny_llama), {})


@pytest.fixture()
def saved(tiny_llama, tmp_path):  # type: ignore[no-untyped-def]
    return _mixed_mask(tiny_llama).save(tmp_path / "mask")


def test_missing_mask_files_are_artifact_errors(saved, tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        NeuronMask.load(tmp_path / "nowhere")
    (saved / MASK_TENSORS).unlink()
    with pytest.raises(ArtifactError, match="missing"):
        NeuronMask.load(saved)


def test_truncated_safetensors_is_an_artifact_error(saved):
    data = (saved / MASK_TENSORS).read_bytes()
    (saved / MASK_TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        NeuronMask.load(saved)


def test_garbage_safetensors_is_an_artifact_error(saved):
    (saved / MASK_TENSORS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArtifactError):
        NeuronMask.load(saved)


UNPICKLED: list[str] = []


def _record_unpickling() -> dict:
    UNPICKLED.append("unpickled!")
    return {}


class _Trap:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_record_unpickling, ())


def test_a_pickle_named_mask_safetensors_is_refused_and_never_unpickled(saved, monkeypatch):
    torch.save({"scale": torch.ones(2, 48), "trap": _Trap()}, saved / MASK_TENSORS)

    def forbidden(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a mask load must never unpickle")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ArtifactError, match="never unpickles"):
        NeuronMask.load(saved)
    # a plain (non-zip) pickle too
    (saved / MASK_TENSORS).write_bytes(pickle.dumps({"trap": _Trap()}, protocol=2))
    with pytest.raises(ArtifactError, match="never unpickles"):
        NeuronMask.load(saved)
    assert UNPICKLED == []


@pytest.mark.parametrize("drop", ["model", "scale_sha256", "provenance", "d_mlp"])
def test_json_missing_fields_is_an_artifact_error(saved, drop):
    meta = json.loads((saved / MASK_JSON).read_text())
    del meta[drop]
    (saved / MASK_JSON).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=f"lacks field.*{drop}"):
        NeuronMask.load(saved)


def test_json_that_is_not_json_is_an_artifact_error(saved):
    (saved / MASK_JSON).write_text("{truncated")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        NeuronMask.load(saved)


def test_scale_shape_disagreeing_with_json_is_an_artifact_error(saved):
    save_file({"scale": torch.ones(3, 48)}, str(saved / MASK_TENSORS))
    with pytest.raises(ArtifactError, match=r"shape \(3, 48\).*2 layers x 48"):
        NeuronMask.load(saved)


def test_nan_scale_on_disk_is_an_artifact_error(saved):
    scale = torch.ones(2, 48)
    scale[0, 0] = float("nan")
    save_file({"scale": scale}, str(saved / MASK_TENSORS))
    with pytest.raises(ArtifactError, match="NaN"):
        NeuronMask.load(saved)


def test_scale_from_another_save_is_an_artifact_error(saved):
    save_file({"scale": torch.zeros(2, 48)}, str(saved / MASK_TENSORS))
    with pytest.raises(ArtifactError, match="checksum"):
        NeuronMask.load(saved)


def test_random_like_keeps_per_layer_counts_and_follows_the_seed():
    grid = torch.zeros(4, 100, dtype=torch.bool)
    grid[0, :10] = True
    grid[2, 50:53] = True
    grid[3, :] = True
    neurons = NeuronSet(grid, "I-R")
    a, b, c = random_like(neurons, seed=0), random_like(neurons, seed=0), random_like(neurons, seed=1)
    assert a.counts_per_layer() == neurons.counts_per_layer() == c.counts_per_layer()
    assert a == b and a != c and a != neurons


@pytest.mark.slow
def test_hook_masking_equals_baking_on_the_bundled_model(smol, tmp_path):
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(0)
    grid = torch.rand(smol.cfg.n_layers, smol.cfg.d_mlp, generator=g) < 0.02
    mask = NeuronMask.silencing(NeuronSet(grid, "random 2%"), smol)
    baked = AutoModelForCausalLM.from_pretrained(
        bake(mask, smol, tmp_path / "smol-baked"), attn_implementation="eager", dtype=torch.float32
    )
    tok = smol.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    n_prompt, n_new = ids.shape[1], 6
    with torch.no_grad():
        out = baked.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                             do_sample=False, pad_token_id=tok.pad_token_id, output_logits=True,
                             return_dict_in_generate=True)
        with mask.applied(smol):
            hooked = smol(out.sequences)  # [1, pos, d_vocab], one teacher-forced forward
    generated = out.sequences[0, n_prompt:]
    # greedy decoding agrees token for token: each baked token is the hooked model's argmax
    assert hooked[0, n_prompt - 1 : -1].argmax(-1).tolist() == generated.tolist()
    baked_logits = torch.stack(out.logits, dim=1)  # [1, n_new, d_vocab]
    assert_close_in_scale(baked_logits, hooked[:, n_prompt - 1 : -1], rel=1e-4)
    # and the mask matters on this model
    with torch.no_grad():
        assert not torch.equal(smol(ids)[:, -1], hooked[:, n_prompt - 1])
