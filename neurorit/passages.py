"""Which passage drives the answer: per-passage contributions to the gold answer's log-probability.

Owns: `PassageConfig`, `PassageAttribution` and `attribute_passages`: for one example's noisy view
(the relevant passage among irrelevant ones), each passage's
- leave-one-out effect: the answer log-prob with every passage minus the one with that passage
  left out (the prompt rebuilt by the prompt builder, so the template stays right);
- Integrated Gradients over the prompt's token embeddings (by default the passages' tokens move
  from the pad token's embedding), summed over d_model per token and then over the passage's
  tokens, by a composite quadrature bisected where the path is steep until the completeness gap
  of the whole path is within 1 %;
- the mean activation of chosen (mined) neurons over the passage's tokens.
The target is the teacher-forced gold answer log-prob of decoding.answer_logprob.
Must not: select neurons, spell hook names (sites.py), draw figures or print.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import pandas as pd
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from neurorit import store
from neurorit.attribution import GAP_FLOOR, Quadrature, quadrature_rule
from neurorit.configs import DictConfig, coerce_fields, to_dict
from neurorit.data import RagExample
from neurorit.decoding import answer_logprob
from neurorit.errors import ArtifactError, ConfigError
from neurorit.mining import prompt_for
from neurorit.models import frozen, neuron_site
from neurorit.neurons import NeuronSet
from neurorit.prompts import Prompt, PromptConfig, build_prompt_from_passages, passage_spans
from neurorit.sites import EMBED_HOOK
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

EmbeddingBaseline = Literal["pad", "zero"]
Scope = Literal["passages", "content", "prompt"]
TokenVector = Float[Tensor, "pos"]
TokenFlags = Bool[Tensor, "pos"]
PassageVector = Float[Tensor, "n_passages"]
PassageNeuronMeans = Float[Tensor, "n_passages n_neurons"]
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class PassageConfig(DictConfig):
    """How one example's passages are attributed.

    scope: which prompt tokens IG moves from the baseline to their embedding; the others keep their
    embedding along the whole path, so their IG is exactly 0. "passages" (default): the tokens of
    the passage lines; f(x') is then the answer log-prob of the same prompt with every passage
    blanked, and IG splits the passages' total effect among them. "content": the passages and the
    question. "prompt": every prompt token, the chat template and the first token (the attention
    sink) included, a steeper path: on the bundled model and demo-01 one 32-node Gauss-Legendre
    rule over the whole path left a relative gap of 238 % with this scope.
    The passages' path is not smooth either (same example: 34 % at 64 nodes, 7.5 % at 128 with one
    rule over [0, 1]), hence the composite rule refined where the gap is (refine_gap, max_steps):
    from 32 nodes it reached 0.38 % with 240 nodes in 17 intervals.
    baseline: the input IG starts from at the moved positions. "pad" (default): the embedding
    of the tokenizer's pad token (else eos, else bos: the first whose embedding row is not zero),
    a real input the model has read, so every point of the path is an ordinary residual stream.
    "zero": the zero vector, the usual text default, sits on the singular point of RMSNorm (no
    bias, no positional embedding on Llama-like models): near alpha = 0 the first norm divides the
    moved embeddings by about sqrt(eps), so f jumps within alpha ~ sqrt(eps) / rms(x) (about 0.02
    for the bundled model's embeddings). On the tests' random tiny Llama, whose pad row is zero,
    every prompt token moved from zero left relative gaps of 110 %, 541 % and 824 % with one rule
    of 8, 32 and 128 nodes. GPT-2's learned positional embeddings keep it away from that point.
    """

    n_steps: int = 32  # nodes of the first pass: n_steps // 8 intervals of 8 nodes (one of n_steps below 8)
    quadrature: Quadrature = "gauss_legendre"  # per interval: exact for polynomials of degree 15
    refine_gap: float | None = 0.01  # bisect the intervals that miss their share of a 1 % relative gap
    max_steps: int = 512  # ceiling on the nodes (forward-backward rows) refinement may spend
    baseline: EmbeddingBaseline = "pad"
    max_rows_per_pass: int = 8  # quadrature steps batched in one forward/backward (bounds memory)
    scope: Scope = "passages"
    view: str = "noisy"  # METHOD.md's noisy input: the relevant passage among the distractors

    def __post_init__(self) -> None:
        coerce_fields(self)  # "32" -> 32; a bool or "abc" is refused
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ConfigError.field("PassageConfig", "n_steps", self.n_steps, "an integer >= 1")
        if self.quadrature not in ("midpoint", "gauss_legendre"):
            raise ConfigError.field("PassageConfig", "quadrature", self.quadrature, "'midpoint' or 'gauss_legendre'")
        if self.refine_gap is not None and not (isinstance(self.refine_gap, float) and self.refine_gap > 0):
            raise ConfigError.field("PassageConfig", "refine_gap", self.refine_gap, "None or a positive fraction")
        if not isinstance(self.max_steps, int) or self.max_steps < self.n_steps:
            raise ConfigError.field("PassageConfig", "max_steps", self.max_steps, f"an integer >= n_steps ({self.n_steps})")
        if self.baseline not in ("pad", "zero"):
            raise ConfigError.field("PassageConfig", "baseline", self.baseline, "'pad' or 'zero'")
        if not isinstance(self.max_rows_per_pass, int) or self.max_rows_per_pass < 1:
            raise ConfigError.field("PassageConfig", "max_rows_per_pass", self.max_rows_per_pass, "an integer >= 1")
        if self.scope not in ("passages", "content", "prompt"):
            raise ConfigError.field("PassageConfig", "scope", self.scope, "'passages', 'content' or 'prompt'")
        if self.view not in ("noisy", "relevant", "irrelevant"):
            raise ConfigError.field("PassageConfig", "view", self.view, "'noisy', 'relevant' or 'irrelevant'")


@dataclass(frozen=True, eq=False)
class PassageAttribution(store.JsonArtifact):
    """One prompt's passages and what each contributes to the gold answer's log-prob.

    logprob: answer log-prob with every passage; logprob_without[i]: with passage i left out.
    token_ig[t]: IG of prompt token t (summed over d_model); the IG of all tokens sums to
    f_input - f_baseline up to `gap`. neuron_means[i, j]: mean activation of neurons[j] over the
    tokens of passage i.
    """

    example_id: str
    view: str
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # each prompt token decoded alone (for display)
    answer_ids: tuple[int, ...]
    titles: tuple[str, ...]
    relevant: tuple[bool, ...]
    spans: tuple[tuple[int, int], ...]  # token span [start, end) of each passage's line
    question_span: tuple[int, int] | None
    logprob: float
    logprob_without: tuple[float, ...]
    token_ig: TokenVector
    f_input: float
    f_baseline: float
    neurons: tuple[tuple[int, int], ...] = ()
    neuron_means: PassageNeuronMeans = field(default_factory=lambda: torch.zeros(0, 0))
    neuron_set: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_passages(self) -> int:
        return len(self.spans)

    @property
    def loo(self) -> tuple[float, ...]:
        """Leave-one-out effect of each passage: logprob - logprob_without[i] (nats)."""
        return tuple(self.logprob - w for w in self.logprob_without)

    @property
    def passage_ig(self) -> PassageVector:
        """IG of each passage: the sum of token_ig over its span."""
        return torch.stack([self.token_ig[a:b].sum() for a, b in self.spans]) if self.spans else torch.zeros(0)

    @property
    def share(self) -> PassageVector:
        """|IG of passage i| / sum over passages of |IG|: how the passages split their attribution."""
        mass = self.passage_ig.abs()
        total = float(mass.sum())
        return mass / total if total > 0 else torch.zeros_like(mass)

    @property
    def gap(self) -> float:
        """Completeness gap: sum of every prompt token's IG - (f(x) - f(x'))."""
        return float(self.token_ig.sum()) - (self.f_input - self.f_baseline)

    @property
    def relative_gap(self) -> float:
        """|gap| / max(|f(x) - f(x')|, GAP_FLOOR), as attribution.NeuronScores measures it."""
        return abs(self.gap) / max(abs(self.f_input - self.f_baseline), GAP_FLOOR)

    def table(self) -> pd.DataFrame:
        """One row per passage: passage (1-based, as the prompt numbers it), relevant, title,
        n_tokens, loo_delta, ig_sum, share."""
        ig, share = self.passage_ig.tolist(), self.share.tolist()
        return pd.DataFrame(
            [{"passage": i + 1, "relevant": self.relevant[i], "title": self.titles[i], "n_tokens": b - a,
              "loo_delta": self.loo[i], "ig_sum": ig[i], "share": share[i]}
             for i, (a, b) in enumerate(self.spans)],
            columns=["passage", "relevant", "title", "n_tokens", "loo_delta", "ig_sum", "share"],
        )

    def part_of(self) -> list[int | None]:
        """For each prompt token: the (1-based) passage it belongs to, 0 for the question, else None."""
        parts: list[int | None] = [None] * len(self.token_ids)
        for i, (a, b) in enumerate(self.spans, start=1):
            parts[a:b] = [i] * (b - a)
        if self.question_span is not None:
            a, b = self.question_span
            parts[a:b] = [0] * (b - a)
        return parts

    def token_table(self) -> pd.DataFrame:
        """One row per prompt token: pos, token, ig, passage (1-based; 0 = question; None = template)."""
        return pd.DataFrame(
            {"pos": range(len(self.token_ids)), "token": self.tokens, "ig": self.token_ig.tolist(),
             "passage": pd.array(self.part_of(), dtype="Int64")}
        )

    def top_neurons(self, k: int = 5) -> pd.DataFrame:
        """The k neurons with the largest |mean activation| on each passage: passage, relevant,
        rank, layer, neuron, mean_activation (signed: gated MLPs fire both ways)."""
        rows = []
        n = min(k, len(self.neurons))
        for i in range(self.n_passages if n else 0):
            means = self.neuron_means[i]
            for rank, j in enumerate(means.abs().argsort(descending=True)[:n].tolist(), start=1):
                layer, index = self.neurons[j]
                rows.append({"passage": i + 1, "relevant": self.relevant[i], "rank": rank, "layer": layer,
                             "neuron": index, "mean_activation": float(means[j])})
        return pd.DataFrame(rows, columns=["passage", "relevant", "rank", "layer", "neuron", "mean_activation"])

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "example_id": self.example_id, "view": self.view,
            "token_ids": list(self.token_ids), "tokens": list(self.tokens), "answer_ids": list(self.answer_ids),
            "titles": list(self.titles), "relevant": list(self.relevant), "spans": [list(s) for s in self.spans],
            "question_span": list(self.question_span) if self.question_span else None,
            "logprob": self.logprob, "logprob_without": list(self.logprob_without),
            "token_ig": self.token_ig.double().tolist(), "f_input": self.f_input, "f_baseline": self.f_baseline,
            "neurons": [list(n) for n in self.neurons], "neuron_means": self.neuron_means.double().tolist(),
            "neuron_set": self.neuron_set, "config": self.config,
            # derived, for readers of the file; recomputed on load
            "passages": self.table().to_dict(orient="records"), "gap": self.gap, "relative_gap": self.relative_gap,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "passage attribution") -> "PassageAttribution":
        try:
            if data.get("format_version") != FORMAT_VERSION:
                raise ArtifactError(f"{where}: format_version {data.get('format_version')!r}, expected {FORMAT_VERSION}.")
            n_passages = len(data["spans"])
            means = torch.tensor(data["neuron_means"], dtype=torch.float64).reshape(n_passages, len(data["neurons"]))
            return cls(
                example_id=data["example_id"], view=data["view"], token_ids=tuple(data["token_ids"]),
                tokens=tuple(data["tokens"]), answer_ids=tuple(data["answer_ids"]), titles=tuple(data["titles"]),
                relevant=tuple(bool(r) for r in data["relevant"]), spans=tuple(tuple(s) for s in data["spans"]),
                question_span=tuple(data["question_span"]) if data["question_span"] else None,
                logprob=float(data["logprob"]), logprob_without=tuple(float(v) for v in data["logprob_without"]),
                token_ig=torch.tensor(data["token_ig"], dtype=torch.float64), f_input=float(data["f_input"]),
                f_baseline=float(data["f_baseline"]), neurons=tuple(tuple(n) for n in data["neurons"]),
                neuron_means=means, neuron_set=data["neuron_set"], config=data["config"],
            )
        except (KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise ArtifactError(f"{where} is not a complete passage attribution ({exc!r}).") from None



# ----------------------------------------------------------------------------------------------
# the three measurements


def leave_one_out(model: Any, example: RagExample, prompt: Prompt, prompt_config: PromptConfig,
                  on_progress: ProgressFn = no_progress) -> tuple[float, tuple[float, ...]]:
    """(answer log-prob of the prompt, answer log-prob with each passage left out), one forward each."""
    full = answer_logprob(model, prompt)
    without = []
    for i in range(len(prompt.passages)):
        kept = prompt.passages[:i] + prompt.passages[i + 1 :]
        reduced = build_prompt_from_passages(example, kept, prompt.view, prompt_config, model.tokenizer)
        without.append(answer_logprob(model, reduced))
        on_progress(i + 1, len(prompt.passages), "leave one passage out")
    return full, tuple(without)


def _pad_embedding(model: Any) -> tuple[int, Tensor]:
    """(token, its hook_embed vector [d_model]): the pad token, else eos, else bos, the first whose
    embedding is not all zero (Hugging Face zero-initialises the `padding_idx` row, and a row never
    trained stays so: that would be the zero baseline under another name)."""
    tokenizer = model.tokenizer
    candidates = list(dict.fromkeys(
        int(t) for t in (getattr(tokenizer, n, None) for n in ("pad_token_id", "eos_token_id", "bos_token_id"))
        if t is not None
    ))
    if candidates:
        device = next(model.parameters()).device
        _, embed = _capture_embeddings(model, torch.tensor([candidates], dtype=torch.long, device=device))
        for token, vector in zip(candidates, embed):
            if bool(vector.abs().sum() > 0):
                return token, vector
    raise ConfigError(
        f"PassageConfig.baseline = 'pad': the tokenizer's pad / eos / bos tokens {candidates} have no non-zero "
        "embedding; use baseline 'zero'."
    )


def _last_logits(model: Any, tokens: Tensor, keep: int) -> Tensor:
    """Logits of the last `keep` positions [batch, keep, d_vocab]; the unembedding runs for those
    only where the architecture takes `logits_to_keep` (as models.prefill)."""
    try:
        logits = model(tokens, logits_to_keep=keep)
    except TypeError:
        logits = model(tokens)
    return logits[:, -keep:]


def _capture_embeddings(
    model: Any, ids: Tensor, keep: int = 1, extra: dict[str, Callable] | None = None
) -> tuple[Tensor, Tensor]:
    """(logits of the last `keep` positions, the hook_embed output [pos, d_model] float32) of one
    forward over ids [1, pos]; `extra` hooks run on the same forward."""
    seen: dict[str, Tensor] = {}

    def read(x: Tensor, hook: Any) -> Tensor:
        seen["embed"] = x[0].detach().float().clone()
        return x

    hooks = [(EMBED_HOOK, read)] + list((extra or {}).items())
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = _last_logits(model, ids, keep)
    return logits, seen["embed"]


def _answer_logprob_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Sum over answer positions of log p(target): logits [rows, A, d_vocab], targets [A] -> [rows]."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [rows, A, d_vocab]
    return logp.gather(-1, targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1).sum(-1)


NODES_PER_INTERVAL = 8


@dataclass(frozen=True, eq=False)
class PathIntegral:
    """IG over the embeddings of one prompt: the per-token attribution and how it was integrated."""

    token_ig: TokenVector
    f_input: float  # f(x)
    f_baseline: float  # f(x')
    intervals: tuple[tuple[float, float], ...]  # the pieces of [0, 1] the composite rule ended with
    n_rows: int  # forward-backward rows spent (quadrature nodes, refinement included)


def integrated_gradients(
    model: Any, prompt: Prompt, config: PassageConfig, *, moved: TokenFlags | None = None,
    on_progress: ProgressFn = no_progress, extra_hooks: dict[str, Callable] | None = None,
) -> PathIntegral:
    """IG of the answer log-prob w.r.t. the prompt's token embeddings, refined until complete.

    The prompt positions flagged in `moved` (default: all) move together from the baseline to
    their embedding x; the others, and the teacher-forced answer tokens, keep their embeddings
    (x' = x there, so their IG is 0). ig[t] = sum_d (x - x')[t, d] * sum_k w_k df/dz[t, d] at
    z = x' + alpha_k (x - x'), by a composite rule: [0, 1] cut into intervals of 8 nodes each
    (n_steps // 8 of them at first). On an interval [a, b] the fundamental theorem of calculus
    gives the exact target f(b) - f(a) (a forward at each cut), so each interval has its own
    completeness gap; they sum to the whole path's. With refine_gap, every interval whose |gap|
    exceeds its share refine_gap * |f(x) - f(x')| * (b - a) is bisected (8 new nodes per half)
    until the whole gap is within refine_gap or max_steps nodes are spent: the steps go where the
    path is steep. extra_hooks run on the clean forward that reads x (e.g. neuron activations).
    """
    device = next(model.parameters()).device
    prompt_ids = torch.tensor(prompt.token_ids, dtype=torch.long, device=device)
    targets = torch.tensor(prompt.answer_ids, dtype=torch.long, device=device)
    if not prompt.answer_ids:
        raise ConfigError("the prompt has no answer tokens to attribute to; give the example an answer.")
    n_prompt, n_answer = prompt_ids.numel(), targets.numel()
    tokens = torch.cat([prompt_ids, targets[:-1]])[None]  # [1, P + A - 1]
    logits, embed = _capture_embeddings(model, tokens, n_answer, extra_hooks)  # [1, A, d_vocab]
    f_x = float(_answer_logprob_rows(logits, targets)[0])
    x = embed[:n_prompt]  # [P, d_model]
    base = torch.zeros_like(x) if config.baseline == "zero" else _pad_embedding(model)[1].expand_as(x)
    if moved is not None:
        base = torch.where(moved.to(device)[:, None], base, x)  # [P, d_model]
    delta = (x - base).double()  # [P, d_model]
    chunk = config.max_rows_per_pass

    def rows(alphas: Sequence[float], grad: bool) -> tuple[list[float], Tensor | None]:
        """f at each alpha, and with grad the per-token (x - x') . df/dz of each [rows, P]."""
        values, per_token = [], []
        for start in range(0, len(alphas), chunk):
            part = torch.tensor(alphas[start : start + chunk], dtype=torch.float32, device=device)
            z = base[None] + part[:, None, None] * (x - base)[None]  # [rows, P, d_model]
            z.requires_grad_(grad)

            def put(e: Tensor, hook: Any, z: Tensor = z) -> Tensor:
                return torch.cat([z.to(e.dtype), e[:, n_prompt:]], dim=1)  # [rows, P + A - 1, d_model]

            with torch.set_grad_enabled(grad), model.hooks(fwd_hooks=[(EMBED_HOOK, put)]):
                out = _last_logits(model, tokens.expand(len(part), -1), n_answer)  # [rows, A, d_vocab]
                f_rows = _answer_logprob_rows(out, targets)  # [rows]
            if grad:
                (g,) = torch.autograd.grad(f_rows.sum(), [z])  # [rows, P, d_model]
                per_token.append((delta[None] * g.double()).sum(-1))  # [rows, P]
            values += f_rows.detach().tolist()
        return values, torch.cat(per_token) if grad else None

    nodes_per = min(NODES_PER_INTERVAL, config.n_steps)
    first = max(1, config.n_steps // NODES_PER_INTERVAL)
    pieces = [(k / first, (k + 1) / first) for k in range(first)]
    f_at: dict[float, float] = {1.0: f_x}
    ig_of: dict[tuple[float, float], Tensor] = {}  # the attribution [P] of each interval
    spent, planned = 0, len(pieces) * nodes_per
    with frozen(model), torch.inference_mode(False):
        while pieces:
            cuts = sorted(({a for a, _ in pieces} | {b for _, b in pieces}) - set(f_at))
            f_at.update(zip(cuts, rows(cuts, grad=False)[0]))
            for start in range(0, len(pieces), max(1, chunk // nodes_per)):
                batch = pieces[start : start + max(1, chunk // nodes_per)]
                nodes = [_nodes(a, b, nodes_per, config.quadrature) for a, b in batch]
                _, per_token = rows([al for n in nodes for al, _ in n], grad=True)
                weights = torch.tensor([w for n in nodes for _, w in n], dtype=torch.float64, device=device)
                weighted = (weights[:, None] * per_token).view(len(batch), nodes_per, n_prompt).sum(1)  # [pieces, P]
                for piece, ig in zip(batch, weighted):
                    ig_of[piece] = ig.cpu()
                spent += len(batch) * nodes_per
                on_progress(spent, planned, "integrated gradients")
            scale = max(abs(f_x - f_at[0.0]), GAP_FLOOR)
            gaps = {p: float(ig.sum()) - (f_at[p[1]] - f_at[p[0]]) for p, ig in ig_of.items()}
            if config.refine_gap is None or abs(sum(gaps.values())) <= config.refine_gap * scale:
                break
            over = sorted((p for p, g in gaps.items() if abs(g) > config.refine_gap * scale * (p[1] - p[0])),
                          key=lambda p: -abs(gaps[p]))
            over = over[: (config.max_steps - spent) // (2 * nodes_per)]
            pieces = [half for a, b in over for half in ((a, (a + b) / 2), ((a + b) / 2, b))]
            for piece in over:
                del ig_of[piece]
            planned = spent + len(pieces) * nodes_per
            if pieces:
                log.info("IG over the embeddings: bisecting %d interval(s) (%d nodes spent)", len(over), spent)
    token_ig = torch.stack(list(ig_of.values())).sum(0)  # [P]
    return PathIntegral(token_ig=token_ig, f_input=f_x, f_baseline=f_at[0.0], intervals=tuple(sorted(ig_of)),
                        n_rows=spent)


def _nodes(a: float, b: float, n: int, rule: Quadrature) -> list[tuple[float, float]]:
    """The quadrature nodes and weights of [a, b] (weights sum to b - a)."""
    alphas, weights = quadrature_rule(n, rule)
    return [(a + (b - a) * float(al), (b - a) * float(w)) for al, w in zip(alphas, weights)]


def _neuron_hooks(model: Any, neurons: Sequence[tuple[int, int]], n_prompt: int,
                  store_to: dict[int, Tensor]) -> dict[str, Callable]:
    """Hooks keeping the prompt positions' activations [P, d_mlp] of each layer holding a neuron."""
    site = neuron_site(model)

    def make(layer: int) -> Callable:
        def keep(x: Tensor, hook: Any) -> Tensor:
            store_to[layer] = x[0, :n_prompt].detach().float().cpu()
            return x

        return keep

    return {site.hook_name(layer): make(layer) for layer in sorted({l for l, _ in neurons})}


def _span_means(acts: dict[int, Tensor], neurons: Sequence[tuple[int, int]],
                spans: Sequence[tuple[int, int]]) -> PassageNeuronMeans:
    means = torch.zeros(len(spans), len(neurons), dtype=torch.float64)
    for i, (a, b) in enumerate(spans):
        if b > a:
            for j, (layer, index) in enumerate(neurons):
                means[i, j] = acts[layer][a:b, index].double().mean()
    return means


def attribute_passages(
    model: Any,
    example: RagExample,
    prompt_config: PromptConfig,
    config: PassageConfig = PassageConfig(),
    *,
    neurons: NeuronSet | None = None,
    on_progress: ProgressFn = no_progress,
) -> PassageAttribution:
    """Leave-one-out, IG and (given neurons) mean activations of each passage of the example's view.

    The view (default noisy) is built by prompts.build_prompt and refused when it exceeds the
    model's context. neurons: e.g. a mined irrelevant-exclusive set; its grid must match the model.
    """
    prompt = prompt_for(model, example, config.view, prompt_config)
    spans = passage_spans(prompt, model.tokenizer)
    chosen: list[tuple[int, int]] = []
    if neurons is not None:
        shape = (int(model.cfg.n_layers), int(model.cfg.d_mlp))
        if neurons.shape != shape:
            raise ConfigError(
                f"the neuron set {neurons.label!r} is {neurons.shape[0]} layers x {neurons.shape[1]} neurons, the model "
                f"is {shape[0]} x {shape[1]}: mined on another model?"
            )
        chosen = neurons.neurons()
    with torch.no_grad():
        full, without = leave_one_out(model, example, prompt, prompt_config, on_progress)
    acts: dict[int, Tensor] = {}
    hooks = _neuron_hooks(model, chosen, prompt.n_tokens, acts) if chosen else None
    moved = torch.zeros(prompt.n_tokens, dtype=torch.bool)
    parts = spans.passages + ((spans.question,) if config.scope == "content" and spans.question else ())
    for a, b in parts:
        moved[a:b] = True
    if config.scope == "prompt":
        moved[:] = True
    path = integrated_gradients(model, prompt, config, moved=moved, on_progress=on_progress, extra_hooks=hooks)
    means = _span_means(acts, chosen, spans.passages) if chosen else torch.zeros(len(spans.passages), 0)
    result = PassageAttribution(
        example_id=example.id, view=prompt.view, token_ids=prompt.token_ids,
        tokens=tuple(model.tokenizer.decode([t]) for t in prompt.token_ids), answer_ids=prompt.answer_ids,
        titles=tuple(p.title for p in prompt.passages), relevant=tuple(p.relevant for p in prompt.passages),
        spans=spans.passages, question_span=spans.question, logprob=full, logprob_without=without,
        token_ig=path.token_ig, f_input=path.f_input, f_baseline=path.f_baseline, neurons=tuple(chosen),
        neuron_means=means, neuron_set=neurons.label if neurons is not None else "",
        config={**config.to_dict(), "prompt": prompt_config.to_dict(), "steps_used": path.n_rows,
                "intervals": [list(i) for i in path.intervals]},
    )
    log.info("example %s: IG completeness gap %.4f (%.2f%% of |f(x) - f(x')|)", example.id, result.gap,
             100 * result.relative_gap)
    return result
