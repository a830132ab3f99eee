"""Widgets -> config dataclasses, and the parsers of what users type.

Owns: `config_form`, the form of any config dataclass built from its fields' descriptions
(`neurorit.flags.about`: the attribution, selection and mining options are never retyped here), the
inline forms that build `PromptConfig` and `EvalConfig`, and the Train page's `TrainConfig` (a bad value shows st.error and gives None, never
a traceback), widget keys that survive page switches (prefix "w.", kept alive by
`keep_widget_state`), and the pure parsers of layer lists ("0-3, 7"), counts ("1-4") and
hand-picked neurons ("3:17, 12:404"). Must not: run models.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import streamlit as st

from neurorit.configs import parse_int_ranges
from neurorit.data import FORMATS
from neurorit.errors import ConfigError
from neurorit.evaluation import EvalConfig
from neurorit.flags import FieldSpec, field_specs
from neurorit.mining_spec import AttributionConfig, MiningSpec, SelectionRule
from neurorit.prompts import VIEWS, PromptConfig
from neurorit.training.config import (
    DEFAULT_EVAL, DISTRACTOR_SOURCES, MASKED_METHODS, METHODS, RETROBUST_BASES, STAGE2_LOSSES, TrainConfig,
)

WIDGET_PREFIX = "w."
UNSET = "(unset)"  # the choice standing for None in a select box of an optional field


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
    out = parse_int_ranges(text, name="layers")
    bad = [l for l in out if l >= n_layers]
    if bad:
        raise ConfigError(f"layers {bad} are outside the model's layers 0-{n_layers - 1}.")
    if not out:
        raise ConfigError("layers: no layer given; leave the field empty for every layer.")
    return out


def parse_counts(text: str | None, *, name: str = "counts", allow_empty: bool = False) -> tuple[int, ...]:
    """'1-4' -> (1, 2, 3, 4); '0, 2' -> (0, 2): integers >= 0, sorted, each once; bad text -> ConfigError."""
    out = parse_int_ranges(text, name=name)
    if not out and not allow_empty:
        raise ConfigError(f"{name}: nothing given; type integers or a range such as '1-4'.")
    return out


# ---- forms -----------------------------------------------------------------------------------


def field_widget(c: Any, spec: FieldSpec, key: str, default: Any, *, disabled: bool = False,
                 n_layers: int | None = None) -> Any:
    """One config field's widget, built from its description (neurorit.flags.about); returns the raw value."""
    meta = spec.meta
    labels = meta.get("labels") or {}
    if spec.kind == "choice":  # None is offered as an option of its own (a None value would show no choice)
        options = ([UNSET] if spec.optional else []) + list(spec.choices)
        fmt = lambda v: labels.get(None, "default") if v == UNSET else labels.get(v, str(v))  # noqa: E731
        common = {"key": init(key, UNSET if default is None else default), "help": spec.help or None,
                  "disabled": disabled}
        if meta.get("widget") == "radio":
            raw = c.radio(spec.label, options, horizontal=True, format_func=fmt, **common)
        else:
            raw = c.selectbox(spec.label, options, format_func=fmt, **common)
        return None if raw == UNSET else raw
    common = {"key": init(key, default), "help": spec.help or None, "disabled": disabled}
    if spec.kind == "bool":
        return c.checkbox(spec.label, **common)
    if spec.kind in ("int", "float"):
        cast = int if spec.kind == "int" else float
        bounds = {name: cast(meta[m]) for name, m in (("min_value", "lo"), ("max_value", "hi"), ("step", "step"))
                  if meta.get(m) is not None}
        if meta.get("widget") == "slider":
            return c.slider(spec.label, bounds.get("min_value"), bounds.get("max_value"), step=bounds.get("step"),
                            **common)
        if spec.optional:
            bounds["placeholder"] = labels.get(None, "none")
        return c.number_input(spec.label, **bounds, **common)
    placeholder = f"all (0-{n_layers - 1})" if spec.kind == "ints" and n_layers else None
    return c.text_input(spec.label, placeholder=placeholder, **common)


