"""The neuron card: everything the workbench knows about one MLP neuron (layer, index), as one value.

Owns: `neuron_card` and `NeuronCard` (frozen, `to_json()`): its top-activating contexts and its
graded activation (last token by view, tokens by passage type, a Mann-Whitney U test of
relevant-only vs irrelevant-only last-token activations), read from an activation index; what
it writes (`token_effects`: its output weight row through the unembedding, via neurorit.readout)
and its direct contribution to the gold answer's first-token logit; its IG record in a mined
artifact and the saved masks that hold it; and "switch it off alone" (`switch_off_alone`: the
change of the gold answer's log-prob when only it is zeroed, next to a random neuron of its
layer). Must not: spell hook names, import streamlit, or draw (app/ and pages/ do).

Approximation of the weight readings (as in readout.promoted_token_ids): the final norm is
not applied, neither its per-dimension weight nor the 1 / rms of the residual stream, so
`W_out[i] . W_U[:, t]` is the direct logit effect of a unit activation up to that norm's scale;
the direct contribution ignores the rest of the residual stream and the softmax (a logit, not a
log-prob, effect).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats as sps
from torch import Tensor

from neurorit.activations import ActivationIndex, RegionStats, example_hash, neuron_activations_over_prompt
from neurorit.decoding import answer_logprob
from neurorit.errors import ConfigError, DataError, ModelMismatchError
from neurorit.masks import NeuronMask
from neurorit.mining import MinedNeurons
from neurorit.models import hf_state_dict, model_identity
from neurorit.prompts import PromptConfig, build_prompt
from neurorit.readout import check_neuron, output_directions, unembedding, vocab_size
from neurorit.stats import Interval, PairedComparison, mean_interval, paired_comparison

log = logging.getLogger(__name__)

N_TOKENS = 10  # promoted / suppressed tokens shown
N_SWITCH_OFF = 8  # examples of the switch-off test (a card should open in seconds on a CPU)


# ----------------------------------------------------------------------------------------------
# Parts of a card


@dataclass(frozen=True)
class Context:
    """One top-activating context: the hit and the tokens around it inside its prompt."""

    rank: int  # 0 = the strongest
    activation: float
    example_id: str
    view: str
    position: int
    token_id: int
    token: str
    region: str  # "relevant", "irrelevant", "question" or "other" (template, instruction, labels)
    passage: int  # 1-based number of the passage in that prompt, 0 outside any passage
    center: int  # the hit's place in the tokens below
    token_ids: tuple[int, ...]
    tokens: tuple[str, ...]  # each token decoded on its own
    activations: tuple[float, ...]  # this neuron's activation on each of them
    regions: tuple[str, ...]
    passages: tuple[int, ...]


@dataclass(frozen=True)
class ViewActivation:
    """The neuron's last-token activation over the examples shown in one view."""

    view: str
    n: int
    mean: float
    q10: float
    median: float
    q90: float
    values: tuple[float, ...]  # per example holding the view, in index order


@dataclass(frozen=True)
class RankTest:
    """Mann-Whitney U (two-sided) of relevant-only vs irrelevant-only last-token activations.

    u: the U statistic of the relevant sample; rank_biserial = 2 u / (n_relevant n_irrelevant) - 1,
    in [-1, 1]: +1 when every relevant-view activation exceeds every irrelevant-view one.
    """

    n_relevant: int
    n_irrelevant: int
    u: float
    p_value: float
    rank_biserial: float


@dataclass(frozen=True)
class TokenEffect:
    """A token and W_out[i] . W_U[:, token] (the logit a unit activation adds, final norm not applied)."""

    token_id: int
    token: str
    logit: float


@dataclass(frozen=True)
class DirectEffect:
    """The neuron's direct contribution to the gold answer's first-token logit on one prompt.

    contribution = activation (last prompt token) x weight (W_out[i] . W_U[:, gold]); source says
    where the activation came from: "index" (recorded) or "forward" (one forward, stopped after
    the layer).
    """

    example_id: str
    view: str
    gold_token_id: int
    gold_token: str
    activation: float
    weight: float
    contribution: float
    source: str


@dataclass(frozen=True)
class IGRecord:
    """The neuron in a mined artifact: mean IG score and selection frequency per view, sets holding it."""

    relevant_mean: float
    irrelevant_mean: float
    relevant_frequency: float
    irrelevant_frequency: float
    sets: tuple[str, ...]
    n_examples: int


@dataclass(frozen=True)
class MaskMembership:
    """A saved mask that scales this neuron (scale != 1)."""

    name: str
    scale: float
    n_neurons: int


