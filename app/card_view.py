"""Pure views of the neuron card, and of the way from any chart or table to it.

Owns: the card's address (`/neuron?n=15:821`) and the parsing of its `n` value and of the search
box (`15:821`, or a token such as `' Sydney'`); turning a plotly selection or a table row
selection into a neuron; making the layer x neuron heatmap clickable (plotly heatmaps cannot be
selected, so a transparent scatter of one target per cell carries the neuron) and per-layer bars
clickable (each bar carries its layer's strongest neuron); the note label column of neuron
tables (read through neurorit.notes); and the card itself (a neurorit.neuron_card.NeuronCard in):
tokens coloured by activation as HTML in which every piece of text is escaped, its figures and
tables, and the card as one standalone HTML file (plotly.js inlined: it opens offline) or JSON.
Must not: import streamlit, load or run models.
"""

from __future__ import annotations

import html
import re
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from neurorit.errors import NeuroritError
from neurorit.neurons import Neuron, is_neuron_text
from neurorit.notes import Note, load_notes

CARD_PAGE = "pages/neuron.py"
CARD_URL_PATH = "neuron"
NOTE_COLUMN = "note"
CLICK_HINT = "<br><i>click: open this neuron's card</i>"


# ---- addresses and search ----------------------------------------------------------------------


def neuron_param(neuron: Neuron) -> str:
    """(15, 821) -> '15:821', the card's `n` query parameter."""
    return f"{int(neuron[0])}:{int(neuron[1])}"


def card_query(neuron: Neuron) -> dict[str, str]:
    """The query parameters of the card: st.switch_page(CARD_PAGE, query_params=card_query(n))."""
    return {"n": neuron_param(neuron)}


def card_url(neuron: Neuron) -> str:
    """The card's address, relative to the app: /neuron?n=15:821."""
    return f"/{CARD_URL_PATH}?n={neuron_param(neuron)}"


def search_kind(text: str | None) -> str:
    """What the search box holds: 'neuron' (layer:index), 'token' (anything else), or 'empty'."""
    text = str(text or "")
    if not text.strip():
        return "empty"
    return "neuron" if is_neuron_text(text) else "token"


# ---- selections -> neuron ----------------------------------------------------------------------


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def selected_neuron(event: Any) -> Neuron | None:
    """The neuron a click on a clickable chart names (customdata [layer, index, ...]), else None.

    `event` is what st.plotly_chart(on_select="rerun") returns (or its `selection`); a bar of an
    empty layer carries index -1 and names no neuron."""
    selection = _get(event, "selection") if _get(event, "points") is None else event
    points = _get(selection, "points") or []
    for point in points:
        custom = _get(point, "customdata")
        if isinstance(custom, (list, tuple)) and len(custom) >= 2:
            try:
                layer, index = int(custom[0]), int(custom[1])
            except (TypeError, ValueError):
                continue
            if layer >= 0 and index >= 0:
                return layer, index
    return None


def selected_row_neuron(event: Any, frame: pd.DataFrame) -> Neuron | None:
    """The neuron of the row selected in a table (st.dataframe(on_select="rerun")) of `frame`
    (columns layer and neuron), else None."""
    selection = _get(event, "selection") if _get(event, "rows") is None else event
    rows = _get(selection, "rows") or []
    if not rows or "layer" not in frame.columns or "neuron" not in frame.columns:
        return None
    row = int(rows[0])
    if not 0 <= row < len(frame):
        return None
    return int(frame["layer"].iloc[row]), int(frame["neuron"].iloc[row])


# ---- clickable charts ----------------------------------------------------------------------------


def _score_text(value: float) -> str:
    return f"{value:.4g}" if np.isfinite(value) else "n/a (layer not attributed)"


