"""Pure views: artifacts in, plotly figures and pandas DataFrames out.

Owns: every figure and table the workbench draws (layer x neuron attribution heatmaps, per-layer
set counts, overlap and stability charts, the top-neuron table with the tokens each neuron
promotes (given by neurorit.readout), answer / what-if / ablation tables, mask and job listings, a training run's loss
curve, progress, runs list and before / after report), the health badge of a completeness gap,
and turning an edited passage table back into an example. Must not: import
streamlit, load models, read a model's weights (neurorit.readout does), or keep state.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from neurorit.attribution import NeuronScores
from neurorit.data import Passage, RagExample
from neurorit.errors import DataError
from neurorit.neurons import Neuron, NeuronSet, SelectionRule, five_sets, select_example

if TYPE_CHECKING:
    from neurorit.training.report import TrainReport

SET_COLORS = {
    "relevant": "#2b83ba", "irrelevant": "#d7191c", "irrelevant-exclusive": "#fdae61",
    "relevant-exclusive": "#abd9e9", "shared": "#7b3294",
}
GAP_OK = 0.01  # completeness gap below 1 % of |f(x) - f(x')|: green
GAP_WARN = 0.05  # below 5 %: amber; above: red (more IG steps, or Gauss-Legendre quadrature)

ROBUST_MIN_CELLS = 1000  # heatmaps with more cells clip their color range at a high quantile of |score|
ROBUST_QUANTILE = 0.995


def _grid(scores: NeuronScores | torch.Tensor | np.ndarray) -> np.ndarray:
    """A float64 numpy [n_layers, d_mlp] grid; layers a NeuronScores did not attribute are NaN."""
    if isinstance(scores, NeuronScores):
        grid = scores.scores.detach().double().cpu().numpy().copy()
        missing = [l for l in range(grid.shape[0]) if l not in set(scores.layers)]
        grid[missing, :] = np.nan
        return grid
    if isinstance(scores, torch.Tensor):
        return scores.detach().double().cpu().numpy()
    return np.asarray(scores, dtype=np.float64)


def difference_grid(a: NeuronScores | torch.Tensor, b: NeuronScores | torch.Tensor) -> np.ndarray:
    """a - b per neuron (NaN on layers either one did not attribute)."""
    return _grid(a) - _grid(b)


# ---- heatmap ------------------------------------------------------------------------------------


def downsample_columns(grid: np.ndarray, max_columns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Aggregate neuron columns in blocks so at most `max_columns` remain.

    Each block shows its strongest neuron (largest |score|, sign kept), so no peak is averaged
    away. Returns (values [n_layers, n_cols], the neuron index shown in each cell, block size).
    """
    if max_columns < 1:
        raise ValueError(f"max_columns must be >= 1, got {max_columns}")
    n_layers, d_mlp = grid.shape
    block = max(1, math.ceil(d_mlp / max_columns))
    n_cols = math.ceil(d_mlp / block)
    padded = np.pad(grid, ((0, 0), (0, n_cols * block - d_mlp)), constant_values=np.nan)
    blocks = padded.reshape(n_layers, n_cols, block)  # [layer, col, block]
    strength = np.where(np.isnan(blocks), -1.0, np.abs(blocks))
    arg = strength.argmax(axis=2)  # [layer, col]
    values = np.take_along_axis(blocks, arg[..., None], axis=2)[..., 0]
    index = np.arange(n_cols)[None, :] * block + arg
    return values, index, block


