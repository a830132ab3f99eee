"""The fast path: a hook-free forward over a loaded Llama model's own weights, for greedy decoding.

Owns: `why_not` (when this path cannot reproduce the hooked model, and why), `FastLlama` (the
forward of Hugging Face's LlamaForCausalLM written out, reading the bridge's weights in place),
`KVBuffer` (a preallocated key/value cache that crops for free), `FastSteps` (prefill, extend and
crop for one prompt, with neuron scales multiplied in where a mask's hook would: the MLP hidden
activation, before the down projection) and `PrefillRecord` (an unmasked prefill's residual stream
entering each layer and its keys/values, so that a masked prefill of the same tokens starts at the
mask's lowest layer instead of layer 0).

Why it exists: one greedy step through the bridge costs ~60 ms on the bundled model on 2 cores, of
which the matrix products (reading 540 MB of weights) are ~25 ms; the rest is per-module overhead
(hook points, the HF cache and mask plumbing). The same arithmetic written out costs ~35-38 ms a
step. It is an optimisation only: evaluation takes it when `why_not(model)` is None, and tests
hold its logits to the hooked model's.
Must not: register hooks, change weights, or run a model with hooks or adapters attached (`why_not`
refuses those, so a mask applied with `NeuronMask.applied` is never silently skipped).
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from neurorit.models import hf_state_dict, weights_state
from neurorit.sites import LLAMA_EMBED, LLAMA_FINAL_NORM, LLAMA_HEAD, LLAMA_LAYER, LLAMA_LAYER_WEIGHTS
from neurorit.types import NeuronGrid

ARCHITECTURES = ("LlamaForCausalLM",)
# Rotary types whose inverse frequencies are fixed when the model is built (read from HF's module);
# "dynamic" and "longrope" change them with the sequence length.
ROPE_TYPES = ("default", "linear", "llama3", "yarn")

Logits2d = Float[Tensor, "pos d_vocab"]
# Prefill records kept at most (evaluation remembers the newest that fit): ~43 MB for a 375-token
# prompt of the bundled model in float32, so the views of a few examples.
RECORD_BUDGET = 512 * 2**20


def _rope_type(config: Any) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default")))


def _read_names(config: Any, names: set[str]) -> set[str]:
    """The weight names FastLlama reads (biases where the model has them)."""
    want = {LLAMA_EMBED, LLAMA_FINAL_NORM}
    for layer in range(int(config.num_hidden_layers)):
        want |= {LLAMA_LAYER.format(layer=layer, name=f"{w}.weight") for w in LLAMA_LAYER_WEIGHTS}
        want |= {LLAMA_LAYER.format(layer=layer, name=f"{w}.bias") for w in LLAMA_LAYER_WEIGHTS[:7]} & names
    want |= {f"{LLAMA_HEAD}.weight", f"{LLAMA_HEAD}.bias"} & names
    return want


def _is_plumbing(module: Any, hook: Any) -> bool:
    """A hook the libraries install for themselves: transformers' output capturing and the bridge's
    capture wiring, which change outputs only through TransformerLens hook points (checked apart).
    Any hook on a hook point, and any hook from elsewhere (a user, accelerate, peft), is not."""
    if isinstance(module, HookPoint):
        return False
    origin = str(getattr(hook, "__module__", "") or "")
    return origin.startswith(("transformers.", "transformer_lens."))


def why_not(model: Any) -> str | None:
    """Why the fast path cannot stand in for this model (None: it can).

    It can for a TransformerBridge over LlamaForCausalLM (SiLU MLP, a fixed rotary table over the
    whole head, no attention dropout while training), with nothing attached: no forward hooks on any module (a mask applied with hooks, a user's
    hooks, accelerate's offloading) and no extra weights (LoRA adapters). NEURORIT_FASTPATH=0 turns
    it off.
    """
    if os.environ.get("NEURORIT_FASTPATH", "1") == "0":
        return "turned off (NEURORIT_FASTPATH=0)"
    hf = getattr(model, "original_model", None)
    if hf is None or not isinstance(model, torch.nn.Module):
        return "not a TransformerBridge"
    if getattr(model, "compatibility_mode", False):
        return "TransformerLens compatibility mode (processed weights, its own forward)"
    if type(hf).__name__ not in ARCHITECTURES:
        return f"architecture {type(hf).__name__} (the fast path covers {', '.join(ARCHITECTURES)})"
    config = hf.config
    if getattr(config, "hidden_act", "silu") != "silu" or int(getattr(config, "pretraining_tp", 1) or 1) != 1:
        return "a Llama variant with another MLP activation or tensor-parallel pretraining layout"
    if _rope_type(config) not in ROPE_TYPES:
        return f"rotary type {_rope_type(config)!r} changes with the sequence length"
    rotary = getattr(hf.model, "rotary_emb", None)
    rotary = getattr(rotary, "_original_component", rotary)
    inv_freq = getattr(rotary, "inv_freq", None)
    d_head = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    if inv_freq is None or inv_freq.numel() * 2 != d_head:
        return "a rotary table that does not cover the whole head"
    if model.training and float(getattr(config, "attention_dropout", 0.0) or 0.0) > 0:
        return "training mode with attention dropout"
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or hasattr(module, "_hf_hook"):
            hooks = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
            if hasattr(module, "_hf_hook") or not all(_is_plumbing(module, hook) for hook in hooks):
                name = next(n for n, m in model.named_modules() if m is module)
                return f"hooks are attached ({name or 'the model'})"
    state = weights_state(model)
    known = _WEIGHT_VERDICTS.get(model)
    if known is None or known[0] != state:
        known = (state, _weights_reason(model, config))
        _WEIGHT_VERDICTS[model] = known
    return known[1]


def _weights_reason(model: Any, config: Any) -> str | None:
    weights = hf_state_dict(model)  # the bridge lists some tensors twice, under aliases
    read = _read_names(config, set(weights))
    if not read <= set(weights):
        return f"weights not where a plain Llama has them (adapters attached?): {sorted(read - set(weights))[:3]}"
    read_ptrs = {weights[name].data_ptr() for name in read}
    unread = [name for name, p in model.named_parameters() if p.data_ptr() not in read_ptrs]
    if unread:
        return f"parameters beyond a plain Llama's (adapters attached?): {unread[:3]}"
    return None


class KVBuffer:
    """Keys and values of one sequence, [n_layers, n_kv_heads, capacity, d_head]; `n` positions are
    filled. Cropping is setting `n`; growing doubles the capacity."""

    def __init__(self, n_layers: int, n_kv: int, d_head: int, capacity: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.keys = torch.empty(n_layers, n_kv, capacity, d_head, dtype=dtype, device=device)
        self.values = torch.empty_like(self.keys)
        self.n = 0

    def ensure(self, n: int) -> None:
        capacity = self.keys.shape[2]
        if n <= capacity:
            return
        grown = max(n, 2 * capacity)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], grown, old.shape[3])
            new[:, :, : self.n] = old[:, :, : self.n]
            setattr(self, name, new)

    def crop_last(self, k: int) -> None:
        assert 0 <= k <= self.n, (k, self.n)
        self.n -= k


@dataclass(frozen=True, eq=False)
class PrefillRecord:
    """What an unmasked prefill leaves for a masked one of the same tokens: the residual stream
    entering each layer [n_layers, pos, d_model] and each layer's keys and values."""

    token_ids: tuple[int, ...]
    resid: Float[Tensor, "n_layers pos d_model"]
    keys: Float[Tensor, "n_layers n_kv pos d_head"]
    values: Float[Tensor, "n_layers n_kv pos d_head"]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.resid, self.keys, self.values))


