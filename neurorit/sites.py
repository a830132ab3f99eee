"""Where neurons live, per architecture: the one table that spells hook names and weight paths.

Owns: for each supported Hugging Face architecture, the TransformerLens hook that carries the MLP
hidden activation (the neuron) and the Hugging Face weight that reads it (the output projection);
the hooks of the token embeddings (`EMBED_HOOK`) and of the residual stream entering a block
(`RESID_IN_HOOK`), the same on every architecture; the Hugging Face names of the output head
(`UNEMBEDDING_WEIGHTS`, `TIED_EMBEDDING_SUFFIXES`), of the Llama weights the fast path reads
(`LLAMA_*`), and what the bridge inserts into wrapped parameter names (`BRIDGE_WRAPPER`).
Must not: load models or run them. Nothing else in neurorit writes a hook name or a weight path.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurorit.errors import ModelLoadError


@dataclass(frozen=True)
class NeuronSite:
    """How to reach the neurons of one architecture.

    hook: TransformerLens hook name template of the neuron activations (`{layer}` is filled in).
    down_proj: Hugging Face parameter name template of the weight that reads the neurons.
    neuron_axis: the axis of that weight indexed by neuron (1 for nn.Linear [d_model, d_mlp],
        0 for GPT-2's Conv1D [d_mlp, d_model]).
    """

    hook: str
    down_proj: str
    neuron_axis: int

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    def down_proj_name(self, layer: int) -> str:
        return self.down_proj.format(layer=layer)


_LLAMA_LIKE = NeuronSite(
    hook="blocks.{layer}.mlp.hook_post",
    down_proj="model.layers.{layer}.mlp.down_proj.weight",
    neuron_axis=1,
)

EMBED_HOOK = "hook_embed"
"""The token embeddings entering block 0 (`embed.hook_out` on the bridge; positional embeddings,
where an architecture has them, are added after it), [batch, pos, d_model] on every architecture."""

RESID_IN_HOOK = "blocks.{layer}.hook_in"
"""The residual stream entering block `layer`, [batch, pos, d_model] (attribution's refinement reads it)."""

BRIDGE_WRAPPER = "._original_component"
"""What TransformerBridge inserts into the Hugging Face parameter names it wraps (removed to get HF's names)."""

# The Llama weights the fast path (fastpath.py) reads, by their Hugging Face names.
LLAMA_EMBED = "model.embed_tokens.weight"
LLAMA_FINAL_NORM = "model.norm.weight"
LLAMA_HEAD = "lm_head"
LLAMA_LAYER = "model.layers.{layer}.{name}"
LLAMA_LAYER_WEIGHTS = (  # biases, where a model has them, on the first seven
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm",
)

UNEMBEDDING_WEIGHTS = ("lm_head.weight", "embed_out.weight")
"""Hugging Face names of an untied output head W_U [d_vocab, d_model] (Llama family, GPT-NeoX)."""
TIED_EMBEDDING_SUFFIXES = ("embed_tokens.weight", "wte.weight", "embed_in.weight")
"""Endings of the input embedding's name, which is W_U where the head is tied to it (GPT-2)."""

SITES: dict[str, NeuronSite] = {
    "LlamaForCausalLM": _LLAMA_LIKE,
    "MistralForCausalLM": _LLAMA_LIKE,
    "Qwen2ForCausalLM": _LLAMA_LIKE,
    "Qwen3ForCausalLM": _LLAMA_LIKE,
    "GemmaForCausalLM": _LLAMA_LIKE,
    "Gemma2ForCausalLM": _LLAMA_LIKE,
    "OlmoForCausalLM": _LLAMA_LIKE,
    "GPT2LMHeadModel": NeuronSite(
        hook="blocks.{layer}.mlp.hook_post",
        down_proj="transformer.h.{layer}.mlp.c_proj.weight",
        neuron_axis=0,
    ),
    "GPTNeoXForCausalLM": NeuronSite(
        hook="blocks.{layer}.mlp.hook_post",
        down_proj="gpt_neox.layers.{layer}.mlp.dense_4h_to_h.weight",
        neuron_axis=1,
    ),
}


def site_for(architecture: str) -> NeuronSite:
    """The neuron site of an architecture, or a clear error listing the supported ones."""
    try:
        return SITES[architecture]
    except KeyError:
        raise ModelLoadError(
            f"architecture {architecture!r} has no neuron site in neurorit; supported: "
            f"{sorted(SITES)}. Add a row to neurorit/sites.py:SITES to support it."
        ) from None
