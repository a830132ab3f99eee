"""Pure views of a passage attribution (neurorit.passages.PassageAttribution).

Owns: the bars of each passage's leave-one-out effect and IG sum, coloured relevant / irrelevant,
and the token-level heat over the prompt as an HTML string in which every piece of prompt text is
escaped (a passage holding `<script>` or tags shows them as text), and the badge of the IG
completeness gap. Must not: import streamlit,
load or run models, or keep state.
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from app.views import Health, health_of_gap
from neurorit.passages import PassageAttribution

RELEVANT_COLOR = "#2b83ba"  # as views.SET_COLORS["relevant"]
IRRELEVANT_COLOR = "#d7191c"  # as views.SET_COLORS["irrelevant"]
RAISES_RGB = (27, 158, 119)  # heat of a token whose IG raises the gold answer's log-prob
LOWERS_RGB = (197, 27, 125)  # ... lowers it
QUESTION_COLOR = "#555555"


def passage_color(relevant: bool) -> str:
    return RELEVANT_COLOR if relevant else IRRELEVANT_COLOR


def _passage_label(i: int, relevant: bool) -> str:
    return f"Passage {i} ({'relevant' if relevant else 'irrelevant'})"


def passage_bars_figure(result: PassageAttribution, *, title: str = "") -> go.Figure:
    """Two panels sharing the passage axis: leave-one-out Δ log-prob and the IG sum per passage."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "Leave one out: log p(gold) − log p(gold | passage removed)", "Integrated gradients: sum over the passage"))
    names = [f"P{i}" for i in range(1, result.n_passages + 1)]
    loo, ig = list(result.loo), result.passage_ig.tolist()
    for col, values in ((1, loo), (2, ig)):
        for flag in (True, False):
            idx = [i for i, r in enumerate(result.relevant) if r == flag]
            if not idx:
                continue
            fig.add_trace(go.Bar(
                x=[names[i] for i in idx], y=[values[i] for i in idx], name="relevant" if flag else "irrelevant",
                marker_color=passage_color(flag), legendgroup="relevant" if flag else "irrelevant",
                showlegend=col == 1, customdata=[html.escape(result.titles[i]) for i in idx],  # plotly reads tags
                hovertemplate="%{x} · %{customdata}<br>%{y:.4f} nats<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(categoryorder="array", categoryarray=names, row=1, col=col)
    fig.update_yaxes(title_text="nats", row=1, col=1)
    fig.update_layout(title=title or None, barmode="overlay", height=340, margin=dict(l=50, r=20, t=60, b=40),
                      legend=dict(orientation="h", y=-0.2))
    return fig


def gap_health(result: PassageAttribution) -> Health:
    """The completeness badge of the IG over the prompt: green below 1 %, amber below 5 %, else red."""
    return health_of_gap(result.relative_gap, "more IG steps")


def _heat(value: float, scale: float) -> str:
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    r, g, b = RAISES_RGB if value >= 0 else LOWERS_RGB
    return f"rgba({r},{g},{b},{0.85 * strength:.3f})"


def token_heat_html(result: PassageAttribution) -> str:
    """The prompt, token by token, each on a background by its IG (green raises the gold answer's
    log-prob, magenta lowers it; strength relative to the largest |IG|), each passage boxed in its
    relevant / irrelevant colour with a label, the question in grey. Every token is escaped."""
    ig = result.token_ig.tolist()
    scale = max((abs(v) for v in ig), default=0.0)
    boxes: list[tuple[int, int, str]] = []  # (start, end, opening html) of each non-empty part
    for i, ((a, b), relevant) in enumerate(zip(result.spans, result.relevant), start=1):
        color = passage_color(relevant)
        boxes.append((a, b, f'<span style="border: 2px solid {color}; border-radius: 4px; padding: 1px 2px;">'
                            f'<span style="background: {color}; color: white; font-size: 0.8em; padding: 0 4px; '
                            f'border-radius: 3px;">{html.escape(_passage_label(i, relevant))}</span> '))
    if result.question_span is not None:
        a, b = result.question_span
        boxes.append((a, b, f'<span style="border: 2px dashed {QUESTION_COLOR}; border-radius: 4px; padding: 1px 2px;">'))
    boxes = [box for box in boxes if box[1] > box[0]]
    parts = [
        '<div style="font-family: ui-monospace, monospace; font-size: 0.85em; line-height: 1.7; '
        'white-space: pre-wrap; word-break: break-word;">'
    ]
    for pos, (token, value) in enumerate(zip(result.tokens, ig)):
        parts += ["</span>" for _, b, _ in boxes if b == pos]
        parts += [opening for a, _, opening in boxes if a == pos]
        title = html.escape(f"token {pos}: IG {value:+.4g}", quote=True)
        parts.append(f'<span title="{title}" style="background: {_heat(value, scale)};">'
                     f"{html.escape(token, quote=True)}</span>")
    parts += ["</span>" for _, b, _ in boxes if b >= len(result.tokens)]
    parts.append("</div>")
    return "".join(parts)
