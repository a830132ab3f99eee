"""Neuron masks: a per-neuron scale, applied with hooks or baked into a plain checkpoint.

Owns: `NeuronMask` (a float scale per neuron, 1 = unchanged, 0 = off, 2 = amplified, plus the
identity of the model it was made for and its provenance), checking a mask against a model,
applying it through hooks inside a context manager, saving and loading it as a validated artifact
(`mask.safetensors` + `mask.json`), the random-mask control (`random_like`, `NeuronMask.random_control`),
and baking a mask into
an ordinary Hugging Face checkpoint (`bake`). Must not: spell hook names or weight paths (see
sites.py), mine neurons, or unpickle anything.

Baking is exact: neuron i of layer L is only read by column i of that layer's output projection
(row i for GPT-2's Conv1D), so scaling that column scales the neuron's contribution and nothing
else; an output bias, where there is one, is untouched, as it is by scaling the activation.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from neurorit import store
from neurorit.configs import stable_hash
from neurorit.errors import ArtifactError, ConfigError, ModelMismatchError
from neurorit.models import ModelIdentity, hf_state_dict, model_identity, neuron_site
from neurorit.neurons import NeuronSet
from neurorit.types import MlpActs, NeuronGrid

log = logging.getLogger(__name__)

MASK_FORMAT_VERSION = 1
MASK_TENSORS = "mask.safetensors"
MASK_JSON = "mask.json"
BAKED_MASK_JSON = "neurorit_mask.json"
_JSON_FIELDS = ("format_version", "model", "provenance", "n_layers", "d_mlp", "scale_sha256")
_IDENTITY_FIELDS = ("name", "architecture", "n_layers", "d_mlp", "fingerprint")


def _identity_of(model_or_identity: Any) -> ModelIdentity:
    if isinstance(model_or_identity, ModelIdentity):
        return model_or_identity
    return model_identity(model_or_identity)


def _scale_digest(scale: torch.Tensor) -> str:
    return hashlib.sha256(scale.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


@dataclass(frozen=True, eq=False)
class NeuronMask:
    """A multiplicative scale on every MLP neuron of one model.

    scale: float32 [n_layers, d_mlp] on the CPU; 1 = unchanged, 0 = off, 2 = amplified.
    model: the identity of the model the mask was made for.
    provenance: JSON-able record of what made it (set label, mining config hash, data, ...).
    """

    scale: NeuronGrid
    model: ModelIdentity
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scale = self.scale
        if not isinstance(scale, torch.Tensor) or scale.ndim != 2:
            raise ConfigError(
                f"NeuronMask.scale must be a 2-d tensor [n_layers, d_mlp], got "
                f"{type(scale).__name__} {tuple(getattr(scale, 'shape', ()))}."
            )
        expected = (self.model.n_layers, self.model.d_mlp)
        if tuple(scale.shape) != expected:
            raise ModelMismatchError(
                f"mask scale has shape {tuple(scale.shape)} but its model {self.model.describe()} has "
                f"{expected}: build the mask from a neuron set mined on that model."
            )
        if scale.dtype != torch.float32 or scale.device.type != "cpu" or scale.requires_grad:
            object.__setattr__(self, "scale", scale.detach().to(device="cpu", dtype=torch.float32))
        if not bool(torch.isfinite(self.scale).all()):
            raise ConfigError("NeuronMask.scale holds NaN or infinite values; expected finite scales.")

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def silencing(
        cls,
        neurons: NeuronSet,
        model_or_identity: Any,
        *,
        scale: float = 0.0,
        provenance: dict[str, Any] | None = None,
    ) -> "NeuronMask":
        """A mask that multiplies the neurons of the set by `scale` (0 = off) and leaves the rest."""
        identity = _identity_of(model_or_identity)
        expected = (identity.n_layers, identity.d_mlp)
        if neurons.shape != expected:
            raise ModelMismatchError(
                f"neuron set has {neurons.shape[0]} layers x {neurons.shape[1]} neurons, model "
                f"{identity.describe()} has {expected[0]} x {expected[1]}: mined on another model?"
            )
        if not math.isfinite(scale):
            raise ConfigError.field("NeuronMask.silencing", "scale", scale, "a finite number")
        grid = torch.ones(expected, dtype=torch.float32)
        grid[neurons.grid] = float(scale)
        record = {"kind": "silencing", "set_label": neurons.label, "scale": float(scale),
                  **(provenance or {})}
        return cls(grid, identity, record)

    @classmethod
    def from_mined(cls, mined: Any, set_name: str, *, scale: float = 0.0) -> "NeuronMask":
        """A named set (neurons.SET_NAMES) of a mining result (mining.MinedNeurons), for its model.

        The provenance names the result by its key, not its path, so the same set gives the same
        mask key from the CLI, a page, training or a study."""
        sets = mined.named_sets()
        if set_name not in sets:
            raise ConfigError(f"unknown set {set_name!r}; choose one of {', '.join(sets)}.")
        return cls.silencing(sets[set_name], mined.model, scale=scale, provenance={
            "source": "mined", "mined": mined.key(), "set": set_name, "mining": mined.provenance.get("mining"),
            "data": mined.provenance.get("data"), "selection": mined.provenance.get("selection")})

    @classmethod
    def from_neurons(cls, neurons: Sequence[tuple[int, int]], model_or_identity: Any, *,
                     scale: float = 0.0) -> "NeuronMask":
        """Hand-picked neurons (layer, index), in the order given."""
        identity = _identity_of(model_or_identity)
        chosen = NeuronSet.from_neurons(neurons, identity.n_layers, identity.d_mlp, f"hand-picked ({len(neurons)})")
        return cls.silencing(chosen, identity, scale=scale,
                             provenance={"source": "hand-picked", "neurons": [f"{l}:{i}" for l, i in neurons]})

    @classmethod
    def from_layer(cls, layer: int, model_or_identity: Any, *, scale: float = 0.0) -> "NeuronMask":
        """Every neuron of one layer."""
        identity = _identity_of(model_or_identity)
        if not 0 <= int(layer) < identity.n_layers:
            raise ConfigError(f"layer {layer} does not exist: the model has layers 0..{identity.n_layers - 1}.")
        chosen = NeuronSet.from_neurons([(int(layer), i) for i in range(identity.d_mlp)], identity.n_layers,
                                        identity.d_mlp, f"layer {int(layer)}")
        return cls.silencing(chosen, identity, scale=scale, provenance={"source": "layer", "layer": int(layer)})

    def random_control(self, seed: int = 0) -> "NeuronMask":
        """The control: the same scale values, per layer, on uniformly random neurons (random_like)."""
        chosen = random_like(self.neurons, seed=seed)
        scale = torch.ones_like(self.scale)
        for layer in range(scale.shape[0]):
            values = self.scale[layer][self.scale[layer] != 1.0]  # [count]
            scale[layer][chosen.grid[layer]] = values
        return NeuronMask(scale, self.model, {"kind": "random_control", "seed": seed, "control_of": self.key(),
                                              "set_label": chosen.label})

    @classmethod
    def identity(cls, model: Any) -> "NeuronMask":
        """The all-ones mask: applying it changes nothing."""
        ident = _identity_of(model)
        return cls(torch.ones(ident.n_layers, ident.d_mlp), ident, {"kind": "identity"})

    # ---- views --------------------------------------------------------------------------------

    @property
    def neurons(self) -> NeuronSet:
        """The neurons whose scale is not 1."""
        return NeuronSet(self.scale != 1.0, str(self.provenance.get("set_label", "")))

    @property
    def layers(self) -> list[int]:
        """The layers with at least one neuron whose scale is not 1."""
        return [int(l) for l in (self.scale != 1.0).any(dim=1).nonzero().flatten().tolist()]

    def counts_per_layer(self) -> list[int]:
        return [int(c) for c in (self.scale != 1.0).sum(dim=1)]

    def __len__(self) -> int:
        return int((self.scale != 1.0).sum())

    def key(self) -> str:
        """A stable hash of the scale values, the model identity and the provenance."""
        return stable_hash(_scale_digest(self.scale), asdict(self.model), self.provenance)

    # ---- use on a model -----------------------------------------------------------------------

    def check(self, model: Any, *, strict: bool = True) -> None:
        """Refuse a model of another shape; refuse other weights too unless `strict=False`."""
        got = model_identity(model)
        want = self.model
        if (got.architecture, got.n_layers, got.d_mlp) != (want.architecture, want.n_layers, want.d_mlp):
            raise ModelMismatchError(
                f"mask has {want.n_layers} layers x {want.d_mlp} neurons ({want.architecture}, made "
                f"for {want.name}), model has {got.n_layers} layers x {got.d_mlp} neurons "
                f"({got.architecture}, {got.name}): mined on another model? Mine the neurons again "
                "on this model."
            )
        if got.fingerprint != want.fingerprint:
            message = (
                f"mask was made for weights {want.fingerprint} of {want.name}, the model has weights "
                f"{got.fingerprint} ({got.name}): same shape, other weights"
            )
            if strict:
                raise ModelMismatchError(
                    message + ". If the model is a fine-tuned copy of the mined one, pass strict=False."
                )
            log.warning("%s; applying the mask anyway (strict=False).", message)

    @contextmanager
    def applied(self, model: Any, *, strict: bool = True) -> Iterator[Any]:
        """Inside the block, the model's neurons are multiplied by the scale (hooks removed after)."""
        self.check(model, strict=strict)
        site = neuron_site(model)
        cached: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

        def make_hook(layer: int):  # type: ignore[no-untyped-def]
            def scale_neurons(acts: MlpActs, hook: Any) -> MlpActs:
                k = (layer, acts.device, acts.dtype)
                if k not in cached:
                    cached[k] = self.scale[layer].to(device=acts.device, dtype=acts.dtype)
                return acts * cached[k]  # [batch, pos, d_mlp] * [d_mlp]

            return scale_neurons

        fwd_hooks = [(site.hook_name(layer), make_hook(layer)) for layer in self.layers]
        with model.hooks(fwd_hooks=fwd_hooks):  # removes its hooks in a finally
            yield model

    # ---- artifact -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        counts = self.counts_per_layer()
        return {
            "format_version": MASK_FORMAT_VERSION,
            "kind": "neuron_mask",
            "model": asdict(self.model),
            "provenance": self.provenance,
            "n_layers": self.model.n_layers,
            "d_mlp": self.model.d_mlp,
            "counts_per_layer": counts,
            "n_neurons": sum(counts),
            "scale_values": sorted({float(v) for v in self.scale.unique().tolist()})[:16],
            "scale_sha256": _scale_digest(self.scale),
            "key": self.key(),
        }

    def save(self, folder: Path) -> Path:
        """Write `folder/mask.safetensors` then `folder/mask.json` (each atomically); return folder.

        Refuses (ArtifactError) a `folder` that is an existing file or would lie under one."""
        folder = Path(folder)
        store.check_folder_path(folder)
        # No safetensors metadata: it made the header 128 bytes long for a [30, 1536] scale, and
        # store.read_tensors mistakes a header length whose first byte is 0x80 for a pickle.
        store.write_tensors(folder / MASK_TENSORS, {"scale": self.scale})
        store.write_json(folder / MASK_JSON, self.to_json())  # written last: the commit marker
        return folder

    @classmethod
    def load(cls, folder_or_file: Path, model: Any = None, *, strict: bool = True) -> "NeuronMask":
        """Read and validate a saved mask; with a model, also check it fits that model."""
        path = Path(folder_or_file)
        folder = path.parent if path.name in (MASK_TENSORS, MASK_JSON) else path
        if not folder.is_dir():
            raise ArtifactError(
                f"{folder} does not exist: expected a mask folder holding {MASK_TENSORS} and {MASK_JSON}."
            )
        meta = store.read_json(folder / MASK_JSON)
        if not isinstance(meta, dict):
            raise ArtifactError(f"{folder / MASK_JSON} must hold a JSON object, got {type(meta).__name__}.")
        missing = [f for f in _JSON_FIELDS if f not in meta]
        ident = meta.get("model")
        if isinstance(ident, dict):
            missing += [f"model.{f}" for f in _IDENTITY_FIELDS if f not in ident]
        elif "model" not in missing:
            missing.append("model (an object)")
        if missing:
            raise ArtifactError(
                f"{folder / MASK_JSON} lacks field(s) {missing}; expected a mask written by "
                "NeuronMask.save. Save the mask again."
            )
        if meta["format_version"] != MASK_FORMAT_VERSION:
            raise ArtifactError(
                f"{folder / MASK_JSON} has format_version {meta['format_version']!r}, this neurorit "
                f"reads {MASK_FORMAT_VERSION}; save the mask again with this version."
            )
        tensors = store.read_tensors(folder / MASK_TENSORS)  # never unpickles
        if "scale" not in tensors:
            raise ArtifactError(
                f"{folder / MASK_TENSORS} holds tensors {sorted(tensors)}, expected one named 'scale'."
            )
        scale = tensors["scale"]
        expected = (meta["n_layers"], meta["d_mlp"])
        if tuple(scale.shape) != tuple(expected) or (ident["n_layers"], ident["d_mlp"]) != tuple(expected):
            raise ArtifactError(
                f"{folder / MASK_TENSORS} holds a scale of shape {tuple(scale.shape)}, but "
                f"{MASK_JSON} says {expected[0]} layers x {expected[1]} neurons: the two files do not "
                "belong together. Save the mask again."
            )
        if not scale.is_floating_point():
            raise ArtifactError(f"{folder / MASK_TENSORS}: scale has dtype {scale.dtype}, expected float32.")
        scale = scale.to(torch.float32)
        if not bool(torch.isfinite(scale).all()):
            raise ArtifactError(f"{folder / MASK_TENSORS}: scale holds NaN or infinite values; the mask is corrupt.")
        if _scale_digest(scale) != meta["scale_sha256"]:
            raise ArtifactError(
                f"{folder / MASK_TENSORS} does not match the checksum in {MASK_JSON}: the files come "
                "from different saves or one is corrupt. Save the mask again."
            )
        provenance = meta["provenance"] if isinstance(meta["provenance"], dict) else {}
        mask = cls(scale, ModelIdentity(**{f: ident[f] for f in _IDENTITY_FIELDS}), provenance)
        if model is not None:
            mask.check(model, strict=strict)
        return mask


