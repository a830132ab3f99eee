"""Comparing two mining results: how the neuron sets move across checkpoints, retrievers or data.

Owns: `mined_folder` / `load_mined` (a mined folder or its mined.json, refused with ArtifactError
when it is not a mining result), `compare_mined` and `compare_paths` (A vs B -> `SetComparison`:
per named set and layer |A|, |B|, |A & B|, |A | B| and the Jaccard index; the mean IG scores of
A's irrelevant-exclusive neurons under A and under B, i.e. before / after training when B was
mined on a trained checkpoint with the same examples; which example ids the two share; notes on
what makes them less comparable), and `comparison_figure` (plotly, for `neurorit compare --html`
and the Mine page, like study.py's accuracy figure). Must not: run models, print, or import
streamlit.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from neurorit.errors import ArtifactError, ConfigError, ModelMismatchError
from neurorit.mining import MinedNeurons
from neurorit.neurons import SET_NAMES

log = logging.getLogger(__name__)

OVERLAP_COLUMNS = ["set", "layer", "a", "b", "both", "either", "jaccard"]
SHIFT_COLUMNS = ["layer", "index", "irrelevant_a", "irrelevant_b", "relevant_a", "relevant_b", "in_b"]


def mined_folder(path: Path | str) -> Path:
    """The folder of a mining result given as the folder or its mined.json (ArtifactError otherwise)."""
    path = Path(path)
    expected = "a mined folder (printed by `neurorit mine`, cache/mined/<key>/) or its mined.json"
    if path.is_file():
        if path.name != "mined.json":
            raise ArtifactError(f"{path} is a file but not a mined.json; expected {expected}.")
        return path.parent
    if not path.is_dir():
        raise ArtifactError(f"{path} does not exist; expected {expected}.")
    if not (path / "mined.json").is_file():
        raise ArtifactError(f"{path} holds no mined.json, so it is not a mining result; expected {expected}.")
    return path


def load_mined(path: Path | str) -> MinedNeurons:
    """A mining result from its folder (as `neurorit mine` prints it) or that folder's mined.json."""
    return MinedNeurons.load(mined_folder(path))


@dataclass(frozen=True)
class LayerOverlap:
    """One named set on one layer: its size under A and under B, their intersection and union."""

    set: str
    layer: int
    a: int
    b: int
    both: int
    either: int

    @property
    def jaccard(self) -> float:
        """|A & B| / |A | B|; NaN where neither side has a neuron."""
        return self.both / self.either if self.either else math.nan


@dataclass(frozen=True)
class NeuronShift:
    """One of A's irrelevant-exclusive neurons: its mean IG score in each view under A and under B."""

    layer: int
    index: int
    irrelevant_a: float
    irrelevant_b: float
    relevant_a: float
    relevant_b: float
    in_b: bool  # still irrelevant-exclusive under B