def clickable_heatmap(fig: go.Figure) -> go.Figure:
    """A copy of a views.heatmap_figure with one invisible click target per cell.

    Plotly cannot select heatmap cells, so Streamlit would never hear a click on one: a
    transparent scatter marker sits on every cell and carries [layer, neuron, score, first, last]
    (the neuron the cell shows, its exact score, the neurons of its column block). The heatmap's
    own hover is turned off and the markers' hover says the same, plus that a click opens the card;
    hoverdistance -1 makes the nearest cell answer wherever the pointer is."""
    out = go.Figure(fig)
    heat = out.data[0]
    if not isinstance(heat, go.Heatmap):
        raise ValueError(f"clickable_heatmap expects a heatmap figure (views.heatmap_figure), got {type(heat).__name__}.")
    z = np.asarray(heat.z, dtype=float)  # [n_layers, n_cols]
    custom = np.asarray(heat.customdata)  # [n_layers, n_cols, 3]: neuron shown, block start, block end
    layers = np.asarray(heat.y if heat.y is not None else range(z.shape[0]))
    starts = np.asarray(heat.x if heat.x is not None else range(z.shape[1]))
    xs, ys, data = [], [], []
    for row, layer in enumerate(layers):
        for col, start in enumerate(starts):
            index, first, last = (int(v) for v in custom[row, col][:3])
            xs.append(float(start))
            ys.append(int(layer))
            data.append([int(layer), index, _score_text(float(z[row, col])), first, last])
    hover = "layer %{customdata[0]}<br>neuron %{customdata[1]}<br>score %{customdata[2]}"
    if "strongest of" in (heat.hovertemplate or ""):
        block = re.search(r"strongest of (\d+)", heat.hovertemplate)
        hover += (f"<br><i>column = neurons %{{customdata[3]}}-%{{customdata[4]}} "
                  f"(strongest of {block.group(1) if block else '?'} shown)</i>")
    heat.hoverinfo = "skip"
    heat.hovertemplate = None
    out.add_scatter(
        x=xs, y=ys, customdata=data, mode="markers", showlegend=False, name="",
        marker={"color": "rgba(0,0,0,0)", "size": 10, "opacity": 0},
        selected={"marker": {"opacity": 0}}, unselected={"marker": {"opacity": 0}},
        hovertemplate=hover + CLICK_HINT + "<extra></extra>",
    )
    out.update_layout(hoverdistance=-1, hovermode="closest", dragmode="zoom")  # zoom stays; a click still selects
    return out


def _array(grid: Any) -> np.ndarray:
    grid = getattr(grid, "scores", grid)  # a NeuronScores
    if hasattr(grid, "detach"):
        grid = grid.detach().double().cpu().numpy()
    return np.asarray(grid, dtype=float)


def strength(*grids: Any) -> np.ndarray:
    """max |score| per neuron over some score grids (NeuronScores, tensors or arrays; NaN = 0)."""
    if not grids:
        raise ValueError("strength needs at least one score grid.")
    return np.max(np.stack([np.abs(np.nan_to_num(_array(g), nan=0.0)) for g in grids]), axis=0)


def _strength_grid(strength: Any, shape: tuple[int, ...]) -> np.ndarray:
    values = np.nan_to_num(np.abs(_array(strength)), nan=0.0)
    if values.shape != shape:
        raise ValueError(f"strength has shape {values.shape}, the set {shape}.")
    return values


def strongest_per_layer(members: Any, strength: Any | None = None, tiebreak: Any | None = None) -> list[int]:
    """Per layer, the member neuron with the largest |strength| (|score|, frequency), ties broken by the
    largest |tiebreak|, then by the lowest index; -1 where the layer has no member.

    members: bool [n_layers, d_mlp] (a NeuronSet or its grid); strength, tiebreak: [n_layers, d_mlp] or None."""
    grid = np.asarray(_array(members.grid) if hasattr(members, "grid") else members, dtype=bool)
    values = np.zeros(grid.shape) if strength is None else _strength_grid(strength, grid.shape)
    second = np.zeros(grid.shape) if tiebreak is None else _strength_grid(tiebreak, grid.shape)
    out = []
    for layer in range(grid.shape[0]):
        idx = np.flatnonzero(grid[layer])
        if not idx.size:
            out.append(-1)
            continue
        order = np.lexsort((idx, -second[layer, idx], -values[layer, idx]))  # last key sorts first
        out.append(int(idx[order[0]]))
    return out


MINED_VIEW = {"relevant": "relevant", "relevant-exclusive": "relevant", "irrelevant": "irrelevant",
              "irrelevant-exclusive": "irrelevant", "shared": "both"}


def mined_strength(mined: Any, set_name: str) -> tuple[np.ndarray, np.ndarray]:
    """How strongly a mined set holds each neuron: (selection frequency, |mean IG score|) of the set's
    view; for `shared`, the larger of the two views."""
    view = MINED_VIEW.get(set_name)
    if view is None:
        raise ValueError(f"unknown set {set_name!r}; expected one of {list(MINED_VIEW)}.")
    freq = {"relevant": _array(mined.relevant_frequency), "irrelevant": _array(mined.irrelevant_frequency)}
    mean = {"relevant": np.abs(_array(mined.relevant_mean)), "irrelevant": np.abs(_array(mined.irrelevant_mean))}
    if view == "both":
        return np.maximum(freq["relevant"], freq["irrelevant"]), np.maximum(mean["relevant"], mean["irrelevant"])
    return freq[view], mean[view]