def heatmap_figure(
    scores: NeuronScores | torch.Tensor | np.ndarray, *, title: str = "", max_columns: int = 512
) -> go.Figure:
    """Layer x neuron heatmap of attribution scores (diverging colors, 0 = white).

    Wide grids are shown in column blocks (see downsample_columns); hover always names the
    layer, the neuron and its exact score. On large grids the color range is clipped at the
    99.5th percentile of |score| so a handful of outliers do not hide the rest.
    """
    grid = _grid(scores)
    n_layers, d_mlp = grid.shape
    values, index, block = downsample_columns(grid, max_columns)
    n_cols = values.shape[1]
    starts = np.arange(n_cols) * block
    ends = np.minimum(starts + block, d_mlp) - 1
    custom = np.stack([index, np.broadcast_to(starts, index.shape), np.broadcast_to(ends, index.shape)], axis=-1)
    finite = np.abs(values[np.isfinite(values)])
    zmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    clipped = False
    if finite.size > ROBUST_MIN_CELLS:  # a few huge scores would wash every other cell out to white
        robust = float(np.quantile(finite, ROBUST_QUANTILE))
        if 0 < robust < zmax:
            zmax, clipped = robust, True
    hover = "layer %{y}<br>neuron %{customdata[0]}<br>score %{z:.4g}"
    if block > 1:
        hover += f"<br><i>column = neurons %{{customdata[1]}}-%{{customdata[2]}} (strongest of {block} shown)</i>"
    fig = go.Figure(
        go.Heatmap(
            z=values, x=starts, y=list(range(n_layers)), customdata=custom,
            colorscale="RdBu_r", zmid=0.0, zmin=-zmax, zmax=zmax,
            hovertemplate=hover + "<extra></extra>",
            colorbar={"title": {"text": f"score{' (clipped at the 99.5th pct)' if clipped else ''}", "side": "right"}},
            hoverongaps=False,
        )
    )
    fig.update_layout(
        title={"text": title}, height=max(320, 14 * n_layers + 140), margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis={"title": {"text": "neuron"}}, yaxis={"title": {"text": "layer"}, "autorange": "reversed"},
    )
    return fig


# ---- health -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """A completeness-gap badge: level ok / warn / bad / n/a, its color and a short label."""

    level: str
    color: str
    value: float | None
    label: str


def health_of_gap(value: float, fix: str) -> Health:
    """The badge of a relative completeness gap: green below 1 %, amber below 5 %, else red with `fix`."""
    text = f"completeness gap {value:.2%}"
    if value < GAP_OK:
        return Health("ok", "green", value, text)
    if value < GAP_WARN:
        return Health("warn", "orange", value, text)
    return Health("bad", "red", value, f"{text} ({fix})")


def gap_health(scores: NeuronScores) -> Health:
    """Green below 1 %, amber below 5 %, red otherwise; gray for the preview (it has no gap)."""
    value = scores.max_relative_gap() if scores.layers else float("nan")
    if scores.method != "ig" or not math.isfinite(value):
        return Health("n/a", "gray", None, "gap n/a (preview)" if scores.method != "ig" else "gap n/a")
    return health_of_gap(value, "more IG steps, or Gauss-Legendre")


# ---- sets and counts ----------------------------------------------------------------------------


def example_sets(relevant: NeuronScores, irrelevant: NeuronScores, rule: SelectionRule) -> dict[str, NeuronSet]:
    """One example's relevant and irrelevant neurons under the rule, and their exclusive / shared parts."""
    return five_sets(NeuronSet(select_example(relevant.scores.float().cpu(), rule), "relevant"),
                     NeuronSet(select_example(irrelevant.scores.float().cpu(), rule), "irrelevant"))


def counts_frame(counts: Mapping[str, Sequence[int]]) -> pd.DataFrame:
    """Long table: one row per (layer, set) with its neuron count."""
    rows = [{"layer": layer, "set": name, "count": int(c)} for name, cs in counts.items() for layer, c in enumerate(cs)]
    return pd.DataFrame(rows, columns=["layer", "set", "count"])


def _layer_axis(n_layers: int) -> dict[str, Any]:
    """A layer x-axis: every layer labelled while that stays legible, else every other one."""
    axis: dict[str, Any] = {"title": {"text": "layer"}}
    if n_layers <= 16:
        axis["dtick"] = 1
    elif n_layers <= 40:
        axis["dtick"] = 2
    return axis