@dataclass(frozen=True)
class SwitchOff:
    """Gold-answer log-prob change when only this neuron is zeroed, next to a random neuron of its layer.

    deltas: log p(masked) - log p(unmasked) per example; neuron / random: their means with 95 %
    bootstrap intervals (stats.mean_interval); versus_random: neuron - random, paired.
    """

    view: str
    example_ids: tuple[str, ...]
    deltas: tuple[float, ...]
    random_index: int
    random_deltas: tuple[float, ...]
    neuron: Interval
    random: Interval
    versus_random: PairedComparison


@dataclass(frozen=True)
class NeuronCard:
    """One neuron's card. Optional parts are None (or empty) when their input was not given."""

    layer: int
    index: int
    model: str
    fingerprint: str
    index_key: str  # the activation index the contexts and activations come from
    n_examples: int  # examples in that index
    contexts: tuple[Context, ...]
    by_view: tuple[ViewActivation, ...]
    by_region: tuple[RegionStats, ...]
    rank_test: RankTest | None
    promoted: tuple[TokenEffect, ...]
    suppressed: tuple[TokenEffect, ...]
    direct: DirectEffect | None
    ig: IGRecord | None
    masks: tuple[MaskMembership, ...]
    switch_off: SwitchOff | None
    notes: tuple[str, ...]  # what was skipped or approximated, in words

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN and infinities become None)."""
        return _json_safe(dataclasses.asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value


# ----------------------------------------------------------------------------------------------
# What the neuron writes


@torch.no_grad()
def neuron_logit_weights(model: Any, layer: int, index: int) -> Float[Tensor, "d_vocab"]:
    """W_out[layer][index] @ W_U^T: the logit each token gains per unit activation (float32, CPU).

    The final norm is not applied (see the module docstring).
    """
    check_neuron(model, layer, index)
    state = hf_state_dict(model)
    w_u = unembedding(model, state)
    row = output_directions(model, layer, state)[index].float().to(w_u.device)  # [d_model]
    return (w_u[: vocab_size(model, w_u)].float() @ row).cpu()  # [d_vocab]


def token_effects(
    model: Any, layer: int, index: int, k: int = N_TOKENS
) -> tuple[tuple[TokenEffect, ...], tuple[TokenEffect, ...]]:
    """The k tokens the neuron's output weights promote most and the k they suppress most."""
    if k < 1:
        raise ConfigError.field("token_effects", "k", k, "an integer >= 1")
    logits = neuron_logit_weights(model, layer, index)
    k = min(k, logits.numel())
    tokenizer = model.tokenizer

    def effects(top: Any) -> tuple[TokenEffect, ...]:
        return tuple(TokenEffect(int(t), tokenizer.decode([int(t)]), float(v))
                     for v, t in zip(top.values.tolist(), top.indices.tolist()))

    return effects(logits.topk(k)), effects(logits.topk(k, largest=False))  # suppressed: most negative first


def direct_effect(
    model: Any, layer: int, index: int, example: Any, view: str, prompt_config: PromptConfig,
    activation_index: ActivationIndex | None = None,
) -> DirectEffect:
    """The neuron's direct contribution to the gold answer's first-token logit on one prompt.

    activation (last prompt token, from the index when it holds this example and view, else one
    forward) x W_out[i] . W_U[:, first gold token]; the final norm is not applied.
    """
    check_neuron(model, layer, index)
    if activation_index is not None:
        activation_index.check_model(model)
    prompt = build_prompt(example, view, prompt_config, model.tokenizer, max_tokens=int(model.cfg.n_ctx))
    gold = int(prompt.answer_ids[0])
    activation, source = None, "forward"
    if activation_index is not None and view in activation_index.views:
        row = activation_index.row_of(example.id)
        if row is not None and activation_index.example_hashes[row] == example_hash(example) \
                and PromptConfig.from_dict(activation_index.prompt_config) == prompt_config:
            value = float(activation_index.last_token[row, activation_index.views.index(view), layer, index])
            if math.isfinite(value):
                activation, source = value, "index"
    if activation is None:
        trace = neuron_activations_over_prompt(model, example, view, layer, index, prompt_config)
        activation = float(trace.values[-1])
    weight = float(neuron_logit_weights(model, layer, index)[gold])
    return DirectEffect(
        example_id=example.id, view=view, gold_token_id=gold, gold_token=model.tokenizer.decode([gold]),
        activation=activation, weight=weight, contribution=activation * weight, source=source,
    )


# ----------------------------------------------------------------------------------------------
# Switching it off


def random_other_neuron(layer: int, index: int, d_mlp: int, seed: int = 0) -> int:
    """A neuron of the same layer other than `index`, drawn from (seed, layer, index)."""
    if d_mlp < 2:
        raise ConfigError(f"layer {layer} has {d_mlp} neuron(s); a random other neuron needs at least 2.")
    pick = random.Random(f"{seed}:{layer}:{index}").randrange(d_mlp - 1)
    return pick + 1 if pick >= index else pick