def config_form(cls: type, *, prefix: str, container: Any = None, current: Any = None, skip: tuple[str, ...] = (),
                n_layers: int | None = None, one_example: bool = False) -> Any:
    """A form for a config dataclass from its fields' descriptions (`about(form=True)`), in field order.

    one_example: leave out the fields that only act across examples (`about(across_examples=True)`).

    A field that applies only under other fields' values (`when`) is shown disabled otherwise. A list
    of layers is typed as '0-3, 7' (empty = every layer). Returns the config, or None after showing
    why its values are refused (st.error, never a traceback).
    """
    c = container or st.sidebar
    k = f"{WIDGET_PREFIX}{prefix}."
    current = current if current is not None else cls()
    values: dict[str, Any] = {}
    try:
        for spec in field_specs(cls):
            if not spec.meta.get("form", True) or spec.name in skip or (one_example and spec.meta.get("across_examples")):
                continue
            default = getattr(current, spec.name)
            if spec.kind == "ints":
                default = ", ".join(map(str, default)) if default else ""
            raw = field_widget(c, spec, k + spec.name, default, disabled=not spec.applies(values), n_layers=n_layers)
            if spec.kind == "ints":
                raw = parse_layers(raw, n_layers) if n_layers else (parse_int_ranges(raw, name=spec.name) or None)
            values[spec.name] = raw
        return dataclasses.replace(current, **values)
    except ConfigError as exc:
        c.error(str(exc))
        return None


def mining_form(n_layers: int, *, prefix: str, container: Any = None) -> AttributionConfig | None:
    """IG settings: layers, baseline, positions, target, steps, quadrature (AttributionConfig's form fields)."""
    return config_form(AttributionConfig, prefix=prefix, container=container, n_layers=n_layers)


def selection_form(*, prefix: str, container: Any = None, with_support: bool = False) -> SelectionRule | None:
    """Per-example selection (relative threshold, top-k or the counting recipe), plus the settings that combine
    examples (support, the counting recipe's h, ...) when mining (with_support)."""
    return config_form(SelectionRule, prefix=prefix, container=container, one_example=not with_support)


def mining_options_form(*, prefix: str, container: Any = None) -> dict[str, Any] | None:
    """The mining run's own switches (irrelevant target, preview) as MiningSpec field values."""
    spec = config_form(MiningSpec, prefix=prefix, container=container, skip=("prompt", "mining", "selection"))
    return None if spec is None else {"irrelevant_target": spec.irrelevant_target, "preview": spec.preview}


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


METHOD_LABELS = {
    "neuro_rit": "Neuro-RIT (denoise, then distill; mask on)",
    "full": "Full fine-tuning",
    "lora": "LoRA",
    "retrobust": "RetRobust (relevant + noisy + irrelevant mix)",
    "random_mask": "Random-mask control (Neuro-RIT with a random mask)",
    "ralm": "RALM (no training: evaluation only)",
}


def _clamp(key: str, low: int, high: int) -> None:
    """Keep a stored number widget value inside its bounds (the model or the cache may have changed)."""
    if key in st.session_state and isinstance(st.session_state[key], (int, float)):
        st.session_state[key] = min(max(st.session_state[key], low), high)