def mined_neurons_frame(mined: Any, set_name: str, notes: Mapping[Neuron, Note], *, limit: int = 200) -> pd.DataFrame:
    """The neurons of one mined set, most often selected first (ties: larger |mean IG score|): layer,
    neuron, selection frequency and mean IG score per view, note; at most `limit` rows."""
    members = mined.named_sets()[set_name]
    freq, mean = mined_strength(mined, set_name)
    neurons = members.neurons()
    neurons.sort(key=lambda n: (-freq[n], -mean[n], n))
    neurons = neurons[:limit]
    columns = {"selected_relevant": mined.relevant_frequency, "selected_irrelevant": mined.irrelevant_frequency,
               "ig_relevant": mined.relevant_mean, "ig_irrelevant": mined.irrelevant_mean}
    extra = {}
    for name, grid in columns.items():
        values = _array(grid)
        extra[name] = [float(values[n]) for n in neurons]
    return neurons_frame(neurons, notes, extra=extra)


def clickable_bars(fig: go.Figure, picks: Sequence[Sequence[int]], *, what: str = "strongest") -> go.Figure:
    """A copy of a per-layer bar figure (views.set_counts_figure, overlap_figure) whose bars carry
    the neuron a click opens: picks[trace][layer] (-1: none), one list per bar trace, in order."""
    out = go.Figure(fig)
    bars = [t for t in out.data if isinstance(t, go.Bar)]
    if len(bars) != len(picks):
        raise ValueError(f"{len(bars)} bar traces but {len(picks)} lists of picks.")
    for trace, chosen in zip(bars, picks):
        xs = [int(x) for x in trace.x]
        trace.customdata = [[layer, int(chosen[layer]) if 0 <= layer < len(chosen) else -1] for layer in xs]
        base = (trace.hovertemplate or "").replace("<extra></extra>", "")
        trace.hovertemplate = base + f"<br><i>click: open the {what} neuron, %{{customdata[0]}}:%{{customdata[1]}}</i><extra></extra>"
    return out


# ---- notes in tables -----------------------------------------------------------------------------


def table_notes(fingerprint: str) -> tuple[dict[Neuron, Note], str]:
    """The model's notes for the note column, and '' -- or, when the notes file cannot be read, no
    notes and the reason (a page shows it as a warning and goes on)."""
    try:
        return load_notes(fingerprint), ""
    except NeuroritError as exc:
        return {}, f"Notes unavailable: {exc}"


def with_notes(frame: pd.DataFrame, notes: Mapping[Neuron, Note]) -> pd.DataFrame:
    """The table with a `note` column last: the label of each row's neuron ('' without a note)."""
    out = frame.copy()
    if "layer" in out.columns and "neuron" in out.columns:
        out[NOTE_COLUMN] = [notes[(int(l), int(i))].label if (int(l), int(i)) in notes else ""
                            for l, i in zip(out["layer"], out["neuron"])]
    else:
        out[NOTE_COLUMN] = pd.Series(dtype=str)
    return out


def neurons_frame(neurons: Sequence[Neuron], notes: Mapping[Neuron, Note],
                  extra: Mapping[str, Sequence[Any]] | None = None) -> pd.DataFrame:
    """A table of neurons (layer, neuron, extra columns..., note) for a neuron list."""
    frame = pd.DataFrame({"layer": [int(l) for l, _ in neurons], "neuron": [int(i) for _, i in neurons],
                          **{k: list(v) for k, v in (extra or {}).items()}})
    return with_notes(frame, notes)


# ---- the activation index of the session's data -------------------------------------------------


def wanted_index_key(identity: Any, examples: Sequence[Any], prompt_config: Any) -> str:
    """The cache key of the activation index `neurorit index` builds (default views and layout) for
    these examples, in this order, under this prompt config, on the model with this identity."""
    from neurorit.activations import DEFAULT_VIEWS, N_BINS, TOP_K, WINDOW, example_hash, index_key

    return index_key(identity, [example_hash(e) for e in examples], prompt_config, DEFAULT_VIEWS, TOP_K, WINDOW, N_BINS)