def single_neuron_mask(model: Any, layer: int, index: int) -> NeuronMask:
    """The mask that zeroes only (layer, index)."""
    check_neuron(model, layer, index)
    return NeuronMask.from_neurons([(layer, index)], model)


def switch_off_alone(
    model: Any, layer: int, index: int, examples: Sequence[Any], *, view: str = "noisy",
    prompt_config: PromptConfig | None = None, seed: int = 0,
) -> SwitchOff:
    """The gold answer's log-prob change per example when only this neuron is zeroed, and when only a
    random neuron of the same layer is (decoding.answer_logprob: one teacher-forced forward each).

    Examples without a prompt in `view` are skipped; none left is a DataError.
    """
    prompt_config = prompt_config or PromptConfig()
    other = random_other_neuron(layer, index, int(model.cfg.d_mlp), seed)
    mask, control = single_neuron_mask(model, layer, index), single_neuron_mask(model, layer, other)
    ids, deltas, random_deltas = [], [], []
    for example in examples:
        try:
            prompt = build_prompt(example, view, prompt_config, model.tokenizer, max_tokens=int(model.cfg.n_ctx))
        except DataError as exc:
            log.warning("switch-off: skipping example %s (%s view): %s", example.id, view, exc)
            continue
        base = answer_logprob(model, prompt)
        deltas.append(answer_logprob(model, prompt, mask=mask) - base)
        random_deltas.append(answer_logprob(model, prompt, mask=control) - base)
        ids.append(example.id)
    if not ids:
        raise DataError(f"none of the {len(examples)} examples has a {view} prompt; switch-off needs at least one.")
    return SwitchOff(
        view=view, example_ids=tuple(ids), deltas=tuple(deltas), random_index=other,
        random_deltas=tuple(random_deltas), neuron=mean_interval(deltas, seed=seed),
        random=mean_interval(random_deltas, seed=seed),
        versus_random=paired_comparison(deltas, random_deltas, seed=seed),
    )


# ----------------------------------------------------------------------------------------------
# Reading the index, the mined artifact and the masks


def _contexts(model: Any, activation_index: ActivationIndex, layer: int, index: int) -> tuple[Context, ...]:
    tokenizer = model.tokenizer
    out = []
    for hit in activation_index.top_hits(layer, index):
        out.append(Context(
            rank=hit.rank, activation=hit.value, example_id=hit.example_id, view=hit.view, position=hit.position,
            token_id=hit.token_id, token=tokenizer.decode([hit.token_id]), region=hit.region, passage=hit.passage,
            center=hit.center, token_ids=hit.window_token_ids,
            tokens=tuple(tokenizer.decode([t]) for t in hit.window_token_ids), activations=hit.window_values,
            regions=hit.window_regions, passages=hit.window_passages,
        ))
    return tuple(out)


def _by_view(activation_index: ActivationIndex, layer: int, index: int) -> tuple[ViewActivation, ...]:
    values = activation_index.last_token_values(layer, index)  # [n_examples, n_views]
    out = []
    for v, view in enumerate(activation_index.views):
        x = values[:, v]
        x = x[torch.isfinite(x)].double()
        if x.numel():
            q10, median, q90 = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
            mean = float(x.mean())
        else:
            q10 = median = q90 = mean = math.nan
        out.append(ViewActivation(view, int(x.numel()), mean, q10, median, q90, tuple(float(a) for a in x.tolist())))
    return tuple(out)


def rank_test(relevant: Sequence[float], irrelevant: Sequence[float]) -> RankTest | None:
    """Mann-Whitney U (two-sided) with the rank-biserial correlation; None when a side is empty."""
    x, y = np.asarray(relevant, dtype=float), np.asarray(irrelevant, dtype=float)
    if x.size == 0 or y.size == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-equal samples: scipy warns, p is 1 or NaN
        result = sps.mannwhitneyu(x, y, alternative="two-sided")
    u = float(result.statistic)
    p = float(result.pvalue)
    return RankTest(int(x.size), int(y.size), u, p if math.isfinite(p) else 1.0, 2.0 * u / (x.size * y.size) - 1.0)


def _view_values(by_view: Sequence[ViewActivation], view: str) -> tuple[float, ...]:
    return next((v.values for v in by_view if v.view == view), ())


