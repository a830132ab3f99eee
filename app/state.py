"""Session state of the workbench: which model, which data, which example, and derived results.

Owns: the keys the pages share in `st.session_state` (the model spec, the loaded examples and the
chosen one, the prompt config, results), defaults from the environment (`NEURORIT_MODEL`,
`NEURORIT_DEVICE`, `NEURORIT_DTYPE`), and the rule that results derived from a model never
outlive it: results live in a namespace keyed by the model's identity, and changing the model
spec clears them. Every function takes the state mapping as an optional argument, so it is
testable with a plain dict. Must not: load models or run them (see resources.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, MutableMapping, NoReturn

import streamlit as st

from neurorit.data import RagExample, demo_examples
from neurorit.prompts import PromptConfig

MODEL_SPEC = "neurorit.model_spec"
EXAMPLES = "neurorit.examples"
ORIGINAL_EXAMPLES = "neurorit.original_examples"
DATASET_LABEL = "neurorit.dataset_label"
EXAMPLE_INDEX = "w.example_index"  # also the key of the example picker widget (forms.example_picker)
PROMPT_CONFIG = "neurorit.prompt_config"
RESULTS = "neurorit.results"
SHARED_SET = "neurorit.shared_set"  # a neuron set handed from Explore to Ablate
SCRIPT_RUNS = "neurorit.script_runs"  # full script runs finished in this session (see mark_run_finished)


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a name or path (None = bundled), a device and a dtype (None = automatic)."""

    name: str | None = None
    device: str | None = None
    dtype: str | None = None

    def label(self) -> str:
        name = self.name or "bundled SmolLM2-135M-Instruct"
        return f"{name} · {self.device or 'auto device'} · {self.dtype or 'auto dtype'}"


def _state(state: MutableMapping[str, Any] | None) -> MutableMapping[str, Any]:
    return st.session_state if state is None else state


def _blank(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value in ("", "auto") else value


def default_spec(env: MutableMapping[str, str] | None = None) -> ModelSpec:
    """The model spec from NEURORIT_MODEL / NEURORIT_DEVICE / NEURORIT_DTYPE (unset = automatic)."""
    env = os.environ if env is None else env
    return ModelSpec(_blank(env.get("NEURORIT_MODEL")), _blank(env.get("NEURORIT_DEVICE")), _blank(env.get("NEURORIT_DTYPE")))


def _get_or_init(state: MutableMapping[str, Any] | None, key: str, make: Any) -> Any:
    """state[key], set to make() the first time it is asked for."""
    s = _state(state)
    if key not in s:
        s[key] = make()
    return s[key]


def model_spec(state: MutableMapping[str, Any] | None = None) -> ModelSpec:
    return _get_or_init(state, MODEL_SPEC, default_spec)


def set_model_spec(spec: ModelSpec, state: MutableMapping[str, Any] | None = None) -> bool:
    """Switch the model; results of the old one are dropped. Returns whether it changed."""
    s = _state(state)
    spec = ModelSpec(_blank(spec.name), _blank(spec.device), _blank(spec.dtype))
    if s.get(MODEL_SPEC) == spec:
        return False
    s[MODEL_SPEC] = spec
    clear_results(s)
    return True


def clear_results(state: MutableMapping[str, Any] | None = None) -> None:
    s = _state(state)
    s.pop(RESULTS, None)
    s.pop(SHARED_SET, None)


def results(model_key: str, state: MutableMapping[str, Any] | None = None) -> dict[str, Any]:
    """The results namespace of one model (by identity); another model's results are dropped first."""
    s = _state(state)
    current = s.get(RESULTS)
    if not current or current.get("model") != model_key:
        s[RESULTS] = {"model": model_key, "items": {}}
        s.pop(SHARED_SET, None)
    return s[RESULTS]["items"]


# ---- data -------------------------------------------------------------------------------------


def examples(state: MutableMapping[str, Any] | None = None) -> list[RagExample]:
    """The loaded examples; the demo set until the user picks another dataset."""
    s = _state(state)
    if EXAMPLES not in s:
        set_examples(demo_examples(), "demo set", s)
    return s[EXAMPLES]


def set_examples(items: list[RagExample], label: str, state: MutableMapping[str, Any] | None = None) -> None:
    s = _state(state)
    s[EXAMPLES] = list(items)
    s[ORIGINAL_EXAMPLES] = list(items)
    s[DATASET_LABEL] = label
    s[EXAMPLE_INDEX] = 0


def dataset_label(state: MutableMapping[str, Any] | None = None) -> str:
    s = _state(state)
    examples(s)
    return str(s.get(DATASET_LABEL, ""))


def example_index(state: MutableMapping[str, Any] | None = None) -> int:
    s = _state(state)
    items = examples(s)
    index = int(s.get(EXAMPLE_INDEX, 0))
    return index if 0 <= index < len(items) else 0


def set_example_index(index: int, state: MutableMapping[str, Any] | None = None) -> None:
    _state(state)[EXAMPLE_INDEX] = int(index)


def current_example(state: MutableMapping[str, Any] | None = None) -> RagExample | None:
    s = _state(state)
    items = examples(s)
    return items[example_index(s)] if items else None


def replace_example(example: RagExample, state: MutableMapping[str, Any] | None = None) -> None:
    """Put an edited example in place of the chosen one (the original stays for 'revert')."""
    s = _state(state)
    items = list(examples(s))
    items[example_index(s)] = example
    s[EXAMPLES] = items


def original_example(state: MutableMapping[str, Any] | None = None) -> RagExample | None:
    s = _state(state)
    originals = s.get(ORIGINAL_EXAMPLES) or examples(s)
    index = example_index(s)
    return originals[index] if index < len(originals) else None


def prompt_config(state: MutableMapping[str, Any] | None = None) -> PromptConfig:
    return _get_or_init(state, PROMPT_CONFIG, PromptConfig)


def set_prompt_config(config: PromptConfig, state: MutableMapping[str, Any] | None = None) -> None:
    _state(state)[PROMPT_CONFIG] = config


def shared_set(state: MutableMapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The neuron sets Explore handed to Ablate: {"model": key, "example_id", "sets": {name: NeuronSet}, ...}."""
    return _state(state).get(SHARED_SET)


def set_shared_set(record: dict[str, Any], state: MutableMapping[str, Any] | None = None) -> None:
    _state(state)[SHARED_SET] = record


def mark_run_finished() -> None:
    """The app's own "finished" status: a hidden element whose `data-run` counts completed script runs.

    Written as the last element of every full run (streamlit_app.py), so whoever drives the page (the
    browser tests) waits for the count to grow after an action, whatever the machine's speed, instead
    of guessing from Streamlit's 'Running' widget, which shows only after a delay.
    """
    runs = int(st.session_state.get(SCRIPT_RUNS, 0)) + 1
    st.session_state[SCRIPT_RUNS] = runs
    st.html(f'<span class="neurorit-run-finished" data-run="{runs}"></span>')


def stop_run() -> NoReturn:
    """End this script run here (`st.stop()`), reporting it finished first (mark_run_finished):
    after st.stop() no element can be written any more. Pages call this, never st.stop() itself."""
    mark_run_finished()
    st.stop()
