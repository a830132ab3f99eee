"""`TrainConfig`: everything one training run depends on, validated, round-tripping to a dict.

Owns: the fields of a run (method, model, data and split, training inputs, optimisation,
Neuro-RIT stages, baselines' knobs, checkpoints, evaluation), their defaults (METHOD.md's, sized
for a CPU), validation that names the field, the value and what is allowed, and the stable hash
that keys a run folder. Must not: load models or data, or run anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from neurorit.configs import DictConfig, coerce_fields, from_dict, is_int
from neurorit.errors import ConfigError
from neurorit.evaluation import EvalConfig
from neurorit.prompts import PromptConfig

METHODS = ("neuro_rit", "full", "lora", "retrobust", "random_mask", "ralm")
"""neuro_rit: stage denoise then stage distill; full / lora: fine-tuning baselines on the same
noisy data; retrobust: a mix of relevant-only, noisy and irrelevant-only inputs (LoRA or full);
random_mask: Neuro-RIT with a random mask of the same per-layer sizes; ralm: no training."""
MASKED_METHODS = ("neuro_rit", "random_mask")
DISTRACTOR_SOURCES = ("own_then_others", "own", "others")
TARGET_ALIASES = ("first", "shortest")
STAGE2_LOSSES = ("ce", "kl", "ce_kl")
SCHEDULES = ("constant", "linear", "cosine")
RETROBUST_BASES = ("lora", "full")

DEFAULT_EVAL = EvalConfig(views=("relevant", "noisy"), noise_levels=(2, 4))
"""Clean context (relevant passages only) and noisy contexts with 2 and 4 distractors."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DictConfig):
    """One training run. Paths, never tensors; see METHOD.md for where each default comes from."""

    method: str = "neuro_rit"
    # model: None = the bundled SmolLM2-135M-Instruct; weights are kept in `dtype` (float32 by
    # default: master weights for AdamW), and a GPU runs the forward under bf16 autocast.
    model: str | None = None
    device: str | None = None  # None: cuda when present, else cpu (models.pick_device)
    dtype: str = "float32"
    autocast: bool = True  # bf16 autocast on a GPU that supports it; no effect on a CPU
    threads: int | None = None  # torch.set_num_threads on a CPU (None: torch's default)

    # data: a dataset file or "demo"; split deterministically by a hash of the example id
    data: str = "demo"
    format: str | None = None
    limit: int | None = None  # first N examples of the file
    split_seed: int = 0
    dev_fraction: float = 0.1
    test_fraction: float = 0.2

    # training inputs: the noisy view with k distractors (k drawn per example and epoch from
    # n_distractors), the relevant passage at a position varied by seed and epoch
    n_distractors: tuple[int, ...] = (1, 2, 3, 4)
    distractors_from: str = "own_then_others"  # the example's irrelevant passages, then other examples'
    hard_distractors: bool = False  # BM25-closest passages of other examples instead of random ones
    target_alias: str = "first"  # METHOD.md: the first gold alias is the target
    prompt: PromptConfig = field(default_factory=PromptConfig)
    max_prompt_tokens: int = 512  # prompt + target tokens; fewer distractors when longer, else skipped

    # optimisation (CPU-sized defaults)
    max_steps: int = 40  # optimizer steps, all stages together (the same budget for every method)
    batch_size: int = 2
    grad_accum: int = 2
    lr: float | None = None  # None: 1e-4 for MLP / full fine-tuning, 2e-4 for LoRA
    weight_decay: float = 0.0
    schedule: str = "linear"
    warmup_steps: int = 2
    max_grad_norm: float | None = 1.0
    seed: int = 0

    # Neuro-RIT: the mined sets give the mask (irrelevant-exclusive) and the target layers (the
    # n_target_layers with the most relevant-exclusive neurons), unless given explicitly
    mined: str | None = None  # a MinedNeurons folder (neurorit mine)
    mask: str | None = None  # a NeuronMask folder, instead of the mined irrelevant-exclusive set
    target_layers: tuple[int, ...] | None = None
    n_target_layers: int = 3  # METHOD.md: 3 MLP blocks = 6.6 % of Llama-3-8B, the paper's share
    stage1_layers: tuple[int, ...] | None = None  # None: the MLPs of the target layers (METHOD.md)
    stage1_fraction: float = 0.5  # share of max_steps spent in stage 1 (denoise)
    stage2_loss: str = "ce"  # METHOD.md default: answer CE on noisy inputs; kl / ce_kl: distillation
    kl_weight: float = 1.0
    random_seed: int = 0  # random_mask: the seed of the random neuron set

    # LoRA (method lora, and retrobust with retrobust_base lora): every linear layer of every block
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    retrobust_base: str = "lora"
    retrobust_relevant_share: float = 0.5  # RetRobust: half relevant-only, half noisy / irrelevant

    # checkpoints and monitoring
    checkpoint_every: int = 10  # and at each stage's end; 0: at stage ends only
    keep_checkpoints: int = 2
    save_checkpoints: bool = True  # False: none at all, so no resume (benchmarks of huge models)
    dev_every: int = 10  # teacher-forced answer loss on the dev split every N steps (0: never)
    n_dev: int = 8

    # evaluation on the test split, before and after training
    eval: EvalConfig = field(default_factory=lambda: DEFAULT_EVAL)
    n_eval: int = 20
    eval_before: bool = True
    eval_after: bool = True
    bake: bool = True  # write the tuned model (mask baked in) as a plain HF checkpoint

    def __post_init__(self) -> None:
        # YAML's `lr: 1e-4` (a string) -> 1e-4, lists -> tuples; a bool where a number belongs, "abc"
        # for an int, or a scalar where a list belongs (`target_layers: 13`, not [13]) is refused
        coerce_fields(self)
        if isinstance(self.prompt, dict):
            object.__setattr__(self, "prompt", PromptConfig.from_dict(self.prompt))
        if isinstance(self.eval, dict):
            object.__setattr__(self, "eval", EvalConfig.from_dict(self.eval))
        self._validate()

    def _bad(self, name: str, allowed: str) -> ConfigError:
        return ConfigError.field("TrainConfig", name, getattr(self, name), allowed)

    def _validate(self) -> None:
        choices = {"method": METHODS, "distractors_from": DISTRACTOR_SOURCES, "target_alias": TARGET_ALIASES,
                   "stage2_loss": STAGE2_LOSSES, "schedule": SCHEDULES, "retrobust_base": RETROBUST_BASES,
                   "dtype": ("float32", "bfloat16", "float16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise self._bad(name, f"one of {list(allowed)}")
        for name in ("model", "device", "format", "mined", "mask"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise self._bad(name, "a non-empty string or None")
        if not isinstance(self.data, str) or not self.data:
            raise self._bad("data", "'demo' or a dataset file path")
        positive = ("max_steps", "batch_size", "grad_accum", "max_prompt_tokens", "n_target_layers", "lora_r",
                    "lora_alpha", "n_eval", "n_dev", "keep_checkpoints")
        for name in positive:
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise self._bad(name, "an integer >= 1")
        for name in ("warmup_steps", "checkpoint_every", "dev_every"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise self._bad(name, "an integer >= 0 (0 = never)" if name != "warmup_steps" else "an integer >= 0")
        for name in ("seed", "split_seed", "random_seed"):
            if not is_int(getattr(self, name)):
                raise self._bad(name, "an integer")
        if self.limit is not None and (not is_int(self.limit) or self.limit < 1):
            raise self._bad("limit", "an integer >= 1 or None")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise self._bad("threads", "an integer >= 1 or None")
        if self.lr is not None and (not _is_number(self.lr) or self.lr <= 0):
            raise self._bad("lr", "a finite number > 0, or None for the method's default")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise self._bad("weight_decay", "a finite number >= 0")
        if self.max_grad_norm is not None and (not _is_number(self.max_grad_norm) or self.max_grad_norm <= 0):
            raise self._bad("max_grad_norm", "a finite number > 0, or None (no clipping)")
        for name in ("dev_fraction", "test_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or not 0 <= value < 1:
                raise self._bad(name, "a number in [0, 1)")
        if self.test_fraction <= 0:
            raise self._bad("test_fraction", "a number in (0, 1): evaluation needs a test split")
        if self.dev_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"TrainConfig.dev_fraction + test_fraction = {self.dev_fraction + self.test_fraction!r} is not "
                "allowed; expected a sum below 1 so that some examples are left to train on."
            )
        if not _is_number(self.stage1_fraction) or not 0 < self.stage1_fraction < 1:
            raise self._bad("stage1_fraction", "a number in (0, 1)")
        if not _is_number(self.kl_weight) or self.kl_weight < 0:
            raise self._bad("kl_weight", "a finite number >= 0")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise self._bad("lora_dropout", "a number in [0, 1)")
        if not _is_number(self.retrobust_relevant_share) or not 0 <= self.retrobust_relevant_share <= 1:
            raise self._bad("retrobust_relevant_share", "a number in [0, 1]")
        if not self.n_distractors or any(not is_int(k) or k < 0 for k in self.n_distractors):
            raise self._bad("n_distractors", "a non-empty list of integers >= 0")
        for name in ("target_layers", "stage1_layers"):
            value = getattr(self, name)
            if value is not None and (not value or any(not is_int(l) or l < 0 for l in value)):
                raise self._bad(name, "a non-empty list of layer indices >= 0, or None")
        for name in ("autocast", "hard_distractors", "eval_before", "eval_after", "bake", "save_checkpoints"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "true or false")
        if not isinstance(self.prompt, PromptConfig):
            raise self._bad("prompt", "a PromptConfig (or its dict)")
        if not isinstance(self.eval, EvalConfig):
            raise self._bad("eval", "an EvalConfig (or its dict)")
        if self.method in MASKED_METHODS and self.mined is None and (self.mask is None or self.target_layers is None):
            raise ConfigError(
                f"TrainConfig.mined = None is not allowed for method {self.method!r}; expected a MinedNeurons "
                "folder (`neurorit mine` prints it), or both mask and target_layers."
            )

    # ---- derived values ---------------------------------------------------------------------

    @property
    def uses_lora(self) -> bool:
        return self.method == "lora" or (self.method == "retrobust" and self.retrobust_base == "lora")

    @property
    def learning_rate(self) -> float:
        """lr, or the method's default: 2e-4 with LoRA, 1e-4 for MLP / full fine-tuning."""
        if self.lr is not None:
            return float(self.lr)
        return 2e-4 if self.uses_lora else 1e-4

    @property
    def items_per_step(self) -> int:
        return self.batch_size * self.grad_accum

    def stage_steps(self) -> tuple[int, int]:
        """(stage 1, stage 2) optimizer steps of a masked method; both at least 1 when max_steps >= 2."""
        first = min(max(1, round(self.max_steps * self.stage1_fraction)), max(1, self.max_steps - 1))
        return first, self.max_steps - first

    # ---- serialisation ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if isinstance(data, dict):
            data = dict(data)  # strings such as YAML 1.1's `lr: 1e-4` are coerced in __post_init__
            if isinstance(data.get("prompt"), dict):
                data["prompt"] = PromptConfig.from_dict(data["prompt"])
            if isinstance(data.get("eval"), dict):
                data["eval"] = EvalConfig.from_dict(data["eval"])
        return from_dict(cls, data)

    def with_overrides(self, **overrides: Any) -> "TrainConfig":
        return replace(self, **overrides)