def ig_record(mined: MinedNeurons, layer: int, index: int) -> IGRecord:
    """The neuron's IG scores and selection frequencies in a mined artifact, and the sets holding it."""
    n_layers, d_mlp = mined.relevant.shape
    if not (0 <= layer < n_layers and 0 <= index < d_mlp):
        raise ModelMismatchError(
            f"neuron {layer}:{index} is outside the mined sets' grid of {n_layers} layers x {d_mlp} neurons: mined "
            "on another model?"
        )
    sets = tuple(name for name, s in mined.named_sets().items() if bool(s.grid[layer, index]))
    return IGRecord(
        relevant_mean=float(mined.relevant_mean[layer, index]),
        irrelevant_mean=float(mined.irrelevant_mean[layer, index]),
        relevant_frequency=float(mined.relevant_frequency[layer, index]),
        irrelevant_frequency=float(mined.irrelevant_frequency[layer, index]), sets=sets,
        n_examples=len(mined.example_ids),
    )


def mask_memberships(
    masks: Mapping[str, NeuronMask] | Sequence[NeuronMask], layer: int, index: int,
) -> tuple[MaskMembership, ...]:
    """The masks (by name: the mapping's key, else the mask's set label and key) that scale this neuron."""
    named = masks.items() if isinstance(masks, Mapping) else (
        (f"{m.provenance.get('set_label') or m.provenance.get('kind', 'mask')} ({m.key()[:8]})", m) for m in masks)
    out = []
    for name, mask in named:
        n_layers, d_mlp = mask.scale.shape
        if not (0 <= layer < n_layers and 0 <= index < d_mlp):
            raise ModelMismatchError(
                f"mask {name} has {n_layers} layers x {d_mlp} neurons, no neuron {layer}:{index}: made for "
                f"another model ({mask.model.name})?"
            )
        scale = float(mask.scale[layer, index])
        if scale != 1.0:
            out.append(MaskMembership(str(name), scale, len(mask)))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# The card


def neuron_card(
    model: Any,
    layer: int,
    index: int,
    *,
    activation_index: ActivationIndex,
    mined: MinedNeurons | None = None,
    masks: Mapping[str, NeuronMask] | Sequence[NeuronMask] = (),
    examples: Sequence[Any] | None = None,
    example: Any | None = None,
    prompt_config: PromptConfig | None = None,
    view: str = "noisy",
    n_tokens: int = N_TOKENS,
    n_switch_off: int = N_SWITCH_OFF,
    seed: int = 0,
) -> NeuronCard:
    """The card of neuron (layer, index) of `model`.

    From the activation index (no forward pass): top contexts, last-token activation by view, token
    activations by passage type, the rank test. From the weights: promoted / suppressed tokens.
    example: the direct contribution to its gold answer's first-token logit in `view`. mined: the
    IG record. masks: which of them scale the neuron. examples: switch it off alone on the first
    `n_switch_off` of them in `view` (3 forwards each). prompt_config: the index's by default.
    The index must be built on the model's weights (ModelMismatchError), and hold the neuron
    (ConfigError). An example (or all examples) without a prompt in `view` leaves that part None,
    with the reason in `notes`.
    """
    activation_index.check_model(model)
    activation_index.check_neuron(layer, index)
    prompt_config = prompt_config or PromptConfig.from_dict(activation_index.prompt_config)
    identity = model_identity(model)
    notes = ["promoted / suppressed tokens and the direct effect use W_out . W_U without the final norm"]
    by_view = _by_view(activation_index, layer, index)
    test = rank_test(_view_values(by_view, "relevant"), _view_values(by_view, "irrelevant"))
    if test is None:
        notes.append("no rank test: the index lacks relevant-view or irrelevant-view activations")
    promoted, suppressed = token_effects(model, layer, index, n_tokens)
    direct = None
    if example is not None:
        try:
            direct = direct_effect(model, layer, index, example, view, prompt_config, activation_index)
        except DataError as exc:  # no prompt in that view: the rest of the card still holds
            notes.append(f"no direct effect: {exc}")
    switch = None
    if examples:
        try:
            switch = switch_off_alone(model, layer, index, list(examples)[:n_switch_off], view=view,
                                      prompt_config=prompt_config, seed=seed)
        except DataError as exc:
            notes.append(f"no switch-off test: {exc}")
    else:
        notes.append("no switch-off test: no examples given")
    return NeuronCard(
        layer=layer, index=index, model=identity.name, fingerprint=identity.fingerprint,
        index_key=activation_index.key(), n_examples=activation_index.n_examples,
        contexts=_contexts(model, activation_index, layer, index), by_view=by_view,
        by_region=activation_index.region_stats(layer, index), rank_test=test, promoted=promoted,
        suppressed=suppressed, direct=direct, ig=ig_record(mined, layer, index) if mined is not None else None,
        masks=mask_memberships(masks, layer, index), switch_off=switch, notes=tuple(notes),
    )
