"""Neuron sets: selecting neurons from attribution scores and the set algebra over them.

Owns: how a neuron is written (`parse_neuron`, `parse_neurons`: 'layer:index', the one parser of
the CLI, the app and the notes; `check_neuron` against a model's grid), `NeuronSet` (a boolean
layer x neuron grid with | & - algebra and per-layer counts), the five named sets of a relevant /
irrelevant pair (`SET_NAMES`, `five_sets`) and
the selection steps of a `SelectionRule` (mining_spec.py) (per example: a threshold relative to the example's
max, top-k, or the counting recipe's top-N; across examples: support or the h most frequent):
`select_example`, `selection_frequency`, `aggregate_selection`, `select_neurons`. The mined sets
of a dataset (`MinedNeurons`, saved as artifacts) live in mining.py. Must not: run models (see
attribution.py and mining.py) or read and write files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from neurorit.errors import ConfigError, ModelMismatchError
from neurorit.mining_spec import SelectionRule
from neurorit.types import NeuronGrid, NeuronMaskGrid


Neuron = tuple[int, int]
"""(layer, index)."""

_NEURON = re.compile(r"^\s*(-?\d+)\s*:\s*(-?\d+)\s*$")


def check_neuron(layer: int, index: int, n_layers: int, d_mlp: int) -> None:
    """ConfigError naming the model's ranges when (layer, index) is not in its grid."""
    if not (0 <= int(layer) < n_layers and 0 <= int(index) < d_mlp):
        raise ConfigError(f"neuron {layer}:{index} is outside the model: it has layers 0-{n_layers - 1} and "
                          f"neurons 0-{d_mlp - 1} per layer.")


def is_neuron_text(text: str | None) -> bool:
    """True when the text is written as one neuron, 'layer:index'."""
    return bool(_NEURON.match(str(text or "")))


def parse_neuron(text: str | None, n_layers: int | None = None, d_mlp: int | None = None) -> Neuron:
    """'15:821' (spaces allowed) -> (15, 821); checked against the grid when n_layers and d_mlp are
    given, else only that both are >= 0; anything else -> one ConfigError that says why."""
    match = _NEURON.match(str(text or ""))
    if not match:
        raise ConfigError(f"a neuron is written layer:index, e.g. 15:821; got {str(text or '')!r}.")
    layer, index = int(match.group(1)), int(match.group(2))
    if n_layers is not None and d_mlp is not None:
        check_neuron(layer, index, n_layers, d_mlp)
    elif layer < 0 or index < 0:
        raise ConfigError(f"a neuron's layer and index are >= 0; got {str(text)!r}.")
    return layer, index


def parse_neurons(text: str | None, n_layers: int | None = None, d_mlp: int | None = None) -> list[Neuron]:
    """'3:17, 12:404' (commas, semicolons or new lines between) -> [(3, 17), (12, 404)], each once,
    in the order given; checked as parse_neuron; nothing given or a bad part -> ConfigError."""
    out: list[Neuron] = []
    for part in re.split(r"[,;\n]", text or ""):
        if not part.strip():
            continue
        if not _NEURON.match(part):
            raise ConfigError(f"neurons are 'layer:index' pairs separated by commas (e.g. 3:17, 12:404); got {part.strip()!r}.")
        neuron = parse_neuron(part, n_layers, d_mlp)
        if neuron not in out:
            out.append(neuron)
    if not out:
        raise ConfigError("no neurons given; type 'layer:index' pairs such as 3:17, 12:404.")
    return out