def random_like(neurons: NeuronSet, *, seed: int = 0) -> NeuronSet:
    """A random neuron set with the same count in every layer (the random-mask control)."""
    n_layers, d_mlp = neurons.shape
    generator = torch.Generator().manual_seed(seed)
    grid = torch.zeros(n_layers, d_mlp, dtype=torch.bool)
    for layer, count in enumerate(neurons.counts_per_layer()):
        if count:
            grid[layer, torch.randperm(d_mlp, generator=generator)[:count]] = True
    return NeuronSet(grid, f"random_like({neurons.label}, seed={seed})")


def _plain_state_dict(mask: NeuronMask, model: Any, wanted: set[str]) -> dict[str, torch.Tensor]:
    """The model's weights under the names a fresh HF model wants, down-projections scaled."""
    source = hf_state_dict(model)
    absent = sorted(wanted - set(source))
    if absent:
        raise ModelMismatchError(
            f"cannot bake: a plain {mask.model.architecture} wants weights the model lacks: {absent[:5]}."
        )
    kept = {source[k].untyped_storage().data_ptr() for k in wanted if source[k].numel()}
    for name, tensor in source.items():
        if name in wanted or tensor.numel() == 0:
            continue
        if tensor.untyped_storage().data_ptr() in kept or not bool(tensor.any()):
            continue  # a bridge alias of a kept weight, or a bias the bridge added (all zeros)
        raise ArtifactError(
            f"cannot bake: the model holds a non-zero parameter {name!r} that a plain "
            f"{mask.model.architecture} checkpoint has no place for (trained a bridge-only weight?)."
        )
    site = neuron_site(model)
    out = {k: source[k].detach() for k in wanted}  # read only; scaled weights are new tensors
    for layer in mask.layers:
        name = site.down_proj_name(layer)
        weight = out[name]
        shape = [1, 1]
        shape[site.neuron_axis] = -1
        out[name] = weight * mask.scale[layer].to(device=weight.device, dtype=weight.dtype).view(shape)
    return out