@dataclass(frozen=True)
class SetComparison:
    """Mining result A against mining result B (same n_layers x d_mlp grid)."""

    a: str  # where A came from (its folder, or a label)
    b: str
    model_a: dict[str, Any]  # asdict(ModelIdentity)
    model_b: dict[str, Any]
    n_layers: int
    d_mlp: int
    overlaps: tuple[LayerOverlap, ...]  # every (set, layer), sets in SET_NAMES order
    shifts: tuple[NeuronShift, ...]  # A's irrelevant-exclusive neurons, by layer then index
    example_ids_a: tuple[str, ...]
    example_ids_b: tuple[str, ...]
    notes: tuple[str, ...] = ()  # what makes the two less comparable (other examples, other settings)
    references: tuple[dict[str, Any], ...] = ()  # what the shift of A's set is read against (reference_shifts)

    @property
    def shared_examples(self) -> int:
        return len(set(self.example_ids_a) & set(self.example_ids_b))

    @property
    def same_examples(self) -> bool:
        return set(self.example_ids_a) == set(self.example_ids_b)

    def table(self, name: str | None = None, *, nonempty: bool = False) -> pd.DataFrame:
        """One row per (set, layer): a, b, both, either, jaccard (NaN where both are empty).

        name: one set only; nonempty: only the layers where either side has neurons.
        """
        if name is not None and name not in SET_NAMES:
            raise ConfigError(f"unknown set {name!r}; choose one of {', '.join(SET_NAMES)}.")
        rows = [{**asdict(o), "jaccard": o.jaccard} for o in self.overlaps
                if (name is None or o.set == name) and (o.either or not nonempty)]
        return pd.DataFrame(rows, columns=OVERLAP_COLUMNS)

    def totals(self) -> pd.DataFrame:
        """One row per set over the whole grid: a, b, both, either, jaccard."""
        rows = []
        for name in SET_NAMES:
            part = [o for o in self.overlaps if o.set == name]
            both, either = sum(o.both for o in part), sum(o.either for o in part)
            rows.append({"set": name, "a": sum(o.a for o in part), "b": sum(o.b for o in part), "both": both,
                         "either": either, "jaccard": both / either if either else math.nan})
        return pd.DataFrame(rows, columns=["set", "a", "b", "both", "either", "jaccard"])

    def shifts_frame(self) -> pd.DataFrame:
        """One row per irrelevant-exclusive neuron of A: its mean IG scores under A and B, per view."""
        return pd.DataFrame([asdict(s) for s in self.shifts], columns=SHIFT_COLUMNS)

    def shift_summary(self) -> dict[str, Any]:
        """Over A's irrelevant-exclusive neurons: how many, the mean of each score column (None when
        there are none), and how many are still irrelevant-exclusive under B."""
        n = len(self.shifts)
        means = {col: (sum(getattr(s, col) for s in self.shifts) / n if n else None) for col in SHIFT_COLUMNS[2:6]}
        return {"n": n, **means, "still_in_b": sum(s.in_b for s in self.shifts)}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN Jaccard indices as null)."""
        def clean(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in rows]

        only_a = sorted(set(self.example_ids_a) - set(self.example_ids_b))
        only_b = sorted(set(self.example_ids_b) - set(self.example_ids_a))
        return {
            "kind": "set_comparison", "a": self.a, "b": self.b, "model_a": self.model_a, "model_b": self.model_b,
            "n_layers": self.n_layers, "d_mlp": self.d_mlp,
            "examples": {"a": len(self.example_ids_a), "b": len(self.example_ids_b), "shared": self.shared_examples,
                         "only_a": only_a, "only_b": only_b},
            "notes": list(self.notes),
            "totals": clean(self.totals().to_dict("records")),
            "layers": clean(self.table().to_dict("records")),
            "irrelevant_exclusive_of_a": {**self.shift_summary(), "neurons": [asdict(s) for s in self.shifts]},
            "references": clean([dict(r) for r in self.references]),
        }


def _check_consistent(mined: MinedNeurons, label: str) -> tuple[int, int]:
    """The grid shape of a mining result, refused when its tensors and its model record disagree."""
    shape = mined.relevant.shape
    grids = {"irrelevant": mined.irrelevant.grid, "relevant_mean": mined.relevant_mean,
             "irrelevant_mean": mined.irrelevant_mean}
    odd = {k: tuple(g.shape) for k, g in grids.items() if tuple(g.shape) != shape}
    if odd or (mined.model.n_layers, mined.model.d_mlp) != shape:
        raise ArtifactError(
            f"{label} is inconsistent: its relevant set is {shape[0]} x {shape[1]}, its model record "
            f"{mined.model.n_layers} x {mined.model.d_mlp}, other tensors {odd or 'agree'}; mine it again."
        )
    return shape


def _notes(a: MinedNeurons, b: MinedNeurons) -> list[str]:
    notes = []
    ids_a, ids_b = set(a.example_ids), set(b.example_ids)
    if ids_a != ids_b:
        notes.append(
            f"A and B were mined on different examples: {len(ids_a & ids_b)} shared, {len(ids_a - ids_b)} only in A, "
            f"{len(ids_b - ids_a)} only in B; differences mix the change of data with the change of model."
        )
    key_a, key_b = a.provenance.get("mining_key"), b.provenance.get("mining_key")
    if key_a != key_b:
        notes.append(
            f"A and B used different attribution settings (mining key {key_a} vs {key_b}): their mean IG scores "
            "may not be on one scale."
        )
    rule_a, rule_b = a.provenance.get("selection"), b.provenance.get("selection")
    if rule_a != rule_b:
        notes.append(f"A and B used different selection rules ({rule_a} vs {rule_b}): set sizes also follow the rule.")
    return notes


TOP_REFERENCE = 100  # A's most attributed neurons (irrelevant view), the second reference of a shift
RANDOM_DRAWS = 200  # random sets with the set's per-layer counts, the first reference


def reference_shifts(a: MinedNeurons, b: MinedNeurons, chosen: torch.Tensor, *, draws: int = RANDOM_DRAWS,
                     top: int = TOP_REFERENCE, seed: int = 0) -> tuple[dict[str, Any], ...]:
    """The irrelevant-view mean IG under A and B of what a shift of `chosen` (A's set) is read against.

    Rows: the set itself; random sets with its per-layer counts (mean over `draws` seeded draws:
    what any neuron of those layers does); A's `top` neurons by irrelevant-view score (what strongly
    attributed neurons do); every neuron's |score| (the scale of the attribution). Each row has
    `a`, `b` and `ratio` = b / a (NaN where a is 0). A set whose ratio is like the references'
    changed with the model's attribution as a whole, not on its own.
    """
    sa, sb = a.irrelevant_mean.float(), b.irrelevant_mean.float()
    rows: list[dict[str, Any]] = []

    def row(what: str, n: int, va: float, vb: float) -> None:
        rows.append({"what": what, "n": n, "a": va, "b": vb, "ratio": vb / va if va else math.nan})

    n = int(chosen.sum())
    if n:
        row("the set", n, float(sa[chosen].mean()), float(sb[chosen].mean()))
        gen = torch.Generator().manual_seed(seed)
        counts = chosen.sum(dim=1).tolist()
        ra = rb = 0.0
        for _ in range(draws):
            pick = torch.zeros_like(chosen)
            for layer, count in enumerate(counts):
                if count:
                    pick[layer, torch.randperm(chosen.shape[1], generator=gen)[:count]] = True
            ra, rb = ra + float(sa[pick].mean()), rb + float(sb[pick].mean())
        row(f"random, same per-layer counts ({draws} draws)", n, ra / draws, rb / draws)
    k = min(top, sa.numel())
    best = sa.flatten().topk(k).indices
    row(f"A's top {k} by irrelevant-view score", k, float(sa.flatten()[best].mean()), float(sb.flatten()[best].mean()))
    row("every neuron, mean |score|", sa.numel(), float(sa.abs().mean()), float(sb.abs().mean()))
    return tuple(rows)


def compare_mined(a: MinedNeurons, b: MinedNeurons, *, labels: tuple[str, str] = ("A", "B")) -> SetComparison:
    """Per named set and layer, the overlap of A's and B's neurons; A's irrelevant-exclusive
    neurons' mean IG scores under A and under B, beside references (`reference_shifts`).

    Refuses (ModelMismatchError) results on grids of different shapes: their neurons cannot be
    matched. Different example ids are allowed and reported in `notes`.
    """
    shape_a, shape_b = _check_consistent(a, labels[0]), _check_consistent(b, labels[1])
    if shape_a != shape_b:
        raise ModelMismatchError(
            f"A ({labels[0]}) is {shape_a[0]} layers x {shape_a[1]} neurons of {a.model.name}, B ({labels[1]}) is "
            f"{shape_b[0]} x {shape_b[1]} of {b.model.name}: neurons of different shapes cannot be matched; "
            "compare results mined on one architecture."
        )
    sets_a, sets_b = a.named_sets(), b.named_sets()
    overlaps = []
    for name in SET_NAMES:
        ga, gb = sets_a[name].grid, sets_b[name].grid  # [n_layers, d_mlp]
        counts = torch.stack([ga.sum(1), gb.sum(1), (ga & gb).sum(1), (ga | gb).sum(1)], dim=1)  # [n_layers, 4]
        overlaps += [LayerOverlap(name, layer, *map(int, row)) for layer, row in enumerate(counts.tolist())]
    where = sets_a["irrelevant-exclusive"].grid.nonzero()  # [n, 2] (layer, index), by layer then index
    layer, index = where[:, 0], where[:, 1]
    scores = {
        "irrelevant_a": a.irrelevant_mean, "irrelevant_b": b.irrelevant_mean,
        "relevant_a": a.relevant_mean, "relevant_b": b.relevant_mean,
    }
    picked = {col: grid[layer, index].float().tolist() for col, grid in scores.items()}  # [n] each
    still = sets_b["irrelevant-exclusive"].grid[layer, index].tolist()  # [n]
    shifts = tuple(
        NeuronShift(l, i, **{col: values[n] for col, values in picked.items()}, in_b=bool(still[n]))
        for n, (l, i) in enumerate(where.tolist())
    )
    notes = _notes(a, b)
    for note in notes:  # the result carries them; the CLI and the Mine page show them as warnings
        log.info("comparing %s with %s: %s", labels[0], labels[1], note)
    return SetComparison(
        a=labels[0], b=labels[1], model_a=asdict(a.model), model_b=asdict(b.model),
        n_layers=shape_a[0], d_mlp=shape_a[1], overlaps=tuple(overlaps), shifts=shifts,
        example_ids_a=tuple(a.example_ids), example_ids_b=tuple(b.example_ids), notes=tuple(notes),
        references=reference_shifts(a, b, sets_a["irrelevant-exclusive"].grid),
    )


def compare_paths(a: Path | str, b: Path | str) -> SetComparison:
    """compare_mined of two mined folders (or their mined.json files), labelled by their folders."""
    folder_a, folder_b = mined_folder(a), mined_folder(b)
    return compare_mined(MinedNeurons.load(folder_a), MinedNeurons.load(folder_b), labels=(str(folder_a), str(folder_b)))


def comparison_figure(result: SetComparison, name: str = "irrelevant-exclusive") -> Any:
    """Left: per layer, grouped bars of |A|, |B|, |A & B| of one set, its Jaccard index as a line on
    a second axis. Right: each irrelevant-exclusive neuron of A, its mean IG score under A (x) and
    under B (y), in the irrelevant and the relevant view; the diagonal marks no change."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = result.table(name)
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.58, 0.42], specs=[[{"secondary_y": True}, {}]],
        subplot_titles=(f"{name}: A vs B per layer",
                        f"A's {len(result.shifts)} irrelevant-exclusive neurons: mean IG score"),
    )
    layers = table["layer"].tolist()
    for column, label, color in (("a", "A", "#2b83ba"), ("b", "B", "#d7191c"), ("both", "A & B", "#7b3294")):
        fig.add_trace(go.Bar(
            x=layers, y=table[column].tolist(), name=f"{label} ({int(table[column].sum())})", marker_color=color,
            hovertemplate=f"{label}<br>layer %{{x}}<br>%{{y}} neurons<extra></extra>",
        ), row=1, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(
        x=layers, y=[None if math.isnan(j) else j for j in table["jaccard"]], name="Jaccard",
        mode="lines+markers", line={"color": "#333333"}, connectgaps=False,
        hovertemplate="Jaccard<br>layer %{x}<br>%{y:.3f}<extra></extra>",
    ), row=1, col=1, secondary_y=True)
    frame = result.shifts_frame()
    for view, color in (("irrelevant", "#fdae61"), ("relevant", "#abd9e9")):
        fig.add_trace(go.Scatter(
            x=frame[f"{view}_a"].tolist(), y=frame[f"{view}_b"].tolist(), mode="markers", name=f"{view} view",
            marker={"color": color, "line": {"width": 1, "color": "#555555"}},
            text=[f"{l}:{i} ({'still' if s else 'no longer'} irrelevant-exclusive in B)"
                  for l, i, s in zip(frame["layer"], frame["index"], frame["in_b"])],
            hovertemplate=f"%{{text}}<br>{view} view<br>A %{{x:.4g}}<br>B %{{y:.4g}}<extra></extra>",
        ), row=1, col=2)
    values = [v for view in ("irrelevant", "relevant") for col in ("a", "b") for v in frame[f"{view}_{col}"]]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    fig.add_trace(go.Scatter(
        x=[low, high], y=[low, high], mode="lines", name="no change (B = A)",
        line={"color": "#888888", "dash": "dash"}, hoverinfo="skip",
    ), row=1, col=2)
    fig.update_xaxes(title_text="layer", dtick=1 if result.n_layers <= 16 else 2, row=1, col=1)
    fig.update_yaxes(title_text="neurons", row=1, col=1, secondary_y=False)
    fig.update_yaxes(title_text="Jaccard |A & B| / |A | B|", range=[0, 1.05], row=1, col=1, secondary_y=True)
    fig.update_xaxes(title_text="under A", row=1, col=2)
    fig.update_yaxes(title_text="under B", row=1, col=2)
    fig.update_layout(barmode="group", height=420, margin={"l": 60, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.2})
    return fig
