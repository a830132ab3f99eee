"""The one place the workbench loads model weights: a Streamlit cached resource keyed by spec.

Owns: `load` (name/path, device, dtype -> model + identity, cached with st.cache_resource so a
rerun or another page never reloads), `current_model` (the model of the session's spec, or an
st.error with the library's message and None), and `mined` (a cached mining result read once per
version of its folder). Must not: run the model or hold results.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import streamlit as st

from app import state
from neurorit.errors import ArtifactError, NeuroritError
from neurorit.mining import MinedNeurons
from neurorit.models import ModelIdentity, load_model, model_identity, pick_device, pick_dtype


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model with its identity; `key` names its results in the session state."""

    model: Any
    identity: ModelIdentity
    spec: state.ModelSpec
    device: str
    dtype: str
    seconds: float
    lock: Any = field(default_factory=threading.RLock, compare=False, repr=False)
    """Held while a page runs the model: sessions share it, and masks are hooks on the shared model."""

    @property
    def key(self) -> str:
        return f"{self.identity.name}:{self.identity.fingerprint}:{self.device}:{self.dtype}"

    @property
    def n_ctx(self) -> int:
        return int(self.model.cfg.n_ctx)


@st.cache_resource(max_entries=2, show_spinner=False)
def _load(name: str | None, device: str | None, dtype: str | None) -> LoadedModel:
    start = time.perf_counter()
    model = load_model(name, device=device, dtype=dtype)
    dev = pick_device(device)
    return LoadedModel(
        model=model, identity=model_identity(model), spec=state.ModelSpec(name, device, dtype),
        device=str(dev), dtype=str(pick_dtype(dev, dtype)).replace("torch.", ""),
        seconds=time.perf_counter() - start,
    )


def load(spec: state.ModelSpec) -> LoadedModel:
    """The model of a spec, loaded once per process (raises NeuroritError on a bad spec)."""
    return _load(spec.name, spec.device, spec.dtype)


def current_model(*, sidebar: bool = True) -> LoadedModel | None:
    """The session's model; on failure an st.error with the reason, and None."""
    spec = state.model_spec()
    try:
        with st.spinner(f"Loading {spec.label()} (once per server)…"):
            loaded = load(spec)
    except NeuroritError as exc:
        st.error(f"Could not load the model {spec.label()}: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001  torch / transformers failures on odd folders or devices
        st.error(f"Could not load the model {spec.label()}: {type(exc).__name__}: {exc}")
        return None
    if sidebar:
        ident = loaded.identity
        st.sidebar.caption(
            f"**Model** {ident.name} · {ident.n_layers} layers × {ident.d_mlp} neurons · {loaded.device} · "
            f"{loaded.dtype} · weights `{ident.fingerprint}`"
        )
    return loaded


def require_model() -> LoadedModel:
    """The session's model, or the page stops here (after current_model's error message)."""
    loaded = current_model()
    if loaded is None:
        state.stop_run()
    return loaded  # type: ignore[return-value]


@st.cache_resource(max_entries=16, show_spinner=False)
def _mined(path: str, mtime: float) -> MinedNeurons:
    return MinedNeurons.load(Path(path))


def mined(folder: Path | str) -> MinedNeurons:
    """A cached mining result, read once per version of its folder (raises ArtifactError)."""
    folder = Path(folder)
    record = folder / "mined.json"
    if not record.is_file():
        raise ArtifactError(f"{folder} holds no mined.json: not a mining result (or it is still being written).")
    return _mined(str(folder), record.stat().st_mtime)
