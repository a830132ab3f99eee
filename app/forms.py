"""Widgets -> config dataclasses, and the parsers of what users type.

Owns: the sidebar / inline forms that build `MiningConfig`, `SelectionRule`, `PromptConfig` and
`EvalConfig` (a bad value shows st.error and gives None, never a traceback), widget keys that
survive page switches (prefix "w.", kept alive by `keep_widget_state`), and the pure parsers of
layer lists ("0-3, 7") and hand-picked neurons ("3:17, 12:404"). Must not: run models.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from neurorit.attribution import MiningConfig
from neurorit.errors import ConfigError
from neurorit.evaluation import EvalConfig
from neurorit.neurons import SelectionRule
from neurorit.prompts import VIEWS, PromptConfig

WIDGET_PREFIX = "w."


def keep_widget_state() -> None:
    """Re-assign every "w." widget value, so leaving a page does not reset its settings."""
    for key in list(st.session_state.keys()):
        if isinstance(key, str) and key.startswith(WIDGET_PREFIX):
            st.session_state[key] = st.session_state[key]


def init(key: str, value: Any) -> str:
    """Give a widget key its default once; the widget is then created without a value argument."""
    if key not in st.session_state:
        st.session_state[key] = value
    return key


# ---- parsers (pure) ---------------------------------------------------------------------------


def parse_layers(text: str | None, n_layers: int) -> tuple[int, ...] | None:
    """'' or 'all' -> None (every layer); '0-3, 7' -> (0, 1, 2, 3, 7); out-of-range -> ConfigError."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    out: set[int] = set()
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ConfigError(f"layers: expected numbers or ranges like '0-3, 7', got {part!r}.") from None
    bad = sorted(l for l in out if not 0 <= l < n_layers)
    if bad:
        raise ConfigError(f"layers {bad} are outside the model's layers 0-{n_layers - 1}.")
    if not out:
        raise ConfigError("layers: no layer given; leave the field empty for every layer.")
    return tuple(sorted(out))


def parse_neurons(text: str | None, n_layers: int, d_mlp: int) -> list[tuple[int, int]]:
    """'3:17, 12:404' -> [(3, 17), (12, 404)]; anything else -> ConfigError naming the bad part."""
    out: list[tuple[int, int]] = []
    for part in (text or "").replace(";", ",").replace("\n", ",").split(","):
        part = part.strip()
        if not part:
            continue
        pieces = part.split(":")
        try:
            if len(pieces) != 2:
                raise ValueError
            layer, index = int(pieces[0]), int(pieces[1])
        except ValueError:
            raise ConfigError(f"neurons are 'layer:index' pairs separated by commas (e.g. 3:17, 12:404); got {part!r}.") from None
        if not (0 <= layer < n_layers and 0 <= index < d_mlp):
            raise ConfigError(
                f"neuron {part} is outside the model: layers 0-{n_layers - 1}, neurons 0-{d_mlp - 1}."
            )
        if (layer, index) not in out:
            out.append((layer, index))
    if not out:
        raise ConfigError("no neurons given; type 'layer:index' pairs such as 3:17, 12:404.")
    return out


# ---- forms -----------------------------------------------------------------------------------


def mining_form(n_layers: int, *, prefix: str, container: Any = None, n_steps: int = 20) -> MiningConfig | None:
    """IG settings: steps, layers, baseline, positions, target, quadrature."""
    c = container or st.sidebar
    k = f"{WIDGET_PREFIX}{prefix}."
    steps = c.number_input("IG steps (m)", min_value=1, max_value=256, step=1, key=init(k + "n_steps", n_steps),
                           help="Quadrature points of the path integral; METHOD.md uses 20. Fewer is faster, less exact.")
    layers_text = c.text_input("Layers", key=init(k + "layers", ""), placeholder=f"all (0-{n_layers - 1})",
                               help="Empty = every layer; or a list like '0-3, 7' to attribute fewer layers (faster).")
    baseline = c.selectbox("Baseline", ["no_context", "zero"], key=init(k + "baseline", MiningConfig().baseline),
                           help="no_context: the question's closed-book activation (IRCAN; the default, completeness "
                                "< 1 % at m = 20 on every layer of the bundled model); zero: Knowledge Neurons "
                                "(layer 0 then needs more steps). 'all' positions need 'zero'.")
    positions = c.selectbox("Positions", ["last", "all"], key=init(k + "positions", "last"),
                            help="Attribute the last prompt token (default) or every prompt position.")
    target = c.selectbox("Target f", ["answer", "first_token", "own_answer"], key=init(k + "target", "answer"),
                         help="Gold answer log-prob (all tokens), its first token only, or the model's own greedy answer.")
    quadrature = c.selectbox("Quadrature", ["midpoint", "gauss_legendre"], key=init(k + "quadrature", "midpoint"))
    try:
        return MiningConfig(layers=parse_layers(layers_text, n_layers), baseline=baseline, positions=positions,
                            target=target, n_steps=int(steps), quadrature=quadrature)
    except ConfigError as exc:
        c.error(str(exc))
        return None