def index_argv(data: Any, config: Any, *, model: str | None = None, device: str | None = None,
               dtype: str | None = None) -> list[str]:
    """`neurorit index` arguments of a background job over a data file and a YAML config (its prompt section)."""
    argv = ["index", "--data", str(data), "--format", "neurorit", "--config", str(config), "--quiet"]
    for flag, value in (("--model", model), ("--device", device), ("--dtype", dtype)):
        if value:
            argv += [flag, value]
    return argv


def index_label(folder: Any, meta: Mapping[str, Any], wanted: str) -> str:
    ids = meta.get("example_ids") or []
    views = ", ".join(meta.get("views") or [])
    mark = " · the current data" if getattr(folder, "name", str(folder)) == wanted else ""
    return f"{getattr(folder, 'name', str(folder))[:10]} · {len(ids)} examples · {views}{mark}"


# ---- the card: tokens coloured by activation -----------------------------------------------------

REGION_LABELS = {"relevant": "relevant passage", "irrelevant": "irrelevant passage", "question": "question",
                 "other": "instruction / template"}
REGION_COLORS = {"relevant": "#1a9850", "irrelevant": "#d73027", "question": "#7b3294", "other": "#999999"}
_POSITIVE = (215, 48, 39)  # activation > 0: red
_NEGATIVE = (69, 117, 180)  # activation < 0: blue


def activation_color(value: float, vmax: float) -> str:
    """The background of a token: red for positive, blue for negative, opacity |value| / vmax."""
    if not np.isfinite(value) or not np.isfinite(vmax) or vmax <= 0:
        return "transparent"
    alpha = min(1.0, abs(float(value)) / float(vmax))
    r, g, b = _POSITIVE if value >= 0 else _NEGATIVE
    return f"rgba({r},{g},{b},{alpha:.3f})"


def _esc(text: Any) -> str:
    """Text made safe for HTML: every <, >, &, " and ' escaped (a passage holding <script> shows as text)."""
    return html.escape(str(text), quote=True)


def _where(region: str, passage: int) -> str:
    label = REGION_LABELS.get(region, region)
    return f"passage {passage}, {label}" if passage > 0 else label


def token_span(token: str, value: float, vmax: float, *, region: str = "other", passage: int = 0,
               hit: bool = False) -> str:
    """One token as an escaped HTML span: background by activation, underline by region, exact
    value and place in its tooltip. A newline shows as ↵ and breaks the line."""
    shown = _esc(token).replace("\n", "↵<br>")
    style = (f"background:{activation_color(value, vmax)};border-bottom:2px solid {REGION_COLORS.get(region, '#999')};"
             "white-space:pre-wrap;padding:0 1px")
    if hit:
        style += ";outline:2px solid #000;font-weight:bold"
    value_text = f"{value:.4g}" if np.isfinite(value) else "n/a"
    title = _esc(f"{value_text} · {_where(region, passage)}")
    return f'<span class="tok" style="{style}" title="{title}">{shown}</span>'


def tokens_html(tokens: Sequence[str], values: Sequence[float], vmax: float, *, regions: Sequence[str] | None = None,
                passages: Sequence[int] | None = None, hit: int | None = None, mark_passages: bool = False) -> str:
    """Tokens coloured by activation; with mark_passages, a label opens each passage and the question."""
    regions = list(regions) if regions is not None else ["other"] * len(tokens)
    passages = list(passages) if passages is not None else [0] * len(tokens)
    parts, previous = [], None
    for i, (token, value) in enumerate(zip(tokens, values)):
        place = (regions[i], passages[i])
        if mark_passages and place != previous and place[0] != "other":
            color = REGION_COLORS.get(place[0], "#999")
            parts.append(f'<br><span class="mark" style="color:{color};font-weight:bold;font-size:0.85em">'
                         f'[{_esc(_where(*place))}]</span> ')
        previous = place
        parts.append(token_span(token, float(value), vmax, region=regions[i], passage=passages[i], hit=i == hit))
    return '<div class="tokens" style="line-height:1.9;font-family:monospace">' + "".join(parts) + "</div>"


def legend_html() -> str:
    parts = [f'<span style="border-bottom:2px solid {c};margin-right:12px">{_esc(REGION_LABELS[r])}</span>'
             for r, c in REGION_COLORS.items()]
    return ('<div class="legend" style="font-size:0.85em">Background: activation (red &gt; 0, blue &lt; 0, '
            "stronger = larger |activation|). Underline: " + "".join(parts) + "</div>")


