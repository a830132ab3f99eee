"""neurorit.readout: from a token to the neurons whose output weights promote it.

The oracle is an independent computation on the plain Hugging Face model's own modules (not
hf_state_dict): W_U @ (column / row i of layer L's output projection), for every neuron.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neurorit import readout
from neurorit.errors import ConfigError


def _independent(tiny_model, model_dir: Path, token_id: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    w_u = hf.get_output_embeddings().weight.detach()[token_id]  # [d_model]
    rows = []
    for layer in range(tiny_model.cfg.n_layers):
        if tiny_model.cfg.architecture == "GPT2LMHeadModel":
            w_out = hf.transformer.h[layer].mlp.c_proj.weight.detach()  # Conv1D [d_mlp, d_model]
        else:
            w_out = hf.model.layers[layer].mlp.down_proj.weight.detach().T  # Linear [d_model, d_mlp] -> [d_mlp, d_model]
        rows.append(w_out @ w_u)
    return torch.stack(rows)  # [n_layers, d_mlp]


def test_neurons_promoting_a_token_match_an_independent_computation(tiny_model, tiny_llama_dir: Path,
                                                                    tiny_gpt2_dir: Path) -> None:
    is_gpt2 = tiny_model.cfg.architecture == "GPT2LMHeadModel"
    ids = tiny_model.tokenizer.encode(" Sydney", add_special_tokens=False)
    expected = _independent(tiny_model, tiny_gpt2_dir if is_gpt2 else tiny_llama_dir, ids[0])
    torch.testing.assert_close(readout.token_logit_weights(tiny_model, ids[0]), expected, rtol=1e-5, atol=1e-6)

    found = readout.neurons_promoting(tiny_model, "' Sydney'", k=7)  # quoted as the tables print tokens
    order = torch.argsort(expected.reshape(-1), descending=True)[:7]
    d_mlp = expected.shape[1]
    assert found.neurons == tuple((int(i) // d_mlp, int(i) % d_mlp) for i in order)
    torch.testing.assert_close(torch.tensor(found.weights), expected.reshape(-1)[order], rtol=1e-5, atol=1e-6)
    assert list(found.weights) == sorted(found.weights, reverse=True)
    assert found.token_id == ids[0] and found.n_tokens == len(ids) and found.token == tiny_model.tokenizer.decode(ids[:1])
    by_id = readout.neurons_promoting(tiny_model, ids[0], k=7)
    assert by_id.neurons == found.neurons


def test_a_text_of_several_tokens_is_searched_by_its_first_and_bad_input_is_refused(tiny_llama) -> None:
    text = " Canberra Australia"
    ids = tiny_llama.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > 1
    found = readout.neurons_promoting(tiny_llama, text, k=3)
    assert found.n_tokens == len(ids) and found.token_id == ids[0]
    assert found.neurons == readout.neurons_promoting(tiny_llama, ids[0], k=3).neurons
    assert readout.unquote('" Sydney"') == " Sydney" and readout.unquote("Sydney") == "Sydney"
    for bad in ("", "  ", "''"):
        with pytest.raises(ConfigError, match="no token given"):
            readout.neurons_promoting(tiny_llama, bad)
    with pytest.raises(ConfigError, match="at least 1"):
        readout.neurons_promoting(tiny_llama, "x", k=0)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        readout.token_logit_weights(tiny_llama, 10**9)
