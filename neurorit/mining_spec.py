"""Everything one mining run is told, as one spec: model, examples, prompts, attribution, selection.

Owns: `AttributionConfig` (how one prompt's neurons are attributed), `SelectionRule` (which neurons
an example selects and how many examples must agree), and `MiningSpec`, which holds both with the
model, the examples and the prompt settings, reads and writes YAML (the layout of `neurorit mine
--config`), validates, runs (`run`) and submits itself as a background job (`submit`). Every
field is described once here (`flags.about`): the CLI's flags and the workbench's forms are built
from these descriptions, so adding an option is adding a field and the code that uses it.
Must not: import torch at module level (the CLI derives its flags from this module at start-up),
or compute anything: attribution.py, neurons.py and mining.py do.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from neurorit.configs import DictConfig, coerce_fields, from_dict, load_yaml, stable_hash, to_dict
from neurorit.errors import ConfigError
from neurorit.flags import about
from neurorit.prompts import PromptConfig

Baseline = Literal["zero", "no_context"]
Positions = Literal["last", "all"]
Target = Literal["answer", "first_token", "own_answer"]
Quadrature = Literal["midpoint", "gauss_legendre"]
SelectionMode = Literal["relative", "top_k", "count"]
SELECTION_MODES = ("relative", "top_k", "count")


# ---- attribution --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AttributionConfig(DictConfig):
    """How one prompt's neurons are attributed by Integrated Gradients (METHOD.md defaults)."""

    layers: tuple[int, ...] | None = field(default=None, metadata=about(
        "layers to attribute, e.g. '0-29' or '3,7' (default: all)", label="Layers"))
    # IRCAN's closed-book activation: attributes what the passages change, and keeps the
    # completeness gap under 1 % on every layer of the bundled model with m = 20; "zero" (Knowledge
    # Neurons) makes layer 0's path too sharp for 20 midpoint steps (see README, bench numbers).
    baseline: Baseline = field(default="no_context", metadata=about(
        "no_context: the question's closed-book activation (IRCAN; the default, completeness < 1 % at m = 20 on "
        "every layer of the bundled model); zero: Knowledge Neurons (layer 0 then needs more steps). 'all' "
        "positions need 'zero'.", label="Baseline"))
    positions: Positions = field(default="last", metadata=about(
        "attribute the last prompt token (Knowledge Neurons, IRCAN) or every prompt position", label="Positions"))
    target: Target = field(default="answer", metadata=about(
        "gold answer log-prob (all tokens, teacher-forced), its first token only, or the model's own greedy answer",
        label="Target f"))
    n_steps: int = field(default=20, metadata=about(
        "IG quadrature points m (METHOD.md: 20); fewer is faster, less exact", label="IG steps (m)", lo=1, hi=256,
        step=1))
    quadrature: Quadrature = field(default="midpoint", metadata=about(
        "quadrature rule of the path integral", label="Quadrature"))
    max_rows_per_pass: int = field(default=64, metadata=about(
        "copies folded into one pass (bounds memory; does not change the scores)", form=False))
    own_answer_max_tokens: int = field(default=8, metadata=about(
        "target own_answer: greedy tokens generated as the target", form=False))
    refine_gap: float | None = field(default=None, metadata=about(
        "re-integrate layers whose relative completeness gap exceeds this fraction with twice the steps",
        form=False))
    max_steps: int = field(default=320, metadata=about("ceiling of the steps refinement may reach", form=False))

    def __post_init__(self) -> None:
        coerce_fields(self)  # "64" -> 64; a bool, "abc" or a scalar for `layers` is refused
        name = type(self).__name__
        for field_name, allowed in (("baseline", Baseline), ("positions", Positions), ("target", Target),
                                    ("quadrature", Quadrature)):
            choices = allowed.__args__  # type: ignore[attr-defined]
            if getattr(self, field_name) not in choices:
                raise ConfigError.field(name, field_name, getattr(self, field_name),
                                        " or ".join(", ".join(repr(c) for c in choices).rsplit(", ", 1)))
        for field_name in ("n_steps", "max_rows_per_pass", "own_answer_max_tokens"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError.field(name, field_name, value, "an integer >= 1")
        if self.refine_gap is not None and not self.refine_gap > 0:
            raise ConfigError.field(name, "refine_gap", self.refine_gap, "None or a positive fraction")
        if self.max_steps < self.n_steps:
            raise ConfigError.field(name, "max_steps", self.max_steps, f"an integer >= n_steps ({self.n_steps})")
        if self.layers is not None:
            if not self.layers or any((not isinstance(l, int)) or l < 0 for l in self.layers):
                raise ConfigError.field(name, "layers", self.layers, "None or non-empty layer indices >= 0")
            object.__setattr__(self, "layers", tuple(sorted(set(self.layers))))
        if self.baseline == "no_context" and self.positions == "all":
            raise ConfigError(
                f"{name}: baseline 'no_context' pairs one closed-book activation with the last prompt token; "
                "positions='all' needs baseline='zero'."
            )

    def key(self) -> str:
        """Hash of the fields that change the scores (not the batching knob)."""
        d = self.to_dict()
        d.pop("max_rows_per_pass")
        return stable_hash(d)


# ---- selection ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SelectionRule(DictConfig):
    """Which neurons an example selects, and how many examples must agree.

    mode "relative": keep neurons with score >= threshold x the example's maximum score
    (Knowledge Neurons / IRCAN use 0.2). mode "top_k": keep the k highest-scoring neurons.
    support: keep neurons selected in at least this fraction of the examples (METHOD.md: 0.5).
    mode "count" (the recipe of the authors' lab, IRCAN / SCoNE code): each example selects its
    `per_example` highest neurons with a positive score; across examples keep the `keep` (h)
    neurons selected most often (ties: the higher mean score, then the lower layer and index);
    `support` is not used.
    """

    mode: SelectionMode = field(default="relative", metadata=about(  # METHOD.md default
        "relative: score >= threshold x the example's top score; top_k: the k highest; count (IRCAN / SCoNE): each "
        "example's per_example highest, the keep most frequent across examples", label="Selection", widget="radio"))
    threshold: float = field(default=0.2, metadata=about(  # Knowledge Neurons' relative threshold
        "relative threshold", label="Relative threshold", lo=0.01, hi=1.0, step=0.01, widget="slider",
        when={"mode": ("relative",)}))
    top_k: int = field(default=100, metadata=about(
        "neurons an example keeps in mode top_k", label="Top k", lo=1, hi=100_000, step=10,
        when={"mode": ("top_k",)}))
    support: float = field(default=0.5, metadata=about(  # METHOD.md: selected in >= half of the examples
        "fraction of examples that must select a neuron (relative, top_k)", label="Support (fraction of examples)",
        lo=0.05, hi=1.0, step=0.05, widget="slider", when={"mode": ("relative", "top_k")}, across_examples=True))
    use_abs: bool = field(default=False, metadata=about(
        "rank neurons by |score| instead of signed score", label="Rank by |score|"))
    scope: Literal["example", "layer"] = field(default="example", metadata=about(
        "one threshold (or top-k) over the whole example (default) or one per layer: per layer keeps the other "
        "layers visible when a few layers (e.g. layer 0 against a zero baseline) dwarf the rest", label="Scope",
        widget="radio", labels={"example": "whole example", "layer": "each layer"}))
    per_example: int = field(default=50, metadata=about(  # SCoNE's top 50 by positive attribution per example
        "mode count: the neurons with the highest positive score each example votes for",
        label="Per example (count)", lo=1, hi=100_000, step=10, when={"mode": ("count",)}))
    keep: int = field(default=20, metadata=about(  # h; IRCAN sweeps 1-16, 20 keeps sizes near the relative rule's
        "mode count: h, the neurons kept, most often voted for first", label="Keep h (count)", lo=1, hi=100_000,
        step=1, when={"mode": ("count",)}, across_examples=True))
    max_per_layer: int | None = field(default=None, metadata=about(
        "keep at most this many neurons per layer, the most often selected first (ties: the higher mean score): no "
        "single layer fills the set; empty = no cap", label="At most per layer", lo=1, hi=100_000, step=1,
        labels={None: "no cap"}, omit_default=True, across_examples=True))

    def __post_init__(self) -> None:
        coerce_fields(self)  # YAML's `threshold: 2e-1` (a string) -> 0.2; a bool is not a number
        if self.mode not in SELECTION_MODES:
            raise ConfigError.field("SelectionRule", "mode", self.mode, "'relative', 'top_k' or 'count'")
        for name in ("per_example", "keep"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError.field("SelectionRule", name, value, "an integer >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError.field("SelectionRule", "threshold", self.threshold, "a number in (0, 1]")
        if self.top_k < 1:
            raise ConfigError.field("SelectionRule", "top_k", self.top_k, "an integer >= 1")
        if self.scope not in ("example", "layer"):
            raise ConfigError.field("SelectionRule", "scope", self.scope, "'example' or 'layer'")
        if not 0.0 < self.support <= 1.0:
            raise ConfigError.field("SelectionRule", "support", self.support, "a fraction in (0, 1]")
        if self.max_per_layer is not None and self.max_per_layer < 1:
            raise ConfigError.field("SelectionRule", "max_per_layer", self.max_per_layer, "None or an integer >= 1")

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        if self.mode != "count" and (self.per_example, self.keep) == (50, 20):
            del out["per_example"], out["keep"]  # unused: rules (and mined cache keys) from before "count" stay the same
        return out


# ---- the spec -----------------------------------------------------------------------------------


COUNTS = {"limit": (1, "the first N examples"), "offset": (0, "the examples skipped first"),
          "add_distractors": (0, "irrelevant passages added to each example")}
"""The spec's counts of examples: the least value allowed, and what they count."""

SECTIONS = {"prompt": PromptConfig, "mining": AttributionConfig, "selection": SelectionRule}
"""The spec's nested configs by their YAML section (`mining:` holds the attribution settings)."""


def check_count(value: Any, key: str, shown: str) -> int:
    """A count (COUNTS) as an int, or ConfigError naming `shown` (a flag or a file's key) and the value.

    "3" is read as 3; a bool, "abc" or a value below the least (a negative limit would silently
    count from the end) is refused.
    """
    from neurorit.configs import coerce_value

    least, meaning = COUNTS[key]
    try:
        number = coerce_value("config", key, value, int)
    except ConfigError:
        number = None
    if number is None or number < least:
        why = "; a negative count is never taken from the end" if number is not None and number < 0 else ""
        raise ConfigError(f"{shown} is not allowed; expected an integer >= {least} ({meaning}){why}.")
    return number


STRINGS = ("model", "data", "format", "device", "dtype")
"""The spec's top-level names: each None or a non-empty string."""


def _checked_top(values: dict[str, Any], where: str) -> dict[str, Any]:
    """The spec's top-level strings and counts checked (counts as ints); a refusal names `where`."""
    out = dict(values)
    for key, value in values.items():
        if value is None:
            continue
        if key in STRINGS and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}: {key} = {value!r} is not allowed; expected a non-empty string.")
        if key in COUNTS:
            out[key] = check_count(value, key, f"{where}: {key} = {value!r}")
    return out


@dataclass(frozen=True, kw_only=True)
class MiningSpec:
    """One mining run: which model, which examples, how prompts are built and neurons attributed and selected.

    Its YAML is the layout `neurorit mine --config` reads: top-level model / data keys, and the
    sections `prompt`, `mining` (AttributionConfig) and `selection`.
    """

    model: str | None = None  # the bundled model (None), a local HF folder or a hub name already cached
    device: str | None = None  # cpu, cuda, cuda:1 ... (None: cuda when present)
    dtype: str | None = None  # float32, bfloat16, float16 (None: bf16 on a GPU, else float32)
    data: str = "demo"  # 'demo' or a dataset file
    format: str | None = None  # dataset format (None: detected)
    limit: int | None = None
    offset: int | None = None
    add_distractors: int | None = None
    hard: bool = False  # with add_distractors: the BM25-closest passages
    seed: int | None = None  # distractor draw; the prompt's seed is prompt.seed
    prompt: PromptConfig = field(default_factory=PromptConfig)
    mining: AttributionConfig = field(default_factory=AttributionConfig)
    selection: SelectionRule = field(default_factory=SelectionRule)
    irrelevant_target: Target | None = field(default=None, metadata=about(
        "target on irrelevant inputs (default: the same as --target); own_answer mines the neurons carrying the "
        "model's distracted answer", label="Target on irrelevant inputs", labels={None: "same as the target"}))
    preview: bool = field(default=False, metadata=about(
        "one-gradient (AtP) estimate instead of IG (fast, approximate)", label="Preview instead of IG"))
    use_cache: bool = field(default=True, metadata=about("recompute scores even when cached", flag="--no-cache",
                                                         form=False))

    def __post_init__(self) -> None:
        coerce_fields(self)
        for key, cls in SECTIONS.items():
            value = getattr(self, key)
            if value is None:
                object.__setattr__(self, key, cls())
            elif not isinstance(value, cls):
                raise ConfigError.field("MiningSpec", key, value, f"a mapping of {cls.__name__} fields")
        for key, value in _checked_top({k: getattr(self, k) for k in (*STRINGS, *COUNTS)}, "MiningSpec").items():
            object.__setattr__(self, key, value)
        if self.irrelevant_target not in (None, "answer", "first_token", "own_answer"):
            raise ConfigError.field("MiningSpec", "irrelevant_target", self.irrelevant_target,
                                    "None, 'answer', 'first_token' or 'own_answer'")

    # ---- reading and writing --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out["selection"] = self.selection.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "MiningSpec") -> "MiningSpec":
        """A spec from the YAML layout; unknown keys are refused with the known ones, naming `where`."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}.")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys are {known}.")
        data = {**data, **_checked_top({k: v for k, v in data.items() if k in (*STRINGS, *COUNTS)}, where)}
        for key, section in SECTIONS.items():
            value = data.get(key)
            if value is None:
                data.pop(key, None)
            elif isinstance(value, dict):
                data[key] = section.from_dict(value)
            elif not isinstance(value, section):
                raise ConfigError(f"config section {key!r} must be a mapping, got {type(value).__name__}.")
        if data.get("data") is None:
            data.pop("data", None)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "MiningSpec":
        return cls.from_dict(load_yaml(path), where=f"config file {path}")

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_sources(cls, file_data: dict[str, Any], overrides: dict[str, Any], *,
                     where: str = "MiningSpec") -> "MiningSpec":
        """A spec from a config file's mapping with the command line's values on top.

        overrides: top-level keys, and the sections' fields under their section's name
        (`{"mining": {"n_steps": 8}}`); None values are ignored. With positions 'all' and no baseline
        given anywhere, the baseline is 'zero' (the only one defined for every position).
        """
        data = {k: v for k, v in file_data.items()}
        for key, value in overrides.items():
            if key in SECTIONS:
                section = file_data.get(key) or {}
                if not isinstance(section, dict):
                    raise ConfigError(f"config section {key!r} must be a mapping, got {type(section).__name__}.")
                data[key] = {**section, **{k: v for k, v in value.items() if v is not None}}
            elif value is not None:
                data[key] = value
        mining = data.get("mining") or {}
        if isinstance(mining, dict) and mining.get("positions") == "all" and "baseline" not in mining:
            data["mining"] = {**mining, "baseline": "zero"}
        return cls.from_dict(data, where=where)

    def key(self) -> str:
        return stable_hash(self.to_dict())

    # ---- running --------------------------------------------------------------------------------

    def model_name(self) -> str | None:
        return self.model or os.environ.get("NEURORIT_MODEL")

    def examples(self) -> list[Any]:
        """The examples the spec chooses (data, offset, limit, distractors added)."""
        from neurorit.data import choose_examples
        from neurorit.prompts import add_distractors

        examples = choose_examples(self.data, self.format, offset=self.offset, limit=self.limit)
        if self.add_distractors:
            examples = add_distractors(examples, self.add_distractors, seed=self.seed, hard=self.hard)
        return examples

    def run(self, *, model: Any = None, examples: Any = None, on_progress: Any = None) -> tuple[Any, Path]:
        """Mine (scores and sets are cached); returns the MinedNeurons and the folder they are kept in."""
        from neurorit.mining import mine, mined_dir
        from neurorit.models import load_model
        from neurorit.store import atomic_dir

        examples = self.examples() if examples is None else examples
        if model is None:
            model = load_model(self.model_name(), device=self.device or os.environ.get("NEURORIT_DEVICE"),
                               dtype=self.dtype)
        kwargs = {"on_progress": on_progress} if on_progress is not None else {}
        mined = mine(model, examples, self.mining, self.selection, self.prompt,
                     irrelevant_target=self.irrelevant_target, preview=self.preview, use_cache=self.use_cache,
                     **kwargs)
        folder = mined_dir(mined)
        if not folder.is_dir():  # use_cache=False: still keep the result
            with atomic_dir(folder) as tmp:
                mined.save(tmp)
        return mined, folder

    def submit(self) -> Any:
        """Write the spec under `cache/job-inputs/<key>/mining.yaml` and queue `neurorit mine` on it.

        A relative data file or model folder is written as an absolute path (the job may run elsewhere).
        """
        from neurorit import jobs, store

        where = {key: str(Path(value).resolve()) for key in ("data", "model")
                 if (value := getattr(self, key)) and Path(value).exists() and str(Path(value).resolve()) != value}
        if where:
            return dataclasses.replace(self, **where).submit()
        jobs.check_table()  # a corrupt job table is refused before anything is written
        folder = store.artifact_dir("job-inputs", self.key())
        path = folder / "mining.yaml"
        if not path.is_file():
            with store.atomic_dir(folder) as tmp:
                (tmp / "mining.yaml").write_text(self.to_yaml())
        return jobs.submit("mine", ["mine", "--config", str(path), "--quiet"])
