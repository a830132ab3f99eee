"""Mining a dataset: scores for the relevant and irrelevant view of every example, then the sets.

Owns: `score_example` (one example's IG scores for one view, cached under `cache/scores/`),
`mine` (all examples, both views, aggregated into `MinedNeurons`, cached under `cache/mined/`)
and `MinedNeurons` itself (relevant set R, irrelevant set I, I \\ R, R \\ I, R & I, per-neuron
selection frequencies for stability, provenance). Must not: know hook names or draw figures.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from neurorit import store
from neurorit.attribution import AttributionConfig, NeuronScores, attribute_neurons, preview_neurons
from neurorit.configs import stable_hash
from neurorit.store import check_format_version
from neurorit.data import RagExample, examples_fingerprint
from neurorit.errors import ArtifactError, DataError, ModelMismatchError
from neurorit.models import ModelIdentity, model_identity
from neurorit.neurons import NeuronSet, SelectionRule, aggregate_selection, five_sets, selection_frequency
from neurorit.prompts import Prompt, PromptConfig, build_prompt
from neurorit.types import NeuronGrid, ProgressFn, no_progress

log = logging.getLogger(__name__)

MINED_VIEWS = ("relevant", "irrelevant")
MINED_FORMAT_VERSION = 1  # mined.json + mined.safetensors


def prompt_for(model: Any, example: RagExample, view: str, prompt_config: PromptConfig) -> Prompt:
    """The example's prompt in a view, refused when it would not fit the model's context."""
    return build_prompt(example, view, prompt_config, model.tokenizer, max_tokens=int(model.cfg.n_ctx))


def score_prompt(
    model: Any,
    prompt: Prompt,
    config: AttributionConfig,
    *,
    baseline: Prompt | None = None,
    preview: bool = False,
    identity: ModelIdentity | None = None,
    use_cache: bool = True,
    on_progress: ProgressFn = no_progress,
) -> NeuronScores:
    """IG (or the one-gradient preview) of one prompt, read from the cache when it was done before."""
    identity = identity or model_identity(model)
    key = stable_hash(
        identity.fingerprint, config.key(), prompt.token_ids, prompt.answer_ids,
        baseline.token_ids if baseline and config.baseline == "no_context" else None, preview,
    )
    cached = store.load_cached("scores", key, "scores.json", NeuronScores.load) if use_cache else None
    if cached is not None:
        return cached
    run = preview_neurons if preview else attribute_neurons
    kwargs: dict[str, Any] = {} if preview else {"on_progress": on_progress}
    scores = run(
        model, prompt.token_ids, prompt.answer_ids, config,
        baseline_ids=baseline.token_ids if baseline else None,
        example_id=prompt.example_id, view=prompt.view, **kwargs,
    )
    if use_cache:
        store.save_cached("scores", key, scores.save)
    return scores


def score_example(
    model: Any,
    example: RagExample,
    view: str,
    config: AttributionConfig,
    prompt_config: PromptConfig,
    *,
    preview: bool = False,
    use_cache: bool = True,
    identity: ModelIdentity | None = None,
    on_progress: ProgressFn = no_progress,
) -> NeuronScores:
    """One example's neuron scores in one view (relevant, irrelevant, noisy or closed_book)."""
    prompt = prompt_for(model, example, view, prompt_config)
    baseline = prompt_for(model, example, "closed_book", prompt_config) if config.baseline == "no_context" else None
    return score_prompt(
        model, prompt, config, baseline=baseline, preview=preview, identity=identity,
        use_cache=use_cache, on_progress=on_progress,
    )


@dataclass(frozen=True, eq=False)
class MinedNeurons:
    """The neuron sets mined on a dataset, with how often each neuron was selected."""

    relevant: NeuronSet
    irrelevant: NeuronSet
    relevant_frequency: NeuronGrid  # fraction of examples whose relevant view selected the neuron
    irrelevant_frequency: NeuronGrid
    relevant_mean: NeuronGrid  # mean IG score over examples
    irrelevant_mean: NeuronGrid
    example_ids: tuple[str, ...]
    model: ModelIdentity
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def irrelevant_exclusive(self) -> NeuronSet:
        return self.named_sets()["irrelevant-exclusive"]

    @property
    def relevant_exclusive(self) -> NeuronSet:
        return self.named_sets()["relevant-exclusive"]

    @property
    def shared(self) -> NeuronSet:
        return self.named_sets()["shared"]

    def named_sets(self) -> dict[str, NeuronSet]:
        """The five sets (neurons.SET_NAMES) of the relevant / irrelevant pair."""
        return five_sets(self.relevant, self.irrelevant)

    def counts_per_layer(self) -> dict[str, list[int]]:
        return {name: s.counts_per_layer() for name, s in self.named_sets().items()}

    def summary(self) -> str:
        sizes = ", ".join(f"{name} {len(s)}" for name, s in self.named_sets().items())
        return f"{len(self.example_ids)} examples on {self.model.describe()}: {sizes}"

    def key(self) -> str:
        return stable_hash(self.provenance)

    def save(self, folder: Path) -> Path:
        store.write_tensors(
            folder / "mined.safetensors",
            {"relevant": self.relevant.grid.to(torch.uint8), "irrelevant": self.irrelevant.grid.to(torch.uint8),
             "relevant_frequency": self.relevant_frequency.float(),
             "irrelevant_frequency": self.irrelevant_frequency.float(),
             "relevant_mean": self.relevant_mean.float(), "irrelevant_mean": self.irrelevant_mean.float()},
        )
        store.write_json(
            folder / "mined.json",
            {"format_version": MINED_FORMAT_VERSION, "kind": "mined_neurons",
             "example_ids": list(self.example_ids), "model": dataclasses.asdict(self.model),
             "provenance": self.provenance, "counts_per_layer": self.counts_per_layer()},
        )
        return folder

    @classmethod
    def load(cls, folder: Path, model: Any | None = None) -> "MinedNeurons":
        folder = Path(folder)
        tensors = store.read_tensors(folder / "mined.safetensors")
        meta = store.read_json(folder / "mined.json")
        check_format_version(meta, MINED_FORMAT_VERSION, folder / "mined.json")
        try:
            mined = cls(
                relevant=NeuronSet(tensors["relevant"].bool(), "relevant"),
                irrelevant=NeuronSet(tensors["irrelevant"].bool(), "irrelevant"),
                relevant_frequency=tensors["relevant_frequency"],
                irrelevant_frequency=tensors["irrelevant_frequency"],
                relevant_mean=tensors["relevant_mean"], irrelevant_mean=tensors["irrelevant_mean"],
                example_ids=tuple(meta["example_ids"]), model=ModelIdentity(**meta["model"]),
                provenance=meta["provenance"],
            )
        except (KeyError, TypeError) as exc:
            raise ArtifactError(f"{folder} is not a complete mined-neurons artifact ({exc}).") from None
        if model is not None:
            ident = model_identity(model)
            if (ident.n_layers, ident.d_mlp) != (mined.model.n_layers, mined.model.d_mlp):
                raise ModelMismatchError(
                    f"mined sets are {mined.model.n_layers} layers x {mined.model.d_mlp} neurons, the model "
                    f"is {ident.n_layers} x {ident.d_mlp}: mined on another model ({mined.model.name})?"
                )
        return mined


