"""Which parameters train, under which mask and loss, for each method: the run's plan.

Owns: the mask of a masked method (the mined irrelevant-exclusive set, a saved mask, or its
random-like control), the target layers (the k layers with the most relevant-exclusive neurons,
or a list), the stages of each method (`Plan`, `Stage`), selecting a stage's trainable
parameters by their Hugging Face names, and LoRA through peft (injected into the bridge's own
linear layers, merged back before baking). Module paths come from the sites table's output
projection name (`neuron_site`), never spelled here. Must not: run the training loop or read
the dataset.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from neurorit.errors import ConfigError, ModelMismatchError
from neurorit.masks import NeuronMask
from neurorit.mining import MinedNeurons
from neurorit.models import model_identity, neuron_site
from neurorit.sites import BRIDGE_WRAPPER
from neurorit.training.config import MASKED_METHODS, TrainConfig

log = logging.getLogger(__name__)

_LORA_ADAPTER = "default"


@dataclass(frozen=True)
class Stage:
    """One training stage: what trains (the MLPs of some layers, everything, or LoRA) and the loss."""

    name: str  # denoise, distill, finetune
    steps: int
    trainable: str  # "mlp" (of `layers`), "all", "lora"
    layers: tuple[int, ...] = ()
    loss: str = "ce"  # ce, kl, ce_kl
    views: str = "noisy"  # noisy, or "mix" (RetRobust: relevant / noisy / irrelevant)


@dataclass(frozen=True, eq=False)
class Plan:
    """A method's stages, its mask (None: no mask) and its target layers."""

    method: str
    stages: tuple[Stage, ...]
    mask: NeuronMask | None = None
    target_layers: tuple[int, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method, "stages": [asdict(s) for s in self.stages],
            "target_layers": list(self.target_layers),
            "mask": None if self.mask is None else {
                "key": self.mask.key(), "n_neurons": len(self.mask), "counts_per_layer": self.mask.counts_per_layer(),
                "provenance": self.mask.provenance},
        }


# ---- mask and target layers ---------------------------------------------------------------------


def top_layers(counts: list[int], k: int) -> tuple[int, ...]:
    """The k layers with the largest counts (ties: the lower layer), in layer order."""
    ranked = sorted(range(len(counts)), key=lambda layer: (-counts[layer], layer))
    return tuple(sorted(ranked[:k]))


def load_mined(config: TrainConfig, model: Any) -> MinedNeurons | None:
    """The MinedNeurons artifact of the config, refused when mined on another model."""
    if config.mined is None:
        return None
    mined = MinedNeurons.load(Path(config.mined), model)  # shape mismatch: ModelMismatchError
    ident = model_identity(model)
    if mined.model.fingerprint != ident.fingerprint:
        raise ModelMismatchError(
            f"the mined sets in {config.mined} were mined on weights {mined.model.fingerprint} of "
            f"{mined.model.name}, the model to train has weights {ident.fingerprint} ({ident.name}): mined on "
            "another model? Mine the neurons again on this model."
        )
    return mined


def mask_and_layers(config: TrainConfig, model: Any) -> tuple[NeuronMask | None, tuple[int, ...]]:
    """The run's mask (checked strictly against the untrained model) and its target layers."""
    n_layers = int(model.cfg.n_layers)
    mined = load_mined(config, model)
    layers = config.target_layers
    if layers is None and mined is not None:
        counts = mined.relevant_exclusive.counts_per_layer()
        if not any(counts):
            log.warning("the mined relevant-exclusive set is empty: target layers by irrelevant-exclusive counts")
            counts = mined.irrelevant_exclusive.counts_per_layer()
        layers = top_layers(counts, min(config.n_target_layers, n_layers))
    if layers is not None:
        bad = [l for l in layers if l >= n_layers]
        if bad:
            raise ConfigError.field("TrainConfig", "target_layers", config.target_layers,
                                    f"layer indices below the model's {n_layers} layers (got {bad})")
    for name in ("stage1_layers",):
        value = getattr(config, name)
        if value is not None and any(l >= n_layers for l in value):
            raise ConfigError.field("TrainConfig", name, value, f"layer indices below the model's {n_layers} layers")
    if config.method not in MASKED_METHODS:
        return None, tuple(layers or ())
    if config.mask is not None:
        mask = NeuronMask.load(Path(config.mask), model, strict=True)  # another model: ModelMismatchError
    else:
        assert mined is not None  # TrainConfig refuses a masked method without mined or mask
        mask = NeuronMask.from_mined(mined, "irrelevant-exclusive")
        mask.check(model, strict=True)
    if config.method == "random_mask":
        mask = mask.random_control(config.random_seed)  # random_like: the same count in every layer
    assert layers is not None
    return mask, tuple(layers)