@dataclass(frozen=True, eq=False)
class NeuronSet:
    """A set of neurons `(layer, index)` over an n_layers x d_mlp grid."""

    grid: NeuronMaskGrid
    label: str = ""

    def __post_init__(self) -> None:
        if self.grid.dtype != torch.bool or self.grid.ndim != 2:
            raise ConfigError(
                f"NeuronSet.grid must be a 2-d bool tensor [n_layers, d_mlp], got "
                f"{self.grid.dtype} {tuple(self.grid.shape)}."
            )

    @classmethod
    def empty(cls, n_layers: int, d_mlp: int, label: str = "") -> "NeuronSet":
        return cls(torch.zeros(n_layers, d_mlp, dtype=torch.bool), label)

    @classmethod
    def from_neurons(
        cls, neurons: Iterable[tuple[int, int]], n_layers: int, d_mlp: int, label: str = ""
    ) -> "NeuronSet":
        grid = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
        for layer, index in neurons:
            check_neuron(layer, index, n_layers, d_mlp)
            grid[layer, index] = True
        return cls(grid, label)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.grid.shape[0]), int(self.grid.shape[1]))

    def _check(self, other: "NeuronSet") -> None:
        if self.shape != other.shape:
            raise ModelMismatchError(
                f"neuron sets have different shapes {self.shape} and {other.shape}: mined on different models?"
            )

    def __or__(self, other: "NeuronSet") -> "NeuronSet":
        self._check(other)
        return NeuronSet(self.grid | other.grid, f"({self.label} | {other.label})")

    def __and__(self, other: "NeuronSet") -> "NeuronSet":
        self._check(other)
        return NeuronSet(self.grid & other.grid, f"({self.label} & {other.label})")

    def __sub__(self, other: "NeuronSet") -> "NeuronSet":
        self._check(other)
        return NeuronSet(self.grid & ~other.grid, f"({self.label} - {other.label})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NeuronSet) and self.shape == other.shape and bool(torch.equal(self.grid, other.grid))

    def __len__(self) -> int:
        return int(self.grid.sum())

    def __contains__(self, neuron: tuple[int, int]) -> bool:
        layer, index = neuron
        return bool(self.grid[layer, index])

    def counts_per_layer(self) -> list[int]:
        return [int(c) for c in self.grid.sum(dim=1)]

    def neurons(self) -> list[tuple[int, int]]:
        return [(int(l), int(i)) for l, i in self.grid.nonzero().tolist()]

    def relabel(self, label: str) -> "NeuronSet":
        return NeuronSet(self.grid, label)


SET_NAMES = ("relevant", "irrelevant", "irrelevant-exclusive", "relevant-exclusive", "shared")
"""The five sets of a relevant / irrelevant pair (five_sets), in the order the workbench lists them."""


def five_sets(relevant: NeuronSet, irrelevant: NeuronSet) -> dict[str, NeuronSet]:
    """The relevant and irrelevant sets and their exclusive and shared parts, by SET_NAMES."""
    relevant, irrelevant = relevant.relabel("relevant"), irrelevant.relabel("irrelevant")
    return {
        "relevant": relevant, "irrelevant": irrelevant,
        "irrelevant-exclusive": (irrelevant - relevant).relabel("irrelevant-exclusive"),
        "relevant-exclusive": (relevant - irrelevant).relabel("relevant-exclusive"),
        "shared": (relevant & irrelevant).relabel("shared"),
    }


def select_example(scores: NeuronGrid, rule: SelectionRule) -> NeuronMaskGrid:
    """The neurons one example selects under the rule (before aggregation).

    scope "example": one threshold (or one top-k) over all layers; scope "layer": each layer on its
    own (useful where a few layers, such as layer 0 against a zero baseline, dwarf the rest).
    """
    values = scores.abs() if rule.use_abs else scores
    if rule.scope == "layer":
        return torch.stack([_select(row[None], rule)[0] for row in values])
    return _select(values, rule)


def _select(values: NeuronGrid, rule: SelectionRule) -> NeuronMaskGrid:
    if rule.mode in ("top_k", "count"):
        k = min(rule.top_k if rule.mode == "top_k" else rule.per_example, values.numel())
        flat = torch.zeros(values.numel(), dtype=torch.bool)
        flat[values.reshape(-1).topk(k).indices] = True
        return flat.view_as(values) & (values > 0)
    peak = values.max()
    if peak <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    return values >= rule.threshold * peak


def selection_frequency(grids: Sequence[NeuronGrid], rule: SelectionRule) -> NeuronGrid:
    """Per neuron, the fraction of examples that select it."""
    if not grids:
        raise ConfigError("select_neurons needs at least one example's scores, got none.")
    stacked = torch.stack([select_example(g.float().cpu(), rule) for g in grids])  # [example, n_layers, d_mlp]
    return stacked.float().mean(dim=0)


def aggregate_selection(freq: NeuronGrid, mean_scores: NeuronGrid, rule: SelectionRule) -> NeuronMaskGrid:
    """The neurons kept from per-neuron selection frequencies (and mean scores, for mode count's ties).

    Modes relative / top_k: frequency >= support. Mode count: the `keep` most frequent neurons
    (selected at least once), ties broken by the higher mean score, then the lower flat index.
    Then, with `max_per_layer`, each layer keeps at most that many of them, in the same order.
    """
    if rule.mode != "count":
        kept = freq >= rule.support - 1e-9
    else:
        kept = _most_frequent(freq, mean_scores, rule.keep)
    return kept if rule.max_per_layer is None else _cap_per_layer(kept, freq, mean_scores, rule.max_per_layer)


def _cap_per_layer(kept: NeuronMaskGrid, freq: NeuronGrid, mean_scores: NeuronGrid, cap: int) -> NeuronMaskGrid:
    """At most `cap` kept neurons per layer, the most frequent first (ties: higher mean score, lower index)."""
    out = torch.zeros_like(kept)
    for layer in range(kept.shape[0]):
        order = _by_frequency(freq[layer], mean_scores[layer])
        out[layer, order[kept[layer, order]][:cap]] = True
    return out


def _by_frequency(freq: torch.Tensor, mean_scores: torch.Tensor) -> torch.Tensor:
    """Indices of a flat grid, most frequent first; ties: the higher mean score, then the lower index."""
    order = torch.argsort(-mean_scores.float(), stable=True)
    return order[torch.argsort(-freq[order], stable=True)]


def _most_frequent(freq: NeuronGrid, mean_scores: NeuronGrid, keep: int) -> NeuronMaskGrid:
    """The `keep` most frequent neurons that were selected at least once."""
    flat_freq = freq.reshape(-1)
    chosen = _by_frequency(flat_freq, mean_scores.reshape(-1))[:keep]
    chosen = chosen[flat_freq[chosen] > 0]
    flat = torch.zeros(flat_freq.numel(), dtype=torch.bool)
    flat[chosen] = True
    return flat.view_as(freq)


def select_neurons(grids: Sequence[NeuronGrid], rule: SelectionRule, label: str = "") -> NeuronSet:
    """Neurons selected in at least `rule.support` of the examples (mode count: the `keep` most often)."""
    freq = selection_frequency(grids, rule)
    mean = torch.stack([g.float().cpu() for g in grids]).mean(dim=0)
    return NeuronSet(aggregate_selection(freq, mean, rule), label)