def contexts_html(contexts: Sequence[Any], *, limit: int | None = None) -> str:
    """The top-activating contexts (NeuronCard.contexts), strongest first, on one colour scale."""
    shown = list(contexts)[:limit] if limit else list(contexts)
    if not shown:
        return '<p class="empty">No top-activating context recorded.</p>'
    finite = [abs(v) for c in shown for v in c.activations if np.isfinite(v)]
    vmax = max(finite) if finite else 1.0
    rows = []
    for c in shown:
        head = (f'<div class="ctx-head" style="font-size:0.85em;color:#555">#{int(c.rank) + 1} · activation '
                f"<b>{c.activation:.4g}</b> on {_esc(repr(c.token))} · example {_esc(c.example_id)} · "
                f"{_esc(c.view)} view · {_esc(_where(c.region, int(c.passage)))}</div>")
        body = tokens_html(c.tokens, c.activations, vmax, regions=c.regions, passages=c.passages, hit=int(c.center))
        rows.append(f'<div class="ctx" style="margin-bottom:10px">{head}{body}</div>')
    return legend_html() + "".join(rows)


def trace_html(tokens: Sequence[str], values: Sequence[float], regions: Sequence[str], passages: Sequence[int]) -> str:
    """A whole prompt, token by token, coloured by the neuron's activation, each passage labelled."""
    finite = [abs(float(v)) for v in values if np.isfinite(v)]
    vmax = max(finite) if finite else 1.0
    return legend_html() + tokens_html(tokens, [float(v) for v in values], vmax, regions=regions, passages=passages,
                                       mark_passages=True)


# ---- the card: figures -------------------------------------------------------------------------


def by_view_figure(by_view: Sequence[Any]) -> go.Figure:
    """Violins (with their box) of the last-token activation per view, one point per example."""
    fig = go.Figure()
    for v in by_view:
        if not v.values:
            continue
        fig.add_violin(y=list(v.values), name=f"{v.view} ({v.n})", box_visible=True, meanline_visible=True,
                       points="all", jitter=0.3, pointpos=0, line_color=REGION_COLORS.get(v.view, "#4d4d4d"),
                       hovertemplate=f"{v.view}<br>activation %{{y:.4g}}<extra></extra>")
    fig.update_layout(title={"text": "Last-token activation by view (one point per example)"}, height=360,
                      showlegend=False, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      yaxis={"title": {"text": "activation at the last prompt token"}})
    return fig


def by_region_figure(by_region: Sequence[Any]) -> go.Figure:
    """Per passage type: a box from the 10th to the 90th percentile with the median (and the mean
    as a dashed line), over every token of that type in the index."""
    fig = go.Figure()
    for r in by_region:
        if not r.n_tokens or not np.isfinite(r.q50):
            continue
        fig.add_box(name=f"{REGION_LABELS.get(r.region, r.region)} ({r.n_tokens} tokens)", q1=[r.q10], median=[r.q50],
                    q3=[r.q90], lowerfence=[r.q10], upperfence=[r.q90], mean=[r.mean],
                    marker_color=REGION_COLORS.get(r.region, "#999"), boxmean=True,
                    hovertemplate=(f"{r.region}: 10th pct {r.q10:.4g}, median {r.q50:.4g}, 90th pct {r.q90:.4g}, "
                                   f"mean {r.mean:.4g}<extra></extra>"))
    fig.update_layout(title={"text": "Activation on the tokens of each passage type (box: 10th-90th percentile)"},
                      height=360, showlegend=False, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      yaxis={"title": {"text": "activation"}})
    return fig


def trace_figure(values: Sequence[float], regions: Sequence[str], passages: Sequence[int], *, title: str = "") -> go.Figure:
    """The activation at every prompt position, each passage (and the question) shaded by its type."""
    values = [float(v) for v in values]
    fig = go.Figure()
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or (regions[i], passages[i]) != (regions[start], passages[start]):
            region, passage = regions[start], passages[start]
            if region != "other":
                fig.add_vrect(x0=start - 0.5, x1=i - 0.5, fillcolor=REGION_COLORS.get(region, "#999"), opacity=0.12,
                              line_width=0, annotation_text=f"P{passage}" if passage else "Q",
                              annotation_position="top left")
            start = i
    fig.add_scatter(x=list(range(len(values))), y=values, mode="lines", line={"color": "#333"}, name="activation",
                    hovertemplate="position %{x}<br>activation %{y:.4g}<extra></extra>")
    fig.update_layout(title={"text": title}, height=300, showlegend=False, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      xaxis={"title": {"text": "prompt position (shaded: passages, green relevant, red irrelevant)"}},
                      yaxis={"title": {"text": "activation"}})
    return fig