def plan_for(config: TrainConfig, model: Any) -> Plan:
    """The stages of the config's method on this model."""
    mask, layers = mask_and_layers(config, model)
    method = config.method
    if method == "ralm":
        return Plan(method, (), None, layers)
    if method in MASKED_METHODS:
        first, second = config.stage_steps()
        stage1 = tuple(config.stage1_layers) if config.stage1_layers is not None else layers
        stages = [Stage("denoise", first, "mlp", stage1, "ce")]
        if second:
            stages.append(Stage("distill", second, "mlp", layers, config.stage2_loss))
        return Plan(method, tuple(stages), mask, layers)
    if method == "full":
        return Plan(method, (Stage("finetune", config.max_steps, "all"),), None, layers)
    if method == "lora":
        return Plan(method, (Stage("finetune", config.max_steps, "lora"),), None, layers)
    if method == "retrobust":
        kind = "lora" if config.retrobust_base == "lora" else "all"
        return Plan(method, (Stage("finetune", config.max_steps, kind, (), "ce", "mix"),), None, layers)
    raise ConfigError.field("TrainConfig", "method", method, "a known method")  # validated before: unreachable


# ---- parameters by Hugging Face name ------------------------------------------------------------


def hf_name(name: str) -> str:
    """A bridge parameter or module name without the bridge's wrapper segments."""
    return name.replace(BRIDGE_WRAPPER, "")


def named_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    """Every distinct parameter of the model under its Hugging Face name."""
    return {hf_name(n): p for n, p in model.named_parameters()}


def _module_path(model: Any, layer: int) -> str:
    """The output projection's module path in layer `layer` (its weight name without `.weight`)."""
    name = neuron_site(model).down_proj_name(layer)
    return name.rsplit(".", 1)[0]


def mlp_prefix(model: Any, layer: int) -> str:
    """The MLP module of a layer: the parent of its output projection, e.g. `model.layers.3.mlp.`."""
    return _module_path(model, layer).rsplit(".", 1)[0] + "."


def block_prefix(model: Any, layer: int) -> str:
    """The whole block of a layer, e.g. `model.layers.3.` (from the sites table's template)."""
    template = neuron_site(model).down_proj
    return template[: template.index("{layer}")] + f"{layer}."


def stage_parameter_names(model: Any, stage: Stage) -> list[str]:
    """The names of the parameters a stage trains, sorted (the optimizer's order)."""
    params = named_parameters(model)
    if stage.trainable == "all":
        return sorted(params)
    if stage.trainable == "lora":
        names = sorted(n for n in params if ".lora_" in n)
        if not names:
            raise ConfigError("stage trains LoRA but the model has no LoRA parameter; inject_lora first.")
        return names
    prefixes = tuple(mlp_prefix(model, layer) for layer in stage.layers)
    names = sorted(n for n in params if n.startswith(prefixes))
    if not names:
        raise ConfigError(f"stage {stage.name}: no parameter under {list(prefixes)}; expected the MLP weights there.")
    return names


def set_trainable(model: Any, names: list[str]) -> list[torch.nn.Parameter]:
    """requires_grad on exactly the named parameters; returns them in the given order."""
    params = named_parameters(model)
    chosen = set(names)
    for name, param in params.items():
        param.requires_grad_(name in chosen)
    return [params[n] for n in names]


def count_parameters(model: Any, *, exclude_lora: bool = True) -> int:
    return sum(p.numel() for n, p in named_parameters(model).items() if not (exclude_lora and ".lora_" in n))


# ---- LoRA ---------------------------------------------------------------------------------------


def lora_targets(model: Any) -> list[str]:
    """Bridge-relative names of every linear layer inside the transformer blocks."""
    from transformers.pytorch_utils import Conv1D

    prefixes = tuple(block_prefix(model, layer) for layer in range(int(model.cfg.n_layers)))
    return [
        name for name, module in model.original_model.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and hf_name(name).startswith(prefixes)
    ]


def inject_lora(model: Any, config: TrainConfig) -> int:
    """Add LoRA adapters (peft) to every block's linear layers, in place; returns their count.

    The adapters sit inside the bridge's wrappers, so hooks and masks still see every neuron.
    Their initialisation draws from torch's generator: seed it first for a reproducible run.
    """
    import peft

    targets = lora_targets(model)
    lora_config = peft.LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                  target_modules=targets, bias="none")
    peft.inject_adapter_in_model(lora_config, model.original_model, adapter_name=_LORA_ADAPTER)
    return len(targets)


def merge_lora(model: Any) -> int:
    """Fold every LoRA adapter into its base weight and put the base layer back; returns the count."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.original_model.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.original_model.get_submodule(parent_name) if parent_name else model.original_model
        setattr(parent, child, module.get_base_layer())
        merged += 1
    return merged