def set_counts_figure(counts: Mapping[str, Sequence[int]] | Mapping[str, NeuronSet], *, title: str = "") -> go.Figure:
    """Grouped bars: neurons per layer in each set."""
    plain = {name: (c.counts_per_layer() if isinstance(c, NeuronSet) else list(c)) for name, c in counts.items()}
    n_layers = max((len(cs) for cs in plain.values()), default=0)
    fig = go.Figure()
    for name, cs in plain.items():
        total = sum(cs)
        fig.add_bar(
            x=list(range(len(cs))), y=cs, name=f"{name} ({total})", marker_color=SET_COLORS.get(name),
            hovertemplate=f"{name}<br>layer %{{x}}<br>%{{y}} neurons<extra></extra>",
        )
    fig.update_layout(
        title={"text": title}, barmode="group", height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis=_layer_axis(n_layers), yaxis={"title": {"text": "neurons"}},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def overlap_figure(a: NeuronSet, b: NeuronSet, *, names: tuple[str, str] = ("relevant", "irrelevant"), title: str = "") -> go.Figure:
    """Stacked bars per layer: neurons only in a, in both, only in b."""
    only_a, both, only_b = (a - b).counts_per_layer(), (a & b).counts_per_layer(), (b - a).counts_per_layer()
    layers = list(range(len(both)))
    n_layers = len(layers)
    fig = go.Figure()
    for label, ys, color in (
        (f"only {names[0]}", only_a, SET_COLORS["relevant"]),
        ("both", both, SET_COLORS["shared"]),
        (f"only {names[1]}", only_b, SET_COLORS["irrelevant"]),
    ):
        fig.add_bar(x=layers, y=ys, name=f"{label} ({sum(ys)})", marker_color=color,
                    hovertemplate=f"{label}<br>layer %{{x}}<br>%{{y}} neurons<extra></extra>")
    fig.update_layout(
        title={"text": title}, barmode="stack", height=360, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis=_layer_axis(n_layers), yaxis={"title": {"text": "neurons"}},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def overlap_summary(a: NeuronSet, b: NeuronSet, *, names: tuple[str, str] = ("A", "B")) -> pd.DataFrame:
    """One row: sizes of a, b, their intersection and union, and the Jaccard index."""
    inter, union = len(a & b), len(a | b)
    return pd.DataFrame([{
        names[0]: len(a), names[1]: len(b), "both": inter, "either": union,
        "jaccard": inter / union if union else float("nan"),
    }])


def stability_figure(mined: Any, *, support: float | None = None) -> go.Figure:
    """Histogram of per-neuron selection frequencies (neurons selected at least once), per view.

    A neuron selected by every example sits at 1.0: the further right the mass, the more stable
    the set across examples. The dashed line is the support threshold.
    """
    fig = go.Figure()
    for view, freq in (("relevant", mined.relevant_frequency), ("irrelevant", mined.irrelevant_frequency)):
        values = freq.detach().float().cpu().numpy().reshape(-1)
        values = values[values > 0]
        fig.add_histogram(
            x=values, name=f"{view} ({values.size} neurons)", marker_color=SET_COLORS[view], opacity=0.65,
            xbins={"start": 0.0, "end": 1.0001, "size": 0.05},
            hovertemplate=f"{view}<br>frequency %{{x}}<br>%{{y}} neurons<extra></extra>",
        )
    if support is None:
        support = (mined.provenance.get("selection") or {}).get("support")
    if support is not None:
        fig.add_vline(x=float(support), line_dash="dash", annotation_text=f"support {float(support):g}")
    fig.update_layout(
        barmode="overlay", height=340, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        title={"text": "Stability: how often each neuron is selected across examples"},
        xaxis={"title": {"text": "fraction of examples selecting the neuron"}, "range": [0, 1.02]},
        yaxis={"title": {"text": "neurons"}}, legend={"orientation": "h", "y": -0.25},
    )
    return fig


def stability_frame(mined: Any) -> pd.DataFrame:
    """Per view: neurons selected at least once, kept (frequency >= support), selected by every example."""
    support = float((mined.provenance.get("selection") or {}).get("support", 0.5))
    rows = []
    for view, freq in (("relevant", mined.relevant_frequency), ("irrelevant", mined.irrelevant_frequency)):
        f = freq.detach().float().cpu()
        rows.append({"view": view, "selected at least once": int((f > 0).sum()),
                     "kept (>= support)": int((f >= support - 1e-9).sum()),
                     "selected by every example": int((f >= 1 - 1e-9).sum())})
    return pd.DataFrame(rows)


# ---- top neurons and what they promote ----------------------------------------------------------


def top_neurons(scores: Mapping[str, NeuronScores | torch.Tensor], k: int = 30) -> list[Neuron]:
    """The k neurons with the largest |score| in any of the views, strongest first."""
    grids = [np.nan_to_num(_grid(s)) for s in scores.values()]
    if not grids:
        return []
    strength = np.max(np.abs(np.stack(grids)), axis=0)  # [n_layers, d_mlp]
    flat = strength.reshape(-1)
    k = min(k, int((flat > 0).sum()))
    if k <= 0:
        return []
    order = np.argsort(-flat, kind="stable")[:k]
    d_mlp = strength.shape[1]
    return [(int(i // d_mlp), int(i % d_mlp)) for i in order]


def top_neurons_frame(
    scores: Mapping[str, NeuronScores | torch.Tensor],
    *,
    k: int = 30,
    promoted: Mapping[Neuron, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """One row per top neuron: layer, neuron, its score in each view, irrelevant - relevant, top tokens."""
    neurons = top_neurons(scores, k)
    grids = {view: np.nan_to_num(_grid(s)) for view, s in scores.items()}
    columns = ["layer", "neuron", *[f"score_{v}" for v in grids]]
    has_diff = "relevant" in grids and "irrelevant" in grids
    if has_diff:
        columns.append("irrelevant_minus_relevant")
    columns.append("top_tokens")
    rows = []
    for layer, index in neurons:
        row: dict[str, Any] = {"layer": layer, "neuron": index}
        for view, g in grids.items():
            row[f"score_{view}"] = float(g[layer, index])
        if has_diff:
            row["irrelevant_minus_relevant"] = float(grids["irrelevant"][layer, index] - grids["relevant"][layer, index])
        row["top_tokens"] = " · ".join(promoted.get((layer, index), ())) if promoted else ""
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# ---- answers, what-if, ablation -----------------------------------------------------------------


def answers_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Per view: the model's answer, whether it is correct and the gold answer's log-prob."""
    return pd.DataFrame(
        [{"view": r["view"], "answer": r["answer"], "correct": bool(r["correct"]),
          "gold_logprob": float(r["logprob"]), "prompt_tokens": int(r.get("n_tokens", 0))} for r in rows],
        columns=["view", "answer", "correct", "gold_logprob", "prompt_tokens"],
    )


WHATIF_COLUMNS = ["view", "answer_before", "answer_after", "correct_before", "correct_after",
                  "logprob_before", "logprob_after", "delta_logprob", "changed"]


def unmasked_frame(rows: Sequence[tuple[str, str, float]]) -> pd.DataFrame:
    """Per view: the unmasked model's answer and gold log-prob (evaluation.answers_without_mask)."""
    return pd.DataFrame([{"view": v, "answer": a, "gold_logprob": float(lp)} for v, a, lp in rows],
                        columns=["view", "answer", "gold_logprob"])


def whatif_frame(items: Sequence[Any]) -> pd.DataFrame:
    """Side by side, per view: answer and gold log-prob before and after the mask."""
    rows = [{
        "view": w.view, "answer_before": w.answer_before, "answer_after": w.answer_after,
        "correct_before": bool(w.correct_before), "correct_after": bool(w.correct_after),
        "logprob_before": float(w.logprob_before), "logprob_after": float(w.logprob_after),
        "delta_logprob": float(w.logprob_after - w.logprob_before),
        "changed": w.answer_before != w.answer_after,
    } for w in items]
    return pd.DataFrame(rows, columns=WHATIF_COLUMNS)


def _row_label(row: Mapping[str, Any]) -> str:
    return f"{row['view']} ({int(row['n_distractors'])})" if row["view"] in ("noisy", "irrelevant") else str(row["view"])


def ablation_figure(table: pd.DataFrame) -> go.Figure:
    """Grouped bars of accuracy per (view, distractors): base, masked and the random control."""
    labels = [_row_label(r) for _, r in table.iterrows()]
    fig = go.Figure()
    colors = {"base": "#636363", "masked": "#d7191c", "control": "#2b83ba"}
    for run in ("base", "masked", "control"):
        column = f"accuracy_{run}"
        if column in table:
            fig.add_bar(x=labels, y=table[column].astype(float).tolist(), name=run, marker_color=colors[run],
                        hovertemplate=f"{run}<br>%{{x}}<br>accuracy %{{y:.1%}}<extra></extra>")
    fig.update_layout(
        barmode="group", height=340, title={"text": "Accuracy without the mask, with it, and with a random mask"},
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis={"title": {"text": "view (distractors)"}},
        yaxis={"title": {"text": "accuracy"}, "range": [0, 1.05], "tickformat": ".0%"},
    )
    return fig


# ---- masks and jobs ---------------------------------------------------------------------------


def masks_frame(entries: Sequence[Any], *, fingerprint: str | None = None) -> pd.DataFrame:
    """One row per cached mask (entries from app.artifacts.list_masks)."""
    rows = []
    for e in entries:
        meta = e.meta or {}
        prov = meta.get("provenance") or {}
        model = meta.get("model") or {}
        rows.append({
            "key": e.key,
            "label": str(prov.get("set_label") or prov.get("kind") or ""),
            "source": str(prov.get("source", "")),
            "neurons": int(meta.get("n_neurons", 0)),
            "scale": ", ".join(f"{v:g}" for v in meta.get("scale_values", []) if v != 1.0),
            "model": str(model.get("name", "")),
            "fits_loaded_model": (model.get("fingerprint") == fingerprint) if fingerprint else None,
            "saved": time.strftime("%Y-%m-%d %H:%M", time.localtime(e.mtime)) if e.mtime else "",
            "error": e.error,
        })
    return pd.DataFrame(rows, columns=["key", "label", "source", "neurons", "scale", "model", "fits_loaded_model", "saved", "error"])


def format_seconds(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def jobs_frame(jobs: Sequence[Any]) -> pd.DataFrame:
    """One row per job: id, state, progress, ETA, message."""
    rows = [{
        "id": j.id, "kind": j.kind, "state": j.state, "progress": f"{j.done}/{j.total}" if j.total else "-",
        "eta": format_seconds(j.eta_seconds), "message": j.error or j.message,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created)),
    } for j in jobs]
    return pd.DataFrame(rows, columns=["id", "kind", "state", "progress", "eta", "message", "created"])


# ---- editing an example -------------------------------------------------------------------------


PASSAGE_COLUMNS = ["order", "relevant", "title", "text"]


def passages_frame(example: RagExample) -> pd.DataFrame:
    """The example's passages as an editable table: order, relevant flag, title, text."""
    return pd.DataFrame(
        [{"order": i + 1, "relevant": p.relevant, "title": p.title, "text": p.text} for i, p in enumerate(example.passages)],
        columns=PASSAGE_COLUMNS,
    ).astype({"order": "int64", "relevant": "bool", "title": "object", "text": "object"})


def _cell(value: Any, default: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return default
    return value


def example_from_edit(example: RagExample, question: str, answers_text: str, passages: pd.DataFrame) -> RagExample:
    """The example with the edited question, answers (one alias per line) and passages.

    Passages are sorted by their order column (ties keep the table's order); rows with empty
    text are dropped. Raises DataError when the result is not a valid example.
    """
    answers = tuple(a.strip() for a in answers_text.splitlines() if a.strip())
    rows = []
    for position, (_, row) in enumerate(passages.iterrows()):
        text = str(_cell(row.get("text"), "")).strip()
        if not text:
            continue
        try:
            order = float(_cell(row.get("order"), position + 1))
        except (TypeError, ValueError):
            raise DataError(f"passage {position + 1}: order must be a number, got {row.get('order')!r}.") from None
        rows.append((order, position, Passage(text=text, title=str(_cell(row.get("title"), "")).strip(),
                                              relevant=bool(_cell(row.get("relevant"), False)))))
    rows.sort(key=lambda r: (r[0], r[1]))
    new_passages = tuple(p for _, _, p in rows)
    return RagExample(
        id=example.id, question=question.strip(), answers=answers, passages=new_passages,
        relevance_rule=example.relevance_rule if new_passages == example.passages else "edited",
        source=example.source,
    )


# ---- training ---------------------------------------------------------------------------------
# Inputs are what neurorit.training writes: metrics.jsonl records (read_metrics), status.json
# (read_status), config.json as a dict, and the TrainReport (load_report).

STAGE_COLORS = ("#2b83ba", "#d7191c", "#1a9641", "#7b3294")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_steps(metrics: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The step records as a table (step, stage, loss, lr, grad_norm, eta_s, step_time_s), one row per step.

    A step logged twice (a resumed run writes the steps after its checkpoint again) keeps its
    last record; rows are sorted by step.
    """
    columns = ["step", "stage", "loss", "lr", "grad_norm", "eta_s", "step_time_s"]
    last: dict[int, Mapping[str, Any]] = {}
    for record in metrics:
        if record.get("event") == "step" and _finite(record.get("step")):
            last[int(record["step"])] = record
    rows = [{c: (step if c == "step" else last[step].get(c)) for c in columns} for step in sorted(last)]
    frame = pd.DataFrame(rows, columns=columns)
    for c in ("loss", "lr", "grad_norm", "eta_s", "step_time_s"):
        frame[c] = pd.to_numeric(frame[c], errors="coerce")
    return frame


def dev_losses(metrics: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The dev-loss evaluations (step, stage, dev_loss), one per step, sorted by step."""
    last: dict[int, Mapping[str, Any]] = {}
    for record in metrics:
        if record.get("event") == "dev" and _finite(record.get("step")) and _finite(record.get("dev_loss")):
            last[int(record["step"])] = record
    rows = [{"step": s, "stage": last[s].get("stage"), "dev_loss": float(last[s]["dev_loss"])} for s in sorted(last)]
    return pd.DataFrame(rows, columns=["step", "stage", "dev_loss"])


def loss_curve_figure(metrics: Sequence[Mapping[str, Any]], *, max_steps: int | None = None, title: str = "") -> go.Figure:
    """Training loss per optimizer step (one line per stage), dev loss as points, resumes and a failure marked."""
    steps = training_steps(metrics)
    dev = dev_losses(metrics)
    fig = go.Figure()
    stages = list(dict.fromkeys(str(s) for s in steps["stage"]))
    for i, stage in enumerate(stages):
        part = steps[steps["stage"].astype(str) == stage]
        fig.add_scatter(x=part["step"].tolist(), y=part["loss"].tolist(), mode="lines+markers", name=f"train loss ({stage})",
                        line={"color": STAGE_COLORS[i % len(STAGE_COLORS)]}, marker={"size": 4},
                        hovertemplate=f"{stage}<br>step %{{x}}<br>loss %{{y:.4f}}<extra></extra>")
    if len(dev):
        fig.add_scatter(x=dev["step"].tolist(), y=dev["dev_loss"].tolist(), mode="markers", name="dev loss",
                        marker={"color": "#000000", "size": 10, "symbol": "diamond"},
                        hovertemplate="dev<br>step %{x}<br>loss %{y:.4f}<extra></extra>")
    for record in metrics:
        if record.get("event") in ("resume", "failed") and _finite(record.get("step")):
            resumed = record["event"] == "resume"
            fig.add_vline(x=float(record["step"]), line={"dash": "dot", "color": "#636363" if resumed else "#d7191c"},
                          annotation_text="resumed" if resumed else "failed", annotation_position="top left")
    xaxis: dict[str, Any] = {"title": {"text": "optimizer step"}}
    if max_steps:
        xaxis["range"] = [0, max_steps + 0.5]
    fig.update_layout(
        height=360, title={"text": title or "Loss on the answer tokens"}, margin={"l": 60, "r": 20, "t": 50, "b": 50},
        xaxis=xaxis, yaxis={"title": {"text": "loss"}}, legend={"orientation": "h", "y": -0.2},
    )
    return fig


@dataclass(frozen=True)
class TrainingProgress:
    """Where a run stands, from its metrics: last step of max_steps, its stage and loss, the ETA."""

    step: int
    max_steps: int
    stage: str
    loss: float
    eta_s: float | None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.max_steps) if self.max_steps else 0.0

    def text(self) -> str:
        parts = [f"step {self.step}/{self.max_steps}"]
        if self.stage:
            parts.append(self.stage)
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.4f}")
        if self.eta_s is not None and self.step < self.max_steps:
            parts.append(f"ETA {format_seconds(self.eta_s)} (training steps)")
        return " · ".join(parts)


def training_progress(metrics: Sequence[Mapping[str, Any]], max_steps: int) -> TrainingProgress:
    steps = training_steps(metrics)
    if not len(steps):
        return TrainingProgress(0, max_steps, "", math.nan, None)
    row = steps.iloc[-1]
    eta = float(row["eta_s"]) if _finite(row["eta_s"]) else None
    return TrainingProgress(int(row["step"]), max_steps, str(row["stage"] or ""), float(row["loss"]), eta)


RUNS_COLUMNS = ["run", "method", "state", "step", "max_steps", "job", "updated"]


def runs_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per run folder; each run a mapping with name, config (dict), state, step, job, mtime."""
    rows = [{
        "run": str(r.get("name", "")), "method": str((r.get("config") or {}).get("method", "?")),
        "state": str(r.get("state", "unknown")), "step": int(r.get("step") or 0),
        "max_steps": int((r.get("config") or {}).get("max_steps") or 0), "job": str(r.get("job") or ""),
        "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(r["mtime"])) if r.get("mtime") else "",
    } for r in runs]
    return pd.DataFrame(rows, columns=RUNS_COLUMNS)


def train_summary(report: "TrainReport") -> dict[str, str]:
    """The headline numbers of a finished run, formatted: trainable params and share, steps, times, memory."""
    row = report.summary_row()
    return {
        "Trainable parameters": f"{row['trainable_params']:,} ({row['trainable_%']:.2f} %)",
        "Steps": str(report.steps),
        "Step time": "-" if not _finite(row["step_time_s"]) else f"{row['step_time_s']:.2f} s",
        "Training time": format_seconds(report.wall_time_s),
        "Peak memory": f"{row['peak_memory_MiB']:,.0f} MiB",
    }


STAGES_COLUMNS = ["stage", "steps", "trainable_params", "trainable_%", "step_time_s", "peak_memory_MiB", "final_loss"]


def train_stages_frame(report: "TrainReport") -> pd.DataFrame:
    """One row per training stage: steps, trainable parameters and share, mean step time, peak memory, last loss."""
    rows = [{
        "stage": s.name, "steps": s.steps, "trainable_params": s.trainable_params,
        "trainable_%": 100 * s.trainable_share, "step_time_s": s.step_time_s,
        "peak_memory_MiB": s.peak_memory_bytes / 2**20, "final_loss": s.final_loss,
    } for s in report.stages]
    return pd.DataFrame(rows, columns=STAGES_COLUMNS)


TRAIN_EVAL_COLUMNS = ["condition", "view", "n_distractors", "n", "accuracy_before", "accuracy_after", "delta_accuracy"]


def train_eval_frame(report: "TrainReport") -> pd.DataFrame:
    """Accuracy before and after training per (view, distractors) on the test split, and the change.

    `condition` labels a row like the ablation chart ("relevant", "noisy (2)"); a side that was
    not evaluated (eval_before off) is NaN.
    """
    table = report.table()
    if not len(table):
        return pd.DataFrame(columns=TRAIN_EVAL_COLUMNS)
    out = pd.DataFrame({"condition": [_row_label(r) for _, r in table.iterrows()],
                        "view": table["view"], "n_distractors": table["n_distractors"].astype(int)})
    n = table["n_after"] if "n_after" in table else table["n_before"]
    out["n"] = pd.to_numeric(n, errors="coerce").fillna(0).astype(int)
    for column in ("accuracy_before", "accuracy_after", "delta_accuracy"):
        out[column] = table[column].astype(float) if column in table else math.nan
    return out[TRAIN_EVAL_COLUMNS].reset_index(drop=True)


def train_eval_figure(report: "TrainReport") -> go.Figure:
    """Grouped bars: accuracy before and after training per (view, distractors)."""
    table = train_eval_frame(report)
    fig = go.Figure()
    for side, color in (("before", "#636363"), ("after", "#1a9641")):
        values = table[f"accuracy_{side}"].astype(float)
        if len(table) and values.notna().any():
            fig.add_bar(x=table["condition"].tolist(), y=values.tolist(), name=side, marker_color=color,
                        hovertemplate=f"{side}<br>%{{x}}<br>accuracy %{{y:.1%}}<extra></extra>")
    fig.update_layout(
        barmode="group", height=340, title={"text": f"Test accuracy before and after training ({report.method})"},
        margin={"l": 60, "r": 20, "t": 50, "b": 50}, xaxis={"title": {"text": "view (distractors)"}},
        yaxis={"title": {"text": "accuracy"}, "range": [0, 1.05], "tickformat": ".0%"},
    )
    return fig
