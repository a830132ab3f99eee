"""Integrated Gradients on MLP neurons, exact and fast, plus a one-gradient preview.

Owns: `NeuronScores` and `attribute_neurons` / `preview_neurons`: the attribution
of a target f (under an `AttributionConfig`, mining_spec.py: gold-answer log-prob, first answer token, or the model's own answer) to every neuron
`blocks.{L}.mlp.hook_post` of the chosen layers, with its per-layer completeness gap.
Must not: select neurons (neurons.py), iterate over datasets (mining.py), or spell hook names
(sites.py).

How it is fast (last-position attribution, the default):
- The prompt prefix (all but its last token) runs once and its KV cache is reused by every pass.
- Every (layer, quadrature step) pair is one *copy* of the short suffix (last prompt token +
  teacher-forced answer tokens). Copies are folded into the sequence axis of one batch-1 pass, with
  a block-diagonal mask and repeated position ids, so the cached prefix is never duplicated and the
  work is a few large matrix products instead of many small ones.
- Copies of a pass start at the lowest scaled layer L0 of that pass: blocks below L0 are replaced
  for the pass by a replay of the clean residual stream (they would compute it again, identically).
- Parameters are frozen during attribution, so backward computes activation gradients only.
All-position attribution reuses the same replay: for layer L the residual entering L is computed
once and only blocks L.. run for the batched quadrature steps.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from neurorit import store
from neurorit.configs import to_dict
from neurorit.errors import ArtifactError, ConfigError
from neurorit.models import frozen, neuron_site, prefill
from neurorit.mining_spec import AttributionConfig, Quadrature
from neurorit.sites import RESID_IN_HOOK
from neurorit.types import LayerVector, NeuronGrid, ProgressFn, no_progress

log = logging.getLogger(__name__)

def quadrature_rule(n_steps: int, rule: Quadrature) -> tuple[Tensor, Tensor]:
    """Nodes alpha in (0, 1) and weights summing to 1 for the path integral."""
    if rule == "midpoint":
        alphas = (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps
        weights = torch.full((n_steps,), 1.0 / n_steps, dtype=torch.float64)
    else:
        nodes, w = np.polynomial.legendre.leggauss(n_steps)
        alphas = torch.from_numpy((nodes + 1.0) / 2.0)
        weights = torch.from_numpy(w / 2.0)
    return alphas, weights


SCORES_FORMAT_VERSION = 1  # scores.json + scores.safetensors
GAP_FLOOR = 0.05  # nats: the smallest |f(x) - f(x')| a relative completeness gap is measured against


@dataclass(frozen=True, eq=False)
class NeuronScores:
    """IG scores of one prompt: [n_layers, d_mlp] (zero on layers not attributed) + health.

    f_input: f at the real activations. f_baseline[L]: f with layer L at its baseline (NaN for
    layers not attributed). gap[L] = sum_i scores[L, i] - (f_input - f_baseline[L]).
    """

    scores: NeuronGrid
    layers: tuple[int, ...]
    f_input: float
    f_baseline: LayerVector
    gap: LayerVector
    example_id: str = ""
    view: str = ""
    method: str = "ig"  # "ig" or "preview"
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def relative_gap(self) -> LayerVector:
        """|gap| / max(|f(x) - f(x'_L)|, GAP_FLOOR) per layer (NaN where not attributed).

        The floor keeps layers whose scaling barely moves f (|delta| < 0.05 nats) from reading as
        unhealthy because of a near-zero denominator.
        """
        delta = (self.f_input - self.f_baseline).abs().clamp_min(GAP_FLOOR)
        return self.gap.abs() / delta

    def max_relative_gap(self) -> float:
        rel = self.relative_gap[list(self.layers)]
        return float(rel.max()) if rel.numel() else 0.0

    def save(self, folder: Path) -> Path:
        store.write_tensors(
            folder / "scores.safetensors",
            {"scores": self.scores.float(), "f_baseline": self.f_baseline.double(), "gap": self.gap.double()},
        )
        store.write_json(
            folder / "scores.json",
            {"format_version": SCORES_FORMAT_VERSION, "kind": "neuron_scores", "layers": list(self.layers), "f_input": self.f_input, "example_id": self.example_id,
             "view": self.view, "method": self.method, "config": self.config},
        )
        return folder

    @classmethod
    def load(cls, folder: Path) -> "NeuronScores":
        tensors = store.read_tensors(folder / "scores.safetensors")
        meta = store.read_json(folder / "scores.json")
        store.check_format_version(meta, SCORES_FORMAT_VERSION, folder / "scores.json")
        try:
            return cls(
                scores=tensors["scores"], layers=tuple(meta["layers"]), f_input=float(meta["f_input"]),
                f_baseline=tensors["f_baseline"], gap=tensors["gap"], example_id=meta["example_id"],
                view=meta["view"], method=meta["method"], config=meta["config"],
            )
        except KeyError as exc:
            raise ArtifactError(f"{folder} is missing field {exc}; delete it and mine again.") from None


# ----------------------------------------------------------------------------------------------
# Model plumbing shared by the passes


class _Replay(nn.Module):
    """Stands in for a block during a pass: passes the residual on, or emits a stored one."""

    def __init__(self, emit: Tensor | None) -> None:
        super().__init__()
        self.emit = emit

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states if self.emit is None else self.emit


@contextmanager
def _blocks_replayed(model: Any, first_live: int, resid: Tensor) -> Iterator[None]:
    """Blocks [0, first_live) are skipped; block first_live receives `resid` as its input."""
    blocks = model.blocks
    saved = [blocks[i] for i in range(first_live)]
    try:
        for i in range(first_live):
            blocks[i] = _Replay(resid if i == first_live - 1 else None)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def _clone_cache(cache: Any) -> Any:
    """A cache sharing the prefix tensors but safe to extend (update replaces, never mutates)."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin


def _answer_logprob_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over answer positions of log p(target): logits [rows, S, vocab], targets [S] -> [rows]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [rows, S, vocab]
    picked = logp.gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # [rows, S, 1]
    return picked.squeeze(-1).sum(dim=-1)


def _capture(model: Any, hook_names: dict[int, str], store_to: dict[int, Tensor], index: Any) -> list:
    def make(layer: int) -> Callable:
        def hook(x: Tensor, hook: Any) -> Tensor:
            store_to[layer] = x[index].detach().float().clone()
            return x

        return hook

    return [(name, make(layer)) for layer, name in hook_names.items()]


def _target_tokens(model: Any, prompt_ids: Tensor, answer_ids: Sequence[int], config: AttributionConfig) -> Tensor:
    if config.target == "own_answer":
        from neurorit.decoding import generate_tokens

        own = generate_tokens(model, prompt_ids.tolist(), max_new_tokens=config.own_answer_max_tokens)
        if not own:
            raise ConfigError(
                "target 'own_answer': the model generated no answer token for this prompt; "
                "use target 'answer'."
            )
        return torch.tensor(own, dtype=torch.long)
    if not answer_ids:
        raise ConfigError("the prompt has no answer tokens to attribute to; give the example an answer.")
    ids = torch.tensor(list(answer_ids), dtype=torch.long)
    return ids[:1] if config.target == "first_token" else ids


def _resolve_layers(model: Any, config: AttributionConfig) -> tuple[int, ...]:
    n_layers = int(model.cfg.n_layers)
    layers = config.layers if config.layers is not None else tuple(range(n_layers))
    bad = [l for l in layers if l >= n_layers]
    if bad:
        raise ConfigError(f"AttributionConfig.layers {bad} do not exist: the model has {n_layers} layers (0..{n_layers - 1}).")
    return tuple(layers)


# ----------------------------------------------------------------------------------------------
# Public entry points


def attribute_neurons(
    model: Any,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    config: AttributionConfig,
    *,
    baseline_ids: Sequence[int] | None = None,
    example_id: str = "",
    view: str = "",
    on_progress: ProgressFn = no_progress,
) -> NeuronScores:
    """Integrated Gradients of f w.r.t. every neuron of the chosen layers.

    prompt_ids: the prompt's tokens (what the model sees). answer_ids: the gold answer's tokens
    (teacher-forced target). baseline_ids: the closed-book prompt, for baseline "no_context".
    score[L, i] = (a_i - a'_i) * sum_k w_k df/da_i(a' + alpha_k (a - a')), layer L alone scaled.
    """
    if len(prompt_ids) < 2:
        raise ConfigError(f"the prompt has {len(prompt_ids)} token(s); attribution needs at least 2.")
    if config.baseline == "no_context" and not baseline_ids:
        raise ConfigError("baseline 'no_context' needs the closed-book prompt (baseline_ids).")
    device = next(model.parameters()).device
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    layers = _resolve_layers(model, config)
    n_layers = int(model.cfg.n_layers)
    steps = {layer: config.n_steps for layer in layers}
    with frozen(model), torch.inference_mode(False):
        targets = _target_tokens(model, prompt, answer_ids, config).to(device)

        def integrate(subset: tuple[int, ...], n_steps: int) -> tuple[Tensor, float, dict[int, float]]:
            sub = dataclasses.replace(config, n_steps=n_steps)
            if config.positions == "last":
                return _ig_last_position(model, prompt, targets, subset, sub, baseline_ids, on_progress)
            return _ig_all_positions(model, prompt, targets, subset, sub, on_progress)

        grid, f_x, f_base = integrate(layers, config.n_steps)
        gap = _gaps(grid, f_x, f_base, layers, n_layers)
        while config.refine_gap is not None:
            delta = (f_x - torch.tensor([f_base.get(l, f_x) for l in range(n_layers)])).abs().clamp_min(GAP_FLOOR)
            todo = tuple(l for l in layers if float(gap[l].abs() / delta[l]) > config.refine_gap
                         and steps[l] * 2 <= config.max_steps)
            if not todo:
                break
            n_steps = max(steps[l] for l in todo) * 2
            finer, _, finer_base = integrate(todo, n_steps)
            for layer in todo:
                grid[layer], f_base[layer], steps[layer] = finer[layer], finer_base[layer], n_steps
            gap = _gaps(grid, f_x, f_base, layers, n_layers)
    f_baseline = torch.full((n_layers,), float("nan"), dtype=torch.float64)
    for layer in layers:
        f_baseline[layer] = f_base[layer]
    cfg = config.to_dict()
    cfg["target_ids"] = targets.tolist()
    cfg["steps_per_layer"] = {str(l): n for l, n in steps.items() if n != config.n_steps}
    return NeuronScores(
        scores=grid.float().cpu(), layers=layers, f_input=f_x, f_baseline=f_baseline, gap=gap,
        example_id=example_id, view=view, method="ig", config=cfg,
    )


def _gaps(grid: Tensor, f_x: float, f_base: dict[int, float], layers: Sequence[int], n_layers: int) -> Tensor:
    """Completeness gap per layer: sum of scores - (f(x) - f(x'_L)); NaN where not attributed."""
    gap = torch.full((n_layers,), float("nan"), dtype=torch.float64)
    for layer in layers:
        gap[layer] = grid[layer].double().sum() - (f_x - f_base[layer])
    return gap


def baseline_activations(
    model: Any, layers: Sequence[int], d_mlp: int, config: AttributionConfig, baseline_ids: Sequence[int] | None
) -> dict[int, Tensor]:
    """The baseline a' per layer: zeros, or the last-token activation of the closed-book prompt."""
    if config.baseline == "zero":
        return {layer: torch.zeros(d_mlp) for layer in layers}
    site = neuron_site(model)
    device = next(model.parameters()).device
    acts: dict[int, Tensor] = {}
    ids = torch.tensor([list(baseline_ids or [])], dtype=torch.long, device=device)
    with torch.no_grad(), model.hooks(fwd_hooks=_capture(model, {l: site.hook_name(l) for l in layers}, acts, (0, -1))):
        model(ids)
    return acts


def _ig_last_position(
    model: Any,
    prompt: Tensor,
    targets: Tensor,
    layers: tuple[int, ...],
    config: AttributionConfig,
    baseline_ids: Sequence[int] | None,
    on_progress: ProgressFn,
) -> tuple[Tensor, float, dict[int, float]]:
    site = neuron_site(model)
    device = prompt.device
    d_mlp = int(model.cfg.d_mlp)
    suffix = torch.cat([prompt[-1:], targets[:-1]])  # [S]: last prompt token + teacher-forced answer
    n_prefix = prompt.numel() - 1

    # 1. the prefix once, with its KV cache; 2. the clean suffix: activations, residuals, f(x)
    acts: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}
    with torch.no_grad():
        _, cache = prefill(model, prompt[None, :-1])
        hooks = _capture(model, {l: site.hook_name(l) for l in layers}, acts, (0, 0))
        hooks += _capture(model, {l: RESID_IN_HOOK.format(layer=l) for l in layers}, resid, (0, slice(None)))
        with model.hooks(fwd_hooks=hooks):
            clean = model(suffix[None], past_key_values=_clone_cache(cache))
        f_x = float(_answer_logprob_rows(clean, targets)[0])
    base = baseline_activations(model, layers, d_mlp, config, baseline_ids)

    # 3. rows = (layer, alpha, weight), alpha = 0 rows give f(x'_L); lowest layers last so that
    #    each pass replays as many blocks as possible
    alphas, weights = quadrature_rule(config.n_steps, config.quadrature)
    rows = [(l, float(a), float(w)) for l in sorted(layers, reverse=True) for a, w in zip(alphas, weights)]
    rows += [(l, 0.0, 0.0) for l in sorted(layers, reverse=True)]
    rows.sort(key=lambda r: -r[0])
    grid = torch.zeros(int(model.cfg.n_layers), d_mlp, dtype=torch.float64)
    f_base: dict[int, float] = {}
    chunk = config.max_rows_per_pass
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        _fold_pass(model, site, cache, suffix, targets, n_prefix, part, acts, base, resid, grid, f_base, device)
        on_progress(min(start + chunk, len(rows)), len(rows), "integrated gradients")
    return grid, f_x, f_base


def _fold_pass(
    model: Any, site: Any, cache: Any, suffix: Tensor, targets: Tensor, n_prefix: int,
    rows: list[tuple[int, float, float]], acts: dict[int, Tensor], base: dict[int, Tensor],
    resid: dict[int, Tensor], grid: Tensor, f_base: dict[int, float], device: torch.device,
) -> None:
    """One batch-1 pass over len(rows) folded copies of the suffix; accumulates into grid."""
    n_rows, seq = len(rows), suffix.numel()
    width = n_rows * seq
    ids = suffix.repeat(n_rows)[None]  # [1, rows*S]
    positions = (torch.arange(seq, device=device) + n_prefix).repeat(n_rows)[None]  # [1, rows*S]
    own = torch.block_diag(*[torch.tril(torch.ones(seq, seq, dtype=torch.bool, device=device))] * n_rows)
    mask = torch.cat([torch.ones(width, n_prefix, dtype=torch.bool, device=device), own], dim=1)[None, None]
    dtype = next(model.parameters()).dtype

    zs: dict[int, tuple[Tensor, Tensor, list[int]]] = {}
    hooks = []
    for layer in sorted({r[0] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r[0] == layer]
        alpha = torch.tensor([rows[i][1] for i in idx], dtype=torch.float32, device=device)
        a, a0 = acts[layer].to(device), base[layer].to(device)
        z = (a0[None] + alpha[:, None] * (a - a0)[None]).requires_grad_(True)  # [copies, d_mlp] float32
        where = torch.tensor(idx, device=device) * seq  # the last prompt token of each copy

        def put(x: Tensor, hook: Any, z: Tensor = z, where: Tensor = where) -> Tensor:
            return x.index_put((torch.zeros_like(where), where), z.to(x.dtype))

        zs[layer] = (z, alpha, idx)
        hooks.append((site.hook_name(layer), put))
    first_live = min(zs)
    start_resid = resid[first_live].to(device=device, dtype=dtype).repeat(n_rows, 1)[None]  # [1, rows*S, d_model]
    with ExitStack() as stack:
        if first_live > 0:
            stack.enter_context(_blocks_replayed(model, first_live, start_resid))
        stack.enter_context(model.hooks(fwd_hooks=hooks))
        logits = model(ids, past_key_values=_clone_cache(cache), attention_mask=mask, position_ids=positions)
    f_rows = _answer_logprob_rows(logits[0].view(n_rows, seq, -1), targets)  # [rows]
    layers = list(zs)
    grads = torch.autograd.grad(f_rows.sum(), [zs[l][0] for l in layers])
    for layer, g in zip(layers, grads):
        z, alpha, idx = zs[layer]
        w = torch.tensor([rows[i][2] for i in idx], dtype=torch.float64, device=device)
        delta = (acts[layer] - base[layer]).double().to(device)
        grid[layer] += (delta * (w[:, None] * g.double()).sum(0)).cpu()
        for i, j in enumerate(idx):
            if rows[j][1] == 0.0:
                f_base[layer] = float(f_rows[j].detach())


def _ig_all_positions(
    model: Any,
    prompt: Tensor,
    targets: Tensor,
    layers: tuple[int, ...],
    config: AttributionConfig,
    on_progress: ProgressFn,
) -> tuple[Tensor, float, dict[int, float]]:
    """Every prompt position of layer L scaled together (zero baseline), steps batched."""
    site = neuron_site(model)
    device = prompt.device
    d_mlp = int(model.cfg.d_mlp)
    tokens = torch.cat([prompt, targets[:-1]])[None]  # [1, P + A - 1]
    n_prompt = prompt.numel()
    dtype = next(model.parameters()).dtype
    acts: dict[int, Tensor] = {}
    resid: dict[int, Tensor] = {}
    with torch.no_grad():
        hooks = _capture(model, {l: site.hook_name(l) for l in layers}, acts, (0, slice(0, n_prompt)))
        hooks += _capture(model, {l: RESID_IN_HOOK.format(layer=l) for l in layers}, resid, (0, slice(None)))
        with model.hooks(fwd_hooks=hooks):
            clean = model(tokens)
    answer_logits = lambda logits: logits[:, n_prompt - 1 :]  # noqa: E731  [rows, A, vocab]
    f_x = float(_answer_logprob_rows(answer_logits(clean), targets)[0])
    alphas, weights = quadrature_rule(config.n_steps, config.quadrature)
    nodes = [(float(a), float(w)) for a, w in zip(alphas, weights)] + [(0.0, 0.0)]
    grid = torch.zeros(int(model.cfg.n_layers), d_mlp, dtype=torch.float64)
    f_base: dict[int, float] = {}
    rows_per_pass = max(1, min(len(nodes), config.max_rows_per_pass * max(1, targets.numel()) // tokens.shape[1] or 1))
    total = len(layers) * len(nodes)
    done = 0
    for layer in layers:
        a = acts[layer].to(device)  # [P, d_mlp]
        for start in range(0, len(nodes), rows_per_pass):
            part = nodes[start : start + rows_per_pass]
            alpha = torch.tensor([n[0] for n in part], dtype=torch.float32, device=device)
            z = (alpha[:, None, None] * a[None]).requires_grad_(True)  # [steps, P, d_mlp]

            def put(x: Tensor, hook: Any, z: Tensor = z) -> Tensor:
                return torch.cat([z.to(x.dtype), x[:, n_prompt:]], dim=1)

            start_resid = resid[layer].to(device=device, dtype=dtype)[None].expand(len(part), -1, -1)
            with ExitStack() as stack:
                if layer > 0:
                    stack.enter_context(_blocks_replayed(model, layer, start_resid))
                stack.enter_context(model.hooks(fwd_hooks=[(site.hook_name(layer), put)]))
                logits = model(tokens.expand(len(part), -1))
            f_rows = _answer_logprob_rows(answer_logits(logits), targets)
            (g,) = torch.autograd.grad(f_rows.sum(), [z])
            w = torch.tensor([n[1] for n in part], dtype=torch.float64, device=device)
            grid[layer] += (a.double() * (w[:, None, None] * g.double()).sum(0)).sum(0).cpu()
            for i, node in enumerate(part):
                if node[0] == 0.0:
                    f_base[layer] = float(f_rows[i].detach())
            done += len(part)
            on_progress(done, total, "integrated gradients (all positions)")
    return grid, f_x, f_base


def preview_neurons(
    model: Any,
    prompt_ids: Sequence[int],
    answer_ids: Sequence[int],
    config: AttributionConfig,
    *,
    baseline_ids: Sequence[int] | None = None,
    example_id: str = "",
    view: str = "",
) -> NeuronScores:
    """AtP-style one-gradient estimate: (a - a') * df/da at the real activation, last position.

    One forward and one backward for all layers at once: a cheap preview of IG (exact for a
    target linear in the activations). Its completeness gap is reported like IG's.
    """
    if config.positions != "last":
        raise ConfigError("the preview attributes the last prompt position only; use positions='last'.")
    site = neuron_site(model)
    device = next(model.parameters()).device
    prompt = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    layers = _resolve_layers(model, config)
    d_mlp = int(model.cfg.d_mlp)
    with frozen(model), torch.inference_mode(False):
        targets = _target_tokens(model, prompt, answer_ids, config).to(device)
        tokens = torch.cat([prompt, targets[:-1]])[None]
        n_prompt = prompt.numel()
        acts: dict[int, Tensor] = {}

        def make(layer: int) -> Callable:
            def hook(x: Tensor, hook: Any) -> Tensor:
                leaf = x[0, n_prompt - 1].detach().float().clone().requires_grad_(True)
                acts[layer] = leaf
                return x.index_put((torch.tensor([0], device=x.device), torch.tensor([n_prompt - 1], device=x.device)), leaf.to(x.dtype)[None])

            return hook

        with model.hooks(fwd_hooks=[(site.hook_name(l), make(l)) for l in layers]):
            logits = model(tokens)
        f = _answer_logprob_rows(logits[:, n_prompt - 1 :], targets)[0]
        grads = torch.autograd.grad(f, [acts[l] for l in layers])
        base = baseline_activations(model, layers, d_mlp, config, baseline_ids)
    n_layers = int(model.cfg.n_layers)
    grid = torch.zeros(n_layers, d_mlp, dtype=torch.float64)
    nan = torch.full((n_layers,), float("nan"), dtype=torch.float64)
    for layer, g in zip(layers, grads):
        grid[layer] = ((acts[layer].detach() - base[layer].to(device)).double() * g.double()).cpu()
    return NeuronScores(
        scores=grid.float(), layers=layers, f_input=float(f.detach()), f_baseline=nan.clone(), gap=nan.clone(),
        example_id=example_id, view=view, method="preview", config=config.to_dict(),
    )
