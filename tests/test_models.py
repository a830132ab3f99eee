import pytest
import torch

from neurorit.errors import ModelLoadError
from neurorit.models import BUNDLED_MODEL, load_model, model_identity, neuron_site, resolve_model_path
from scale import assert_close_in_scale


def test_tiny_models_have_neuron_hooks(tiny_model):
    site = neuron_site(tiny_model)
    names = set(tiny_model.hook_dict)
    for layer in range(tiny_model.cfg.n_layers):
        assert site.hook_name(layer) in names


def test_identity_changes_with_weights(tiny_llama, tiny_gpt2):
    a, b = model_identity(tiny_llama), model_identity(tiny_gpt2)
    assert a.fingerprint != b.fingerprint
    assert (a.n_layers, a.d_mlp) == (2, 48)
    assert model_identity(tiny_llama) == a


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="never downloads"):
        resolve_model_path("no-such-org/no-such-model-xyz")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_model_path(str(tmp_path))


def test_kv_cached_forward_equals_full_forward(tiny_llama, tokenizer):
    """Guards the transformers pin: a cached suffix must see the cached prefix."""
    ids = torch.tensor([tokenizer("The capital of France is Paris. Berlin is in Germany").input_ids])
    with torch.no_grad():
        full = tiny_llama(ids)
        _, cache = tiny_llama(ids[:, :-3], return_type="logits_and_cache")
        tail = tiny_llama(ids[:, -3:], past_key_values=cache)
    assert_close_in_scale(tail, full[:, -3:], rel=1e-4)


@pytest.mark.slow
def test_bundled_model_loads_offline_and_answers(smol):
    assert smol.cfg.n_layers == 30 and smol.cfg.d_mlp == 1536
    ids = torch.tensor([smol.tokenizer("The capital of France is").input_ids])
    with torch.no_grad():
        logits = smol(ids)
    assert smol.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
    assert model_identity(smol).name == BUNDLED_MODEL


def test_a_hub_name_in_the_local_cache_loads_offline(tiny_llama_dir, tmp_path, monkeypatch):
    """`--model org/name` resolves through the Hugging Face cache layout, never the network."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--neurorit-test--tiny-llama"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    path = resolve_model_path("neurorit-test/tiny-llama")
    assert path == repo / "snapshots" / commit
    model = load_model("neurorit-test/tiny-llama", device="cpu")
    assert model.cfg.n_layers == 2