def switch_off_figure(result: Any, layer: int, index: int) -> go.Figure:
    """Mean change of the gold answer's log-prob (95 % interval) when only this neuron is zeroed, and
    when only a random neuron of its layer is."""
    rows = [(f"{layer}:{index} (this neuron)", result.neuron, "#d73027"),
            (f"{layer}:{result.random_index} (random, same layer)", result.random, "#7f7f7f")]
    fig = go.Figure()
    for name, interval, color in rows:
        fig.add_scatter(x=[interval.mean], y=[name], mode="markers", marker={"size": 12, "color": color},
                        error_x={"type": "data", "symmetric": False, "array": [interval.high - interval.mean],
                                 "arrayminus": [interval.mean - interval.low]},
                        hovertemplate=(f"{name}<br>mean %{{x:.4g}} [{interval.low:.4g}, {interval.high:.4g}], "
                                       f"n = {interval.n}<extra></extra>"))
    fig.add_vline(x=0, line_dash="dot")
    fig.update_layout(title={"text": f"Switched off alone: change of the gold log-prob ({result.view} view)"},
                      height=240, showlegend=False, margin={"l": 60, "r": 20, "t": 50, "b": 40},
                      xaxis={"title": {"text": "Δ log p(gold answer), mean with 95 % bootstrap interval"}})
    return fig


# ---- the card: tables --------------------------------------------------------------------------


def effects_frame(effects: Sequence[Any]) -> pd.DataFrame:
    """Promoted or suppressed tokens: token (quoted, so spaces show), id, logit per unit activation."""
    return pd.DataFrame([{"token": repr(e.token), "token_id": int(e.token_id), "logit": float(e.logit)} for e in effects],
                        columns=["token", "token_id", "logit"])


def ig_frame(records: Sequence[tuple[str, Any]]) -> pd.DataFrame:
    """One row per mined artifact: its label, examples, mean IG score and selection frequency per view, sets."""
    rows = [{"mined": label, "examples": r.n_examples, "ig_relevant": r.relevant_mean, "ig_irrelevant": r.irrelevant_mean,
             "selected_relevant": r.relevant_frequency, "selected_irrelevant": r.irrelevant_frequency,
             "sets": ", ".join(r.sets) or "(none)"} for label, r in records]
    return pd.DataFrame(rows, columns=["mined", "examples", "ig_relevant", "ig_irrelevant", "selected_relevant",
                                       "selected_irrelevant", "sets"])


def masks_frame(memberships: Sequence[Any]) -> pd.DataFrame:
    return pd.DataFrame([{"mask": m.name, "scale": m.scale, "neurons": m.n_neurons} for m in memberships],
                        columns=["mask", "scale", "neurons"])


def rank_test_text(test: Any | None) -> str:
    if test is None:
        return "No rank test: the index lacks relevant-view or irrelevant-view last-token activations."
    return (f"Mann-Whitney U, relevant-only vs irrelevant-only last-token activation: p = {test.p_value:.3g} "
            f"(n = {test.n_relevant} vs {test.n_irrelevant}), rank-biserial effect size {test.rank_biserial:+.3f} "
            "(+1: every relevant-view activation is above every irrelevant-view one).")


def direct_text(direct: Any | None) -> str:
    if direct is None:
        return "No example chosen: no direct contribution to a gold logit."
    return (f"On example {direct.example_id} ({direct.view} view), the gold answer's first token {direct.gold_token!r}: "
            f"activation {direct.activation:.4g} × weight {direct.weight:.4g} = direct contribution "
            f"{direct.contribution:+.4g} to its logit (activation from the {direct.source}; final norm not applied).")


def switch_off_text(result: Any) -> str:
    v = result.versus_random
    return (f"On {len(result.example_ids)} examples: Δ log p(gold) {result.neuron.mean:+.4f} "
            f"[{result.neuron.low:+.4f}, {result.neuron.high:+.4f}] for this neuron, {result.random.mean:+.4f} "
            f"[{result.random.low:+.4f}, {result.random.high:+.4f}] for neuron {result.random_index} of the same layer; "
            f"difference {v.difference:+.4f} [{v.low:+.4f}, {v.high:+.4f}] (paired, 95 % bootstrap).")