def train_form(
    n_layers: int, mined: Mapping[str, str], *, session_data: str, session_label: str, prompt: PromptConfig,
    model: str | None = None, device: str | None = None, prefix: str = "train", container: Any = None,
) -> TrainConfig | None:
    """Every TrainConfig knob the Train page offers; None (with an st.error) when a value is refused.

    `mined` maps a label to a MinedNeurons folder (the masked methods pick one); `session_data`
    is what `data` holds when the session's dataset is chosen ("demo" or a file the page writes).
    The prompt config applies to training inputs and to the before / after evaluation.
    """
    c = container or st
    k = f"{WIDGET_PREFIX}{prefix}."
    defaults = TrainConfig(method="full")
    method = c.selectbox("Method", list(METHODS), key=init(k + "method", "neuro_rit"), format_func=METHOD_LABELS.get,
                         help="The baselines share the loop, the data and the step budget with Neuro-RIT.")
    masked = method in MASKED_METHODS
    errors: list[str] = []
    mined_folder: str | None = None
    target_layers: tuple[int, ...] | None = None
    n_target = min(defaults.n_target_layers, n_layers)
    stage2_loss = defaults.stage2_loss
    if masked:
        labels = list(mined)
        if not labels:
            c.info("No mining result for this model in the cache: mine the sets on the Mine page first "
                   "(the mask is the irrelevant-exclusive set, the target layers come from the relevant-exclusive one).")
        else:
            if st.session_state.get(k + "mined") not in labels:
                st.session_state[k + "mined"] = labels[0]
            mined_folder = mined[c.selectbox("Mined neurons", labels, key=k + "mined",
                                             help="Mask = its irrelevant-exclusive set; random_mask draws the same "
                                                  "number of neurons per layer at random.")]
        layer_mode = c.radio("Target layers", ["auto", "list"], horizontal=True, key=init(k + "layer_mode", "auto"),
                             format_func={"auto": "auto (most relevant-exclusive neurons)", "list": "a list"}.get)
        if layer_mode == "auto":
            _clamp(k + "n_target_layers", 1, n_layers)
            n_target = int(c.number_input("Number of target layers", min_value=1, max_value=n_layers, step=1,
                                          key=init(k + "n_target_layers", n_target)))
        else:
            text = c.text_input("Layers", key=init(k + "layers", ""), placeholder=f"e.g. 0-1 (layers 0-{n_layers - 1})")
            try:
                target_layers = parse_layers(text, n_layers)
                if target_layers is None:
                    raise ConfigError("target layers: none given; type a list such as '0-1', or choose auto.")
            except ConfigError as exc:
                errors.append(str(exc))
        stage2_loss = c.selectbox("Stage 2 loss", list(STAGE2_LOSSES), key=init(k + "stage2_loss", defaults.stage2_loss),
                                  help="ce: answer cross-entropy on noisy inputs (default); kl: distil the frozen "
                                       "model given the relevant-only view; ce_kl: both.")
    c1, c2, c3, c4 = c.columns(4)
    max_steps = c1.number_input("Steps", min_value=1, max_value=100_000, step=1, key=init(k + "max_steps", defaults.max_steps),
                                help="Optimizer steps, all stages together (the same budget for every method).")
    lr_text = c2.text_input("Learning rate", key=init(k + "lr", ""), placeholder="default: 1e-4 (LoRA 2e-4)")
    batch = c3.number_input("Batch size", min_value=1, max_value=1024, step=1, key=init(k + "batch_size", defaults.batch_size))
    accum = c4.number_input("Grad. accumulation", min_value=1, max_value=1024, step=1,
                            key=init(k + "grad_accum", defaults.grad_accum))
    c1, c2 = c.columns(2)
    distractors_text = c1.text_input("Distractors per training input", key=init(k + "n_distractors", "1-4"),
                                     help="Drawn per example and epoch from this list, e.g. '1-4' or '2, 4'.")
    distractors_from = c2.selectbox("Distractors from", list(DISTRACTOR_SOURCES),
                                    key=init(k + "distractors_from", defaults.distractors_from),
                                    help="The example's own irrelevant passages, then other examples'.")
    source = c.radio("Data", ["session", "file"], horizontal=True, key=init(k + "data_source", "session"),
                     format_func={"session": f"the session's dataset ({session_label})", "file": "a file path"}.get)
    data, data_format = session_data, "neurorit" if session_data != "demo" else None
    if source == "file":
        c1, c2 = c.columns([3, 1])
        data = c1.text_input("Dataset file (JSON lines, optionally .gz)", key=init(k + "data_path", "")).strip()
        fmt = c2.selectbox("Format", ["auto", *FORMATS], key=init(k + "format", "auto"))
        data_format = None if fmt == "auto" else fmt
        if not data:
            errors.append("Data: type the path of a dataset file, or use the session's dataset.")
    c1, c2, c3, c4 = c.columns(4)
    limit = c1.number_input("Use the first N examples (0 = all)", min_value=0, step=10, key=init(k + "limit", 0))
    n_eval = c2.number_input("Test examples evaluated", min_value=1, max_value=100_000, step=1, key=init(k + "n_eval", defaults.n_eval))
    levels_text = c3.text_input("Eval distractors (noisy view)", key=init(k + "noise_levels", "2, 4"))
    eval_before = c4.checkbox("Evaluate before training too", key=init(k + "eval_before", defaults.eval_before))
    with c.expander("More settings"):
        e1, e2, e3, e4 = st.columns(4)
        checkpoint_every = e1.number_input("Checkpoint every N steps (0 = stage ends only)", min_value=0, step=1,
                                           key=init(k + "checkpoint_every", defaults.checkpoint_every))
        dev_every = e2.number_input("Dev loss every N steps (0 = never)", min_value=0, step=1,
                                    key=init(k + "dev_every", defaults.dev_every))
        n_dev = e3.number_input("Dev examples", min_value=1, step=1, key=init(k + "n_dev", defaults.n_dev))
        seed = e4.number_input("Seed", min_value=0, max_value=2**31 - 1, step=1, key=init(k + "seed", defaults.seed))
        e1, e2, e3, e4 = st.columns(4)
        lora_r = e1.number_input("LoRA rank", min_value=1, max_value=1024, step=1, key=init(k + "lora_r", defaults.lora_r),
                                 disabled=method not in ("lora", "retrobust"))
        retrobust_base = e2.selectbox("RetRobust tunes with", list(RETROBUST_BASES),
                                      key=init(k + "retrobust_base", defaults.retrobust_base), disabled=method != "retrobust")
        threads = e3.number_input("CPU threads (0 = torch's default)", min_value=0, max_value=512, step=1,
                                  key=init(k + "threads", 0))
        bake_final = e4.checkbox("Bake the final checkpoint", key=init(k + "bake", defaults.bake),
                                 help="The tuned model with the mask multiplied in, as a plain Hugging Face folder.")
    try:
        lr = float(lr_text) if (lr_text or "").strip() else None
    except ValueError:
        errors.append(f"Learning rate: expected a number such as 1e-4 (empty = the method's default), got {lr_text!r}.")
        lr = None
    try:
        n_distractors = parse_counts(distractors_text, name="distractors per training input")
    except ConfigError as exc:
        errors.append(str(exc))
        n_distractors = defaults.n_distractors
    try:
        noise_levels = parse_counts(levels_text, name="eval distractors", allow_empty=True)
    except ConfigError as exc:
        errors.append(str(exc))
        noise_levels = DEFAULT_EVAL.noise_levels
    if errors:
        for message in errors:
            c.error(message)
        return None
    if masked and mined_folder is None:
        return None  # the info above says what to do
    try:
        return TrainConfig(
            method=method, model=model, device=device, data=data, format=data_format, limit=int(limit) or None,
            n_distractors=n_distractors, distractors_from=distractors_from, prompt=prompt,
            max_steps=int(max_steps), batch_size=int(batch), grad_accum=int(accum), lr=lr, seed=int(seed),
            mined=mined_folder, target_layers=target_layers, n_target_layers=n_target, stage2_loss=stage2_loss,
            lora_r=int(lora_r), retrobust_base=retrobust_base, checkpoint_every=int(checkpoint_every),
            dev_every=int(dev_every), n_dev=int(n_dev), threads=int(threads) or None, n_eval=int(n_eval),
            eval=EvalConfig(views=DEFAULT_EVAL.views, noise_levels=noise_levels,
                            max_new_tokens=DEFAULT_EVAL.max_new_tokens, prompt=prompt),
            eval_before=bool(eval_before), bake=bool(bake_final),
        )
    except ConfigError as exc:
        c.error(str(exc))
        return None