def selection_form(*, prefix: str, container: Any = None, with_support: bool = False) -> SelectionRule | None:
    """Per-example selection (relative threshold or top-k), plus support across examples when mining."""
    c = container or st.sidebar
    k = f"{WIDGET_PREFIX}{prefix}."
    mode = c.radio("Selection", ["relative", "top_k"], key=init(k + "mode", "relative"), horizontal=True,
                   help="relative: score >= threshold x the example's top score; top_k: the k highest.")
    threshold = c.slider("Relative threshold", 0.01, 1.0, step=0.01, key=init(k + "threshold", 0.2),
                         disabled=mode != "relative")
    top_k = c.number_input("Top k", min_value=1, max_value=100_000, step=10, key=init(k + "top_k", 100),
                           disabled=mode != "top_k")
    support = 0.5
    if with_support:
        support = c.slider("Support (fraction of examples)", 0.05, 1.0, step=0.05, key=init(k + "support", 0.5),
                           help="Keep neurons selected in at least this fraction of the examples.")
    scope = c.radio("Scope", ["example", "layer"], key=init(k + "scope", "example"), horizontal=True,
                    format_func={"example": "whole example", "layer": "each layer"}.get,
                    help="One threshold (or top-k) over all layers, or one per layer: per layer keeps the other "
                         "layers visible when a few layers (e.g. layer 0 against a zero baseline) dwarf the rest.")
    use_abs = c.checkbox("Rank by |score|", key=init(k + "use_abs", False))
    try:
        return SelectionRule(mode=mode, threshold=float(threshold), top_k=int(top_k), support=float(support),
                             use_abs=bool(use_abs), scope=scope)
    except ConfigError as exc:
        c.error(str(exc))
        return None


def prompt_form(current: PromptConfig, *, prefix: str = "prompt", container: Any = None) -> PromptConfig | None:
    """How examples become prompts: distractors, position of the relevant passage, truncation, instruction."""
    c = container or st
    k = f"{WIDGET_PREFIX}{prefix}."
    n_distractors = c.number_input("Distractors in noisy / irrelevant prompts", min_value=0, max_value=50, step=1,
                                   key=init(k + "n_distractors", current.n_distractors))
    position = c.number_input("Position of the relevant passage (-1 = random per example)", min_value=-1,
                              max_value=50, step=1,
                              key=init(k + "relevant_position", -1 if current.relevant_position is None else current.relevant_position))
    max_tokens = c.number_input("Max tokens per passage", min_value=8, max_value=4096, step=8,
                                key=init(k + "max_passage_tokens", current.max_passage_tokens))
    seed = c.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=init(k + "seed", current.seed))
    instruction = c.text_area("Instruction", key=init(k + "instruction", current.instruction), height=80)
    system = c.text_input("System prompt (empty = the chat template's default)",
                          key=init(k + "system_prompt", current.system_prompt or ""))
    try:
        return PromptConfig(
            instruction=instruction, closed_book_instruction=current.closed_book_instruction,
            n_distractors=int(n_distractors), relevant_position=None if int(position) < 0 else int(position),
            max_passage_tokens=int(max_tokens), seed=int(seed), system_prompt=system or None,
        )
    except ConfigError as exc:
        c.error(str(exc))
        return None


def eval_form(prompt: PromptConfig, *, prefix: str, container: Any = None,
              default_views: tuple[str, ...] = ("relevant", "noisy", "irrelevant")) -> EvalConfig | None:
    """Which views to answer under, and how long an answer may be."""
    c = container or st.sidebar
    k = f"{WIDGET_PREFIX}{prefix}."
    views = c.multiselect("Views", list(VIEWS), key=init(k + "views", list(default_views)))
    max_new = c.number_input("Max answer tokens", min_value=1, max_value=256, step=1, key=init(k + "max_new_tokens", 16))
    try:
        return EvalConfig(views=tuple(views), max_new_tokens=int(max_new), prompt=prompt)
    except ConfigError as exc:
        c.error(str(exc))
        return None


def example_picker(items: list[Any], *, container: Any = None) -> Any:
    """The example selectbox shared by the pages (its key is the session's chosen example index)."""
    from app import state

    c = container or st
    if not items:
        c.warning("No examples loaded; pick a dataset on the Model & data page.")
        return None
    state.example_index()  # clamps a stale index before the widget reads it
    if st.session_state.get(state.EXAMPLE_INDEX, 0) >= len(items):
        st.session_state[state.EXAMPLE_INDEX] = 0
    index = c.selectbox(
        "Example", list(range(len(items))), key=init(state.EXAMPLE_INDEX, 0),
        format_func=lambda i: f"{i + 1}. {items[i].id} — {items[i].question[:90]}",
    )
    return items[int(index)]