class FastLlama:
    """LlamaForCausalLM's forward as HF's eager implementation writes it (RMSNorm in float32,
    rotary from HF's own inverse frequencies; fused attention in float32, see _attend), over the
    bridge's parameters read in place: weight updates show through, replaced ones do not (see `of`)."""

    def __init__(self, model: Any) -> None:
        hf = model.original_model
        config = hf.config
        weights = hf_state_dict(model)
        self.n_layers = int(config.num_hidden_layers)
        self.n_heads = int(config.num_attention_heads)
        self.n_kv = int(getattr(config, "num_key_value_heads", None) or self.n_heads)
        self.d_model = int(config.hidden_size)
        self.d_head = int(getattr(config, "head_dim", None) or self.d_model // self.n_heads)
        self.eps = float(config.rms_norm_eps)
        self.scaling = self.d_head**-0.5
        self.layers = [
            {w: (weights[LLAMA_LAYER.format(layer=layer, name=f"{w}.weight")],
                 weights.get(LLAMA_LAYER.format(layer=layer, name=f"{w}.bias")))
             for w in LLAMA_LAYER_WEIGHTS}
            for layer in range(self.n_layers)
        ]
        self.embed = weights[LLAMA_EMBED]  # [d_vocab, d_model]
        self.norm = weights[LLAMA_FINAL_NORM]
        self.unembed = (weights.get(f"{LLAMA_HEAD}.weight", self.embed), weights.get(f"{LLAMA_HEAD}.bias"))
        rotary = hf.model.rotary_emb
        rotary = getattr(rotary, "_original_component", rotary)
        self.inv_freq = rotary.inv_freq.detach()  # [d_head / 2]
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.dtype, self.device = self.embed.dtype, self.embed.device
        self._scales_of: Tensor | None = None
        self._scales: dict[int, Tensor] = {}

    def layer_scales(self, scale: NeuronGrid | None) -> dict[int, Tensor]:
        """The rows of `scale` that change something, on the model's device and dtype (the last
        grid's are kept: a what-if runs one mask over several passes)."""
        if scale is None:
            return {}
        if self._scales_of is not scale:
            rows = torch.nonzero((scale != 1).any(dim=1)).flatten().tolist()
            self._scales = {int(layer): scale[layer].to(device=self.device, dtype=self.dtype) for layer in rows}
            self._scales_of = scale
        return self._scales

    def new_cache(self, capacity: int) -> KVBuffer:
        return KVBuffer(self.n_layers, self.n_kv, self.d_head, capacity, self.dtype, self.device)

    def _rms(self, x: Tensor, weight: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * h.to(x.dtype)

    def _rotary(self, start: int, n: int) -> tuple[Tensor, Tensor]:
        positions = torch.arange(start, start + n, device=self.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.float()[None, :]  # [pos, d_head / 2]
        angles = torch.cat((freqs, freqs), dim=-1)  # [pos, d_head]
        return (angles.cos() * self.rope_scale).to(self.dtype), (angles.sin() * self.rope_scale).to(self.dtype)

    def _rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def _attend(self, q: Tensor, keys: Tensor, values: Tensor, start: int) -> Tensor:
        """q [n_heads, pos, d_head] against keys/values [n_kv, start + pos, d_head], causal; head h
        reads key/value head h // (n_heads / n_kv), as HF's repeat_kv.

        In float32, PyTorch's fused attention: a 376-token prefill of the bundled model took
        0.38-0.41 s with it against 0.47-0.53 s with the eager softmax(QK^T)V that the bridge runs
        (logits within 4e-5). In half precision the fused kernel rounds differently by ~2 % of the
        logit scale, so there the eager arithmetic is kept: it matches the bridge bit for bit.
        """
        n_heads, pos, d_head = q.shape
        if self.dtype == torch.float32:
            mask, causal = None, pos > 1 and start == 0
            if pos > 1 and start > 0:  # new positions see the prefix and their own past
                mask = torch.ones(pos, start + pos, dtype=torch.bool, device=q.device).tril(start)
            return F.scaled_dot_product_attention(
                q[None], keys[None], values[None], attn_mask=mask, is_causal=causal, scale=self.scaling,
                enable_gqa=True,
            )[0]
        rep = n_heads // self.n_kv
        grouped = q.reshape(self.n_kv, rep * pos, d_head)
        scores = (torch.matmul(grouped, keys.transpose(-1, -2)) * self.scaling).view(self.n_kv, rep, pos, -1)
        if pos > 1:
            future = torch.ones(pos, scores.shape[-1], dtype=torch.bool, device=q.device).triu(start + 1)
            scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)  # [n_kv, rep, pos, ctx]
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(q.dtype).view(self.n_kv, rep * pos, -1)
        return torch.matmul(probs, values).view(n_heads, pos, d_head)

    def forward(
        self,
        token_ids: Sequence[int],
        cache: KVBuffer,
        *,
        scale: NeuronGrid | None = None,
        keep: int = 1,
        record: list[Tensor] | None = None,
        replay: PrefillRecord | None = None,
        first_layer: int = 0,
    ) -> Logits2d:
        """Logits of the last `keep` positions of `token_ids`, appended to `cache`.

        scale multiplies each layer's MLP hidden activation; record (a list) collects the residual
        stream entering each layer; replay + first_layer > 0 takes that stream and the keys/values of
        layers below first_layer from an unmasked prefill of the same tokens (cache must be empty).
        """
        start, pos = cache.n, len(token_ids)
        cache.ensure(start + pos)
        scales = self.layer_scales(scale)
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)
        if replay is not None and first_layer > 0:
            assert start == 0 and tuple(token_ids) == replay.token_ids, "replay needs the same tokens"
            cache.keys[:first_layer, :, :pos] = replay.keys[:first_layer]
            cache.values[:first_layer, :, :pos] = replay.values[:first_layer]
            x = replay.resid[first_layer][None]  # [1, pos, d_model]
        else:
            first_layer = 0
            x = self.embed[ids][None]  # [1, pos, d_model]
        cos, sin = self._rotary(start, pos)  # [pos, d_head]
        for layer in range(first_layer, self.n_layers):
            w = self.layers[layer]
            if record is not None:
                record.append(x[0])
            h = self._rms(x, w["input_layernorm"][0])
            q = F.linear(h, *w["self_attn.q_proj"]).view(pos, self.n_heads, self.d_head).transpose(0, 1)
            k = F.linear(h, *w["self_attn.k_proj"]).view(pos, self.n_kv, self.d_head).transpose(0, 1)
            v = F.linear(h, *w["self_attn.v_proj"]).view(pos, self.n_kv, self.d_head).transpose(0, 1)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)  # [heads, pos, d_head]
            cache.keys[layer, :, start : start + pos] = k
            cache.values[layer, :, start : start + pos] = v
            mixed = self._attend(q, cache.keys[layer, :, : start + pos], cache.values[layer, :, : start + pos], start)
            x = x + F.linear(mixed.transpose(0, 1).reshape(1, pos, self.n_heads * self.d_head), *w["self_attn.o_proj"])
            h = self._rms(x, w["post_attention_layernorm"][0])
            acts = F.silu(F.linear(h, *w["mlp.gate_proj"])) * F.linear(h, *w["mlp.up_proj"])  # [1, pos, d_mlp]
            if layer in scales:
                acts = acts * scales[layer]
            x = x + F.linear(acts, *w["mlp.down_proj"])
        cache.n = start + pos
        return F.linear(self._rms(x[0, -keep:], self.norm), *self.unembed)  # [keep, d_vocab]