# ---- the card as a file ------------------------------------------------------------------------


def card_json(card: Any, *, note: Note | None = None, trace: Any | None = None) -> dict[str, Any]:
    """The card as JSON (NeuronCard.to_json), with the note and the activation over one prompt."""
    out = dict(card.to_json())
    out["note"] = note.to_dict() if note is not None else None
    if trace is not None:
        values = [float(v) for v in (trace.values.tolist() if hasattr(trace.values, "tolist") else trace.values)]
        out["over_prompt"] = {"example_id": trace.example_id, "view": trace.view, "token_ids": list(trace.token_ids),
                              "regions": list(trace.regions), "passages": list(trace.passages),
                              "values": [v if np.isfinite(v) else None for v in values]}
    return out


def card_html(*, title: str, sections: Sequence[tuple[str, str]], figures: Sequence[go.Figure] = ()) -> str:
    """A standalone HTML page of the card: its sections (already escaped HTML), then its figures with
    plotly.js inlined once (the file opens offline)."""
    body = [f"<h1>{_esc(title)}</h1>"]
    for heading, content in sections:
        body.append(f"<h2>{_esc(heading)}</h2>\n{content}")
    for i, fig in enumerate(figures):
        body.append(fig.to_html(full_html=False, include_plotlyjs=True if i == 0 else False))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
            "</head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def frame_html(frame: pd.DataFrame) -> str:
    """A DataFrame as an escaped HTML table."""
    return frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}")


def text_html(text: str) -> str:
    return f"<p>{_esc(text)}</p>"


def note_html(note: Note | None) -> str:
    if note is None:
        return "<p>(no note)</p>"
    return f"<p><b>{_esc(note.label)}</b></p><p style=\"white-space:pre-wrap\">{_esc(note.text)}</p>"


def card_document(card: Any, *, note: Note | None = None, trace: Any | None = None,
                  trace_tokens: Sequence[str] = (), ig_records: Sequence[tuple[str, Any]] = ()) -> str:
    """The whole card as one standalone HTML file: every section the page shows, as text, tables and
    figures (plotly.js inlined once: it opens offline). Every piece of text is escaped."""
    layer, index = int(card.layer), int(card.index)
    sections: list[tuple[str, str]] = [("Your note", note_html(note))]
    figures: list[go.Figure] = []
    if card.contexts:
        sections.append(("Top-activating contexts", contexts_html(card.contexts)))
    else:
        sections.append(("Top-activating contexts", text_html("No activation index: build one to see the contexts.")))
    if card.by_view or card.by_region:
        sections.append(("Graded activation", text_html(rank_test_text(card.rank_test))))
        figures += [by_view_figure(card.by_view), by_region_figure(card.by_region)]
    if trace is not None:
        sections.append((f"Over one prompt: example {trace.example_id}, {trace.view} view",
                         trace_html(trace_tokens, trace.values.tolist(), trace.regions, trace.passages)))
        figures.append(trace_figure(trace.values.tolist(), trace.regions, trace.passages,
                                    title=f"Activation over the {trace.view} prompt of {trace.example_id}"))
    sections.append(("What it writes: promoted tokens", frame_html(effects_frame(card.promoted))))
    sections.append(("What it writes: suppressed tokens", frame_html(effects_frame(card.suppressed))))
    sections.append(("Direct contribution to the gold logit", text_html(direct_text(card.direct))))
    if ig_records:
        sections.append(("IG record in mined results", frame_html(ig_frame(ig_records))))
    sections.append(("Saved masks holding it", frame_html(masks_frame(card.masks)) if card.masks
                     else text_html("No saved mask scales this neuron.")))
    if card.switch_off is not None:
        sections.append(("Switched off alone", text_html(switch_off_text(card.switch_off))))
        figures.append(switch_off_figure(card.switch_off, layer, index))
    caveats = [n for n in card.notes if card.switch_off is None or "switch-off" not in n]  # it was run since
    if caveats:
        sections.append(("Caveats", "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in caveats) + "</ul>"))
    title = f"Neuron {layer}:{index} of {card.model} (weights {card.fingerprint})"
    return card_html(title=title, sections=sections, figures=figures)