def is_export(folder: Path) -> bool:
    """Whether `folder` holds what `bake` writes: a neurorit_mask.json holding a mask record."""
    try:
        record = store.read_json(Path(folder) / BAKED_MASK_JSON)
    except (ArtifactError, OSError):
        return False
    return isinstance(record, dict) and record.get("kind") == "neuron_mask"


def check_export_target(out_dir: Path, *, overwrite: bool = False) -> None:
    """Refuse (ArtifactError naming the path) an export folder `bake` must not write: a file, a
    non-empty folder without `overwrite`, or with it a non-empty folder that is not an export."""
    out_dir = Path(out_dir)
    store.check_folder_path(out_dir)
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return  # absent or empty: free to use
    if not overwrite:
        raise ArtifactError(
            f"{out_dir} exists and is not empty; pick another folder, or pass overwrite=True "
            "(CLI: --overwrite) to replace an earlier export there."
        )
    if not is_export(out_dir):
        raise ArtifactError(
            f"{out_dir} is not a neurorit export (no {BAKED_MASK_JSON}); refusing to delete it. "
            "Pick another folder, or empty this one yourself."
        )


def _dtype_of(module: Any) -> torch.dtype:
    return next(iter(module.parameters())).dtype


def bake(
    mask: NeuronMask, model: Any, out_dir: Path, *, strict: bool = True, overwrite: bool = False,
    notes: dict[str, Any] | None = None,
) -> Path:
    """Write a plain Hugging Face checkpoint (weights, config, tokenizer) with the mask multiplied in.

    Uses the model's current weights, so a fine-tuned model bakes too (`strict=False` accepts
    weights other than the mined ones). Writes `out_dir/neurorit_mask.json` with the provenance:
    the marker of an export, and `notes` there when given (notes.to_record of the notes on the
    mask's neurons: they travel with the export; readers that do not know the field ignore it).
    Refuses an `out_dir` that is a file, and a non-empty one unless `overwrite=True` and it is an
    earlier export (never deletes anything else). The new export is
    written beside `out_dir` and swapped in (see store.atomic_dir): a crash leaves the old one.
    """
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    check_export_target(out_dir, overwrite=overwrite)
    mask.check(model, strict=strict)
    hf_model = model.original_model
    with torch.device("meta"):  # no random init of weights that are replaced right away
        plain = AutoModelForCausalLM.from_config(hf_model.config, dtype=_dtype_of(hf_model))
    wanted = set(plain.state_dict())
    weights = _plain_state_dict(mask, model, wanted)
    plain.load_state_dict(weights, strict=True, assign=True)  # shares, never writes, the model's tensors
    plain.tie_weights()
    loaded = plain.state_dict()
    differing = [k for k in sorted(wanted) if loaded[k].is_meta or not (
        loaded[k].data_ptr() == weights[k].data_ptr() or torch.equal(loaded[k], weights[k]))]
    if differing:  # e.g. a tuned lm_head that the config ties to the embeddings
        raise ArtifactError(
            f"cannot bake: the plain model cannot hold the weights {differing[:5]} as they are "
            "(tied weights that have diverged?)."
        )
    generation_config = getattr(hf_model, "generation_config", None)
    if generation_config is not None:
        plain.generation_config = copy.deepcopy(generation_config)
    with store.atomic_dir(out_dir) as tmp:
        plain.save_pretrained(tmp)
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save_pretrained(tmp)
        record = {**mask.to_json(), "baked_into": str(out_dir)}
        if notes:
            record["notes"] = notes
        store.write_json(tmp / BAKED_MASK_JSON, record)
    log.info("baked mask %s (%d neurons) into %s", mask.key(), len(mask), out_dir)
    return out_dir