_BUILT: "weakref.WeakKeyDictionary[Any, tuple[Any, FastLlama]]" = weakref.WeakKeyDictionary()
_WEIGHT_VERDICTS: "weakref.WeakKeyDictionary[Any, tuple[Any, str | None]]" = weakref.WeakKeyDictionary()


def of(model: Any) -> FastLlama:
    """The fast forward of a model (call why_not first), rebuilt if its parameters were replaced."""
    state = weights_state(model)
    known = _BUILT.get(model)
    if known is None or known[0] != state:
        known = (state, FastLlama(model))
        _BUILT[model] = known
    return known[1]


class FastSteps:
    """One prompt's decoding state on the fast path: prefill, extend, crop (see evaluation)."""

    def __init__(self, fast: FastLlama, scale: NeuronGrid | None = None, *, record: bool = False,
                 replay: PrefillRecord | None = None) -> None:
        assert not (record and replay is not None), "an unmasked prefill records, a masked one replays"
        self.fast, self.scale, self.replay = fast, scale, replay
        self.want_record = record
        self.record: PrefillRecord | None = None
        self.cache: KVBuffer | None = None

    def prefill(self, token_ids: Sequence[int], keep: int) -> Logits2d:
        self.cache = self.fast.new_cache(len(token_ids) + 32)
        first = 0
        if self.replay is not None and self.replay.token_ids == tuple(token_ids):
            first = min(self.fast.layer_scales(self.scale), default=self.fast.n_layers - 1)  # none: all but the last
        stream: list[Tensor] | None = [] if self.want_record and self._record_bytes(len(token_ids)) <= RECORD_BUDGET else None
        logits = self.fast.forward(token_ids, self.cache, scale=self.scale, keep=keep, record=stream,
                                   replay=self.replay, first_layer=first)
        if stream is not None:
            n = len(token_ids)
            self.record = PrefillRecord(
                token_ids=tuple(token_ids), resid=torch.stack(stream),
                keys=self.cache.keys[:, :, :n].clone(), values=self.cache.values[:, :, :n].clone(),
            )
        return logits

    def _record_bytes(self, n: int) -> int:
        f = self.fast
        return n * f.n_layers * (f.d_model + 2 * f.n_kv * f.d_head) * f.embed.element_size()

    def extend(self, token_ids: Sequence[int]) -> Logits2d:
        assert self.cache is not None, "prefill first"
        return self.fast.forward(token_ids, self.cache, scale=self.scale, keep=len(token_ids))

    def crop_last(self, k: int) -> None:
        assert self.cache is not None, "prefill first"
        self.cache.crop_last(k)
