"""Captum-based reference attributions: the independent oracle for attribution.py.

Owns: plain, slow Integrated Gradients through captum's `IntegratedGradients` on the full
sequence, one layer at a time, with no KV cache, no folding and no block replay. Tests and
`bench/ig_speed.py` compare the fast path against it. Must not: be used for mining (it is what
the fast path exists to avoid).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from captum.attr import IntegratedGradients
from torch import Tensor

from neurorit.attribution import AttributionConfig
from neurorit.models import frozen, neuron_site

_CAPTUM_METHOD = {"midpoint": "riemann_middle", "gauss_legendre": "gausslegendre"}


def captum_layer_ig(
    model: Any,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    layer: int,
    config: AttributionConfig,
    *,
    baseline: Tensor | None = None,
    internal_batch_size: int | None = None,
) -> Tensor:
    """IG of one layer's neurons by captum, summed over the attributed positions. [d_mlp]

    The integrated input is the layer's activation at the last prompt token (positions "last") or
    at every prompt position (positions "all"); f is the summed teacher-forced log-prob of
    `answer_ids`. baseline: [d_mlp] activation for positions "last" (default zeros).
    """
    site = neuron_site(model)
    hook = site.hook_name(layer)
    device = next(model.parameters()).device
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    targets = torch.tensor(list(answer_ids), dtype=torch.long, device=device)
    tokens = torch.cat([prompt, targets[:-1]])[None]  # [1, T]
    n_prompt = prompt.numel()
    where = slice(n_prompt - 1, n_prompt) if config.positions == "last" else slice(0, n_prompt)
    grabbed: list[Tensor] = []

    def grab(x: Tensor, hook: Any) -> Tensor:
        grabbed.append(x[:, where].detach().float().clone())
        return x

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, grab)]):
        model(tokens)
    actual = grabbed[0]  # [1, positions, d_mlp]
    base = torch.zeros_like(actual) if baseline is None else baseline.reshape(1, 1, -1).to(actual).expand_as(actual)

    def forward(z: Tensor) -> Tensor:  # z: [batch, positions, d_mlp]
        def put(x: Tensor, hook: Any) -> Tensor:
            x = x.expand(z.shape[0], -1, -1).clone()
            x[:, where] = z.to(x.dtype)
            return x

        with model.hooks(fwd_hooks=[(hook, put)]):
            logits = model(tokens.expand(z.shape[0], -1))
        logp = torch.log_softmax(logits[:, n_prompt - 1 :].float(), dim=-1)  # [batch, A, vocab]
        return logp.gather(-1, targets.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1).sum(-1)

    with frozen(model):
        attr = IntegratedGradients(forward).attribute(
            actual, baselines=base, n_steps=config.n_steps, method=_CAPTUM_METHOD[config.quadrature],
            internal_batch_size=internal_batch_size,
        )
    return attr[0].sum(0).detach()