def reselect(
    scores: dict[str, Sequence[NeuronScores]], rule: SelectionRule, model: ModelIdentity,
    provenance: dict[str, Any],
) -> MinedNeurons:
    """Sets from per-example scores of both views under a selection rule (cheap: no model run)."""
    grids = {view: [s.scores for s in scores[view]] for view in MINED_VIEWS}
    freq = {view: selection_frequency(grids[view], rule) for view in MINED_VIEWS}
    ids = tuple(s.example_id for s in scores["relevant"])
    mean = {view: torch.stack(grids[view]).mean(0) for view in MINED_VIEWS}
    return MinedNeurons(
        relevant=NeuronSet(aggregate_selection(freq["relevant"], mean["relevant"], rule), "relevant"),
        irrelevant=NeuronSet(aggregate_selection(freq["irrelevant"], mean["irrelevant"], rule), "irrelevant"),
        relevant_frequency=freq["relevant"], irrelevant_frequency=freq["irrelevant"],
        relevant_mean=mean["relevant"], irrelevant_mean=mean["irrelevant"],
        example_ids=ids, model=model, provenance={**provenance, "selection": rule.to_dict()},
    )


def mine(
    model: Any,
    examples: Sequence[RagExample],
    config: AttributionConfig,
    rule: SelectionRule,
    prompt_config: PromptConfig,
    *,
    irrelevant_target: str | None = None,
    preview: bool = False,
    use_cache: bool = True,
    on_progress: ProgressFn = no_progress,
) -> MinedNeurons:
    """Score every example in the relevant and the irrelevant view and select the sets.

    Examples lacking a view (no relevant or no irrelevant passage) are skipped with a warning.
    irrelevant_target: the target on irrelevant inputs ("own_answer" mines the neurons carrying
    the model's distracted answer); None = the same as config.target.
    """
    if not examples:
        raise DataError("mine() got no examples; give it at least one example with passages.")
    identity = model_identity(model)
    irr_config = dataclasses.replace(config, target=irrelevant_target) if irrelevant_target else config
    provenance = {
        "model": dataclasses.asdict(identity), "mining": config.to_dict(), "mining_key": config.key(),
        "irrelevant_target": irr_config.target, "prompt": prompt_config.to_dict(),
        "data": examples_fingerprint(examples), "n_examples_given": len(examples), "preview": preview,
    }
    key = stable_hash(provenance, rule.to_dict())
    cached = store.load_cached("mined", key, "mined.json", MinedNeurons.load) if use_cache else None
    if cached is not None:
        return cached
    scores: dict[str, list[NeuronScores]] = {view: [] for view in MINED_VIEWS}
    skipped: list[str] = []
    gaps: list[float] = []
    total = len(examples)
    for done, example in enumerate(examples):
        try:
            pair = {
                view: score_example(
                    model, example, view, irr_config if view == "irrelevant" else config, prompt_config,
                    preview=preview, use_cache=use_cache, identity=identity,
                )
                for view in MINED_VIEWS
            }
        except DataError as exc:
            log.warning("skipping example %s: %s", example.id, exc)
            skipped.append(example.id)
        else:
            for view, s in pair.items():
                scores[view].append(s)
                if s.method == "ig":
                    gaps.append(s.max_relative_gap())
        on_progress(done + 1, total, f"mined {example.id}")
    if not scores["relevant"]:
        raise DataError(
            f"none of the {total} examples has both a relevant and an irrelevant passage; "
            "add distractors (prompts.add_distractors) or flag passages."
        )
    provenance.update(
        cache_key=key, skipped=skipped, n_examples=len(scores["relevant"]),
        max_relative_gap=max(gaps) if gaps else None,
        median_relative_gap=float(torch.tensor(gaps).median()) if gaps else None,
    )
    mined = reselect(scores, rule, identity, provenance)
    if use_cache:
        store.save_cached("mined", key, mined.save)
    return mined


def mined_dir(mined: MinedNeurons) -> Path:
    """Where this mining result lives in the cache."""
    return store.artifact_dir("mined", str(mined.provenance.get("cache_key", mined.key())))
