"""The training loop every method shares: stages, AdamW, checkpoints, resume, evaluation, bake.

Owns: `train` (a config, loads the model and data: the edge), `resume` (a run folder),
`run_training` (a given model and examples: tests and notebooks), the answer-token loss (cross
entropy, or KL to the frozen model given the relevant-only view), one optimizer step with
gradient accumulation, the run folder (config.json, status.json, metrics.jsonl, checkpoints/,
eval_before.json, eval_after.json, report.json, final/), stopping on a non-finite loss, and
the bake of the tuned model (mask multiplied in) into a plain Hugging Face checkpoint.

Exactness of resume: the inputs of step s are a pure function of the config and s
(data.items_for_step), torch's generator is reseeded from (seed, s) before every step, and a
checkpoint holds the trained weights, AdamW's moments, the scheduler and the RNG state; so on a
CPU a resumed run equals an uninterrupted one bit for bit. The mask is applied through
NeuronMask.applied for the whole training (entered while the weights are still the mined ones,
so its strict check holds) and for evaluation. Under a data-parallel launch (world.py) every
rank runs this loop on its share of each step's micro-batches; rank 0 alone writes the folder,
evaluates and bakes. Must not: spell hook names or module paths
(methods.py asks the sites table), or print.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from neurorit import store
from neurorit.data import RagExample
from neurorit.errors import ArtifactError, ConfigError, NeuroritError
from neurorit.evaluation import EvalReport, evaluate
from neurorit.masks import NeuronMask, bake
from neurorit.models import model_identity, pick_device, pick_dtype
from neurorit.training import checkpoints as ckpt
from neurorit.training.config import TrainConfig
from neurorit.training.data import TrainData, TrainItem, dev_items, end_of_turn_ids, items_for_step, prepare_data
from neurorit.training.methods import (
    Stage, count_parameters, inject_lora, merge_lora, named_parameters, plan_for, set_trainable,
    stage_parameter_names,
)
from neurorit.training.report import StageReport, TrainReport, peak_memory_bytes
from neurorit.training.world import (
    World, current_world, joined, my_share, rank_device, refuse_sharding, sum_gradients, sum_numbers, wait_for_all,
)
from neurorit.types import ProgressFn, no_progress

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
RUN_JSON = "run.json"
STATUS_JSON = "status.json"
METRICS = "metrics.jsonl"
REPORT_JSON = "report.json"
EVAL_BEFORE = "eval_before.json"
EVAL_AFTER = "eval_after.json"
FINAL = "final"
THROTTLE_ENV = "NEURORIT_TRAIN_THROTTLE_S"  # seconds to pause after each step (demos, kill tests)

StageCallback = Callable[[str, Any], None]


class TrainingDivergedError(NeuroritError):
    """The loss or the gradients became NaN or infinite."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resume starts: the newest intact checkpoint (None: step 0) and the newer, unreadable
    ones it falls back past (folder, why), newest first."""

    checkpoint: ckpt.Checkpoint | None
    unreadable: tuple[tuple[Path, str], ...] = ()

    @property
    def step(self) -> int:
        return self.checkpoint.step if self.checkpoint is not None else 0

    def describe(self) -> str:
        start = f"checkpoint step {self.step}" if self.checkpoint is not None else "step 0 (no intact checkpoint)"
        if not self.unreadable:
            return f"resuming from {start}"
        skipped = ", ".join(path.name for path, _ in self.unreadable)
        return (f"resuming from {start}, the newest intact one: {skipped} unreadable ({self.unreadable[0][1]}); "
                f"set aside as {ckpt.CHECKPOINTS}/corrupt-<name>")


# ---- the run folder -----------------------------------------------------------------------------


def default_run_dir(config: TrainConfig) -> Path:
    """`cache/runs/<method>-<config hash>`: the same config finds its finished run again."""
    return store.cache_root() / "runs" / f"{config.method}-{config.hash()}"


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json of a run ({} before it starts); `running` with no live lock holder reads `interrupted`."""
    path = Path(run_dir) / STATUS_JSON
    if not path.is_file():
        return {}
    status = store.read_json(path)
    if status.get("state") == "running" and not ckpt.is_locked(Path(run_dir)):
        status = {**status, "state": "interrupted"}
    return status


def _write_status(run_dir: Path, state: str, **fields: Any) -> None:
    store.write_json(run_dir / STATUS_JSON, {"state": state, "pid": os.getpid(), "updated": time.time(), **fields})


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every complete line of metrics.jsonl (a line cut short by a kill is skipped)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _append_metric(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS, "a") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
        fh.flush()


def _truncate_metrics(run_dir: Path, step: int) -> None:
    """Keep the metrics of steps up to `step` (a resumed run writes the later ones again)."""
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= step]
    store.write_text_atomic(run_dir / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))


def load_report(run_dir: Path) -> TrainReport | None:
    """The run's TrainReport, or None while it has none (running, failed before the end)."""
    path = Path(run_dir) / REPORT_JSON
    return TrainReport.load(path) if path.is_file() else None


def has_started(run_dir: Path) -> bool:
    """Whether a run folder holds work: a checkpoint, a report, or a logged training step.

    A folder that failed before its first step (a bad model, data or mask; holding config.json and
    perhaps status / run / eval files) has not started: a new train may reuse it.
    """
    run_dir = Path(run_dir)
    checkpoints = run_dir / ckpt.CHECKPOINTS
    if (run_dir / REPORT_JSON).is_file() or (checkpoints.is_dir() and any(checkpoints.iterdir())):
        return True
    return any(m.get("event") == "step" for m in read_metrics(run_dir))


def _check_run_dir(run_dir: Path, config: TrainConfig, resume: bool, *, write: bool = True) -> None:
    """Refuse a folder that holds another run (or, for train, any started run); with write, store the config."""
    stored_path = run_dir / CONFIG_JSON
    if stored_path.is_file() and not resume and not has_started(run_dir):
        if write:
            log.warning("reusing %s: it holds a run that never took a step (no checkpoint, step or report)", run_dir)
            store.write_json(stored_path, config.to_dict())
    elif stored_path.is_file():
        stored = TrainConfig.from_dict(store.read_json(stored_path))
        if stored.hash() != config.hash():
            differing = sorted(k for k, v in config.to_dict().items() if stored.to_dict().get(k) != v)
            raise ConfigError(
                f"{run_dir} holds a run of another config (fields {differing} differ); expected the same config "
                "to resume. Choose another output folder for a new run."
            )
        if not resume:
            status = read_status(run_dir).get("state", "unknown")
            last = ckpt.latest_checkpoint(run_dir)
            where = f", last checkpoint step {last.step}" if last else ""
            raise ArtifactError(
                f"{run_dir} already holds a run (state {status}{where}); resume it with `neurorit resume {run_dir}` "
                "or choose another output folder."
            )
    elif resume:
        raise ArtifactError(f"{run_dir} holds no run to resume ({CONFIG_JSON} is missing); start it with train.")
    elif write:
        store.write_json(stored_path, config.to_dict())


# ---- losses -------------------------------------------------------------------------------------


def _pad_id(model: Any) -> int:
    tokenizer = model.tokenizer
    for candidate in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0


def _batch(model: Any, sequences: Sequence[tuple[tuple[int, ...], int]], device: torch.device) -> tuple[
        torch.Tensor, torch.Tensor, int]:
    """Right-padded ids [batch, pos], target labels over the kept positions [batch, keep], first kept position.

    sequences: (tokens, number of leading prompt tokens). Right padding needs no attention mask:
    a causal model's real tokens never see the pads after them.
    """
    width = max(len(ids) for ids, _ in sequences)
    start = min(n_prompt for _, n_prompt in sequences) - 1  # the logit that predicts the first target
    ids = torch.full((len(sequences), width), _pad_id(model), dtype=torch.long)
    labels = torch.full((len(sequences), width - 1 - start), -100, dtype=torch.long)
    for row, (tokens, n_prompt) in enumerate(sequences):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        targets = torch.tensor(tokens[n_prompt:])  # [n_target]
        labels[row, n_prompt - 1 - start : len(tokens) - 1 - start] = targets
    return ids.to(device), labels.to(device), start


def _logits(hf_model: Any, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Logits at positions start .. pos-2 only (the lm head skips the prompt)."""
    keep = torch.arange(start, ids.shape[1] - 1, device=ids.device)
    try:
        out = hf_model(input_ids=ids, logits_to_keep=keep, use_cache=False)
        return out.logits  # [batch, keep, d_vocab]
    except TypeError:  # an architecture without logits_to_keep
        return hf_model(input_ids=ids, use_cache=False).logits[:, start:-1]


def answer_loss(
    model: Any, items: Sequence[TrainItem], *, loss: str = "ce", teacher: Any | None = None, kl_weight: float = 1.0,
) -> tuple[torch.Tensor, int]:
    """(sum over target tokens of the loss, number of target tokens) for a micro-batch.

    ce: cross entropy of the answer and end tokens given the prompt. kl: KL(teacher || model),
    the teacher (the frozen, unmasked model) reading the relevant-only prompt of the same example,
    the model reading the training prompt. ce_kl: ce + kl_weight * kl.
    """
    device = next(iter(model.parameters())).device
    ids, labels, start = _batch(model, [(i.input_ids, len(i.prompt_ids)) for i in items], device)
    logits = _logits(model.original_model, ids, start).float()  # [batch, keep, d_vocab]
    n_targets = int((labels != -100).sum())
    total = logits.new_zeros(())
    if loss in ("ce", "ce_kl"):
        total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                        ignore_index=-100, reduction="sum")
    if loss in ("kl", "ce_kl"):
        if teacher is None or not all(i.teacher_prompt_ids for i in items):
            raise ConfigError("the kl loss needs the frozen teacher and relevant-only prompts; got neither.")
        with torch.no_grad():
            t_ids, t_labels, t_start = _batch(
                model, [(i.teacher_prompt_ids + i.target_ids, len(i.teacher_prompt_ids)) for i in items], device)
            t_logits = _logits(teacher, t_ids, t_start).float()
            teacher_logp = t_logits[t_labels != -100].log_softmax(-1)  # [n_target, d_vocab]
        student_logp = logits[labels != -100].log_softmax(-1)  # [n_target, d_vocab], same order
        kl = (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
        total = total + (kl_weight if loss == "ce_kl" else 1.0) * kl
    return total, n_targets


@torch.no_grad()
def dev_loss(model: Any, items: Sequence[TrainItem], batch_size: int) -> float:
    """Mean answer cross entropy per target token over fixed dev inputs (eval mode)."""
    total, count = 0.0, 0
    for i in range(0, len(items), batch_size):
        loss, n = answer_loss(model, items[i : i + batch_size])
        total, count = total + float(loss), count + n
    return total / count if count else math.nan


# ---- one optimizer step -------------------------------------------------------------------------


def _step_seed(seed: int, step: int) -> int:
    return int.from_bytes(hashlib.sha256(f"step:{seed}:{step}".encode()).digest()[:6], "big")


def _schedule(config: TrainConfig, steps: int) -> Callable[[int], float]:
    warmup = min(config.warmup_steps, max(0, steps - 1))

    def factor(done: int) -> float:
        if warmup and done < warmup:
            return (done + 1) / (warmup + 1)
        if config.schedule == "constant" or steps <= warmup:
            return 1.0
        progress = (done - warmup) / max(1, steps - warmup)
        if config.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _autocast(device: torch.device, config: TrainConfig) -> Any:
    """bf16 autocast where models.pick_dtype picks bf16 (a GPU that supports it); float32 weights stay."""
    compute = pick_dtype(device)
    if config.autocast and device.type == "cuda" and compute == torch.bfloat16:
        return torch.autocast(device_type="cuda", dtype=compute)
    return contextlib.nullcontext()


def _diverged(what: str, step: int, stage: Stage, run_dir: Path, config: TrainConfig) -> TrainingDivergedError:
    last = ckpt.latest_checkpoint(run_dir)
    kept = f"the last good checkpoint is step {last.step} ({last.path})" if last else "no checkpoint was written yet"
    return TrainingDivergedError(
        f"{what} at step {step} (stage {stage.name}); training stopped and {kept}. Expected a finite loss: lower "
        f"the learning rate (lr = {config.learning_rate:g}) or set max_grad_norm, then start a new run."
    )


def _optimizer_step(
    model: Any, items: list[TrainItem], stage: Stage, params: list[torch.nn.Parameter], optimizer: Any,
    scheduler: Any, teacher: Any | None, config: TrainConfig, step: int, run_dir: Path, world: World = World(),
) -> dict[str, float]:
    """Accumulate gradients over the step's micro-batches, clip, and take one AdamW step.

    Data parallel: each rank computes its share of the micro-batches (world.my_share) and the
    gradients and losses are summed over the ranks, so every rank takes the step one process
    would take. A non-finite loss anywhere stops every rank.
    """
    torch.manual_seed(_step_seed(config.seed, step))  # dropout draws depend on the step only
    device = next(iter(model.parameters())).device
    model.train()
    optimizer.zero_grad(set_to_none=True)
    n_targets = sum(len(i.target_ids) for i in items)
    starts = list(range(0, len(items), config.batch_size))
    total, bad_loss = 0.0, 0.0
    try:
        for k in my_share(len(starts), world):
            first = starts[k]
            with _autocast(device, config):
                loss_sum, _ = answer_loss(model, items[first : first + config.batch_size], loss=stage.loss,
                                          teacher=teacher, kl_weight=config.kl_weight)
            if not bool(torch.isfinite(loss_sum)):
                bad_loss = float(loss_sum.detach())
                break
            (loss_sum / n_targets).backward()  # mean over the step's target tokens
            total += float(loss_sum.detach())
        total, n_bad = sum_numbers([total, float(bad_loss != 0.0)], world, device)
        if n_bad:
            raise _diverged(f"the loss is {bad_loss if bad_loss else 'non-finite on another rank'}", step + 1, stage,
                            run_dir, config)
        sum_gradients(params, world)
        max_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(grad_norm):
            raise _diverged(f"the gradient norm is {grad_norm}", step + 1, stage, run_dir, config)
        lr = float(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    finally:
        model.eval()
    return {"loss": total / n_targets, "grad_norm": grad_norm, "lr": lr, "tokens": n_targets}


# ---- the run ------------------------------------------------------------------------------------


def _load_examples(config: TrainConfig) -> list[RagExample]:
    from neurorit.data import demo_examples, load_examples

    if config.data == "demo":
        examples = demo_examples()
        return examples[: config.limit] if config.limit else examples
    return load_examples(config.data, config.format, limit=config.limit)


def _load_model(config: TrainConfig, device: torch.device) -> Any:
    from neurorit.models import load_model

    return load_model(config.model, device=str(device), dtype=config.dtype)


@contextlib.contextmanager
def _owned(run_dir: Path, job_id: str | None, world: World) -> Any:
    """Rank 0 holds the run folder's lock (a second writer is refused); other ranks never write."""
    if world.main:
        with ckpt.run_lock(run_dir, job_id):
            yield
    else:
        yield


def train(
    config: TrainConfig,
    run_dir: Path | None = None,
    *,
    job_id: str | None = None,
    on_progress: ProgressFn = no_progress,
) -> TrainReport:
    """Train (or, for ralm, only evaluate) as the config says; the edge that loads model and data.

    run_dir: None = default_run_dir(config), where a finished run of the same config is
    returned as it is. A folder that holds another run, or that another live process writes to,
    is refused.
    """
    explicit = run_dir is not None
    run_dir = Path(run_dir) if explicit else default_run_dir(config)
    if not explicit and read_status(run_dir).get("state") == "done" and (report := load_report(run_dir)):
        log.info("%s already holds the finished run of this config", run_dir)
        return report
    world = current_world()
    device = rank_device(world, pick_device(config.device))
    if world.main:
        _check_run_dir(run_dir, config, resume=False, write=False)  # an occupied folder: refused before loading
    model, examples = _load_model(config, device), _load_examples(config)  # bad ones: refused before the folder exists
    with joined(world, device), _owned(run_dir, job_id, world):
        if world.main:
            _check_run_dir(run_dir, config, resume=False)
        wait_for_all(world)
        return _run(model, examples, config, run_dir, resume=False, on_progress=on_progress, world=world)


def resume_point(run_dir: Path) -> ResumePoint:
    """The checkpoint a resume starts from: the newest one that verifies (ckpt.verify_checkpoint).

    Reads only. When checkpoints exist but none is intact, a CheckpointError says so and the
    folder is left as it is.
    """
    checkpoint, unreadable = ckpt.newest_intact(run_dir)
    if checkpoint is None and unreadable:
        found = "; ".join(f"{path.name}: {why.rstrip('.')}" for path, why in unreadable)
        folder = Path(run_dir) / ckpt.CHECKPOINTS
        raise ckpt.CheckpointError(
            f"cannot resume {run_dir}: no intact checkpoint ({found}); expected at least one that reads back as "
            f"written. Nothing was changed; start the run again in a new folder, or delete {folder} to restart "
            "this one from step 0."
        )
    return ResumePoint(checkpoint, unreadable)


def resume(
    run_dir: Path, *, job_id: str | None = None, on_progress: ProgressFn = no_progress,
    on_resume: Callable[[ResumePoint], None] | None = None,
) -> TrainReport:
    """Continue a run from its newest intact checkpoint (or from its start); a finished run returns its report.

    The checkpoint is verified before anything in the folder changes: newer unreadable ones are
    set aside (logged, and on_resume hears where the run starts); when none is intact the run is
    refused with the folder untouched.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_JSON
    if not config_path.is_file():
        raise ArtifactError(f"{run_dir} holds no run to resume ({CONFIG_JSON} is missing); start it with train.")
    config = TrainConfig.from_dict(store.read_json(config_path))
    world = current_world()
    device = rank_device(world, pick_device(config.device))
    if read_status(run_dir).get("state") == "done" and (report := load_report(run_dir)):
        return report
    point = resume_point(run_dir)  # before the lock: a refusal leaves the folder byte for byte as it was
    with joined(world, device), _owned(run_dir, job_id, world):
        if world.main:
            _check_run_dir(run_dir, config, resume=True)
            if on_resume is not None:
                on_resume(point)
        wait_for_all(world)
        return _run(_load_model(config, device), _load_examples(config), config, run_dir, resume=True,
                    on_progress=on_progress, world=world, point=point)


def run_training(
    model: Any,
    examples: Sequence[RagExample],
    config: TrainConfig,
    run_dir: Path,
    *,
    resume: bool = False,
    on_progress: ProgressFn = no_progress,
    on_stage_end: StageCallback | None = None,
) -> TrainReport:
    """Train the given (untrained) model in place on the given examples; see `train`.

    With resume=True the model must be the untrained one again: the checkpoint's weights are
    loaded into it. on_stage_end(stage name, model) runs after each stage (tests check frozen
    weights there).
    """
    run_dir = Path(run_dir)
    world = current_world()
    point = resume_point(run_dir) if resume else None
    with joined(world, next(iter(model.parameters())).device), _owned(run_dir, None, world):
        if world.main:
            _check_run_dir(run_dir, config, resume=resume)
        wait_for_all(world)
        return _run(model, list(examples), config, run_dir, resume=resume, on_progress=on_progress,
                    on_stage_end=on_stage_end, world=world, point=point)


def _evaluate(model: Any, data: TrainData, config: TrainConfig, mask: NeuronMask | None, label: str,
              on_progress: ProgressFn) -> EvalReport:
    return evaluate(model, data.test[: config.n_eval], config.eval, mask=mask, label=f"eval {label}", strict=False,
                    on_progress=on_progress)


def _run(
    model: Any, examples: list[RagExample], config: TrainConfig, run_dir: Path, *, resume: bool,
    on_progress: ProgressFn, on_stage_end: StageCallback | None = None, world: World = World(),
    point: ResumePoint | None = None,
) -> TrainReport:
    refuse_sharding()
    device = next(iter(model.parameters())).device
    threads = torch.get_num_threads()
    if device.type == "cpu" and config.threads:
        torch.set_num_threads(config.threads)  # CPU matmuls are bit-reproducible at a fixed thread count
    if world.main:
        _write_status(run_dir, "running", world_size=world.size)
    else:
        on_progress = no_progress  # rank 0 reports for all
    try:
        return _run_inner(model, examples, config, run_dir, device, resume, on_progress, on_stage_end, world,
                          point or ResumePoint(None))
    except NeuroritError as exc:
        if world.main:
            last = ckpt.latest_checkpoint(run_dir)
            _write_status(run_dir, "failed", error=str(exc), last_checkpoint=last.step if last else None)
            _append_metric(run_dir, {"event": "failed", "step": last.step if last else 0, "error": str(exc)})
        raise
    except BaseException as exc:  # cancelled (SIGTERM -> SystemExit), interrupted, or a bug
        if world.main:
            state = "cancelled" if isinstance(exc, (SystemExit, KeyboardInterrupt)) else "failed"
            last = ckpt.latest_checkpoint(run_dir)
            _write_status(run_dir, state, error=f"{type(exc).__name__}: {exc}",
                          last_checkpoint=last.step if last else None)
        raise
    finally:
        torch.set_num_threads(threads)


@dataclass
class _RunContext:
    """What every phase of one run shares (made by _prepare)."""

    model: Any
    config: TrainConfig
    run_dir: Path
    device: torch.device
    world: World
    identity: Any  # the untrained model's ModelIdentity
    data: TrainData
    plan: Any  # methods.TrainPlan
    total_params: int

    @property
    def main(self) -> bool:
        return self.world.main  # rank 0 alone writes the run folder and evaluates


@dataclass
class _Progress:
    """Where training stands: the global step, training time, parameters trained so far, last losses."""

    step: int = 0
    elapsed: float = 0.0
    trained: set[str] = field(default_factory=set)
    stage_losses: dict[str, float] = field(default_factory=dict)


def _run_inner(
    model: Any, examples: list[RagExample], config: TrainConfig, run_dir: Path, device: torch.device, resume: bool,
    on_progress: ProgressFn, on_stage_end: StageCallback | None, world: World, point: ResumePoint,
) -> TrainReport:
    """Prepare, evaluate before, train stage by stage, finish (evaluate after, bake, report)."""
    run = _prepare(model, examples, config, run_dir, device, world)
    last = point.checkpoint if resume else None  # verified by resume_point before the folder changed
    if resume and run.main:
        _note_resume(run_dir, point, last)
    elif run.main and (run_dir / METRICS).exists():
        (run_dir / METRICS).unlink()
    before = _evaluate_before(run, resume, on_progress)
    wait_for_all(world)
    if config.method == "ralm":  # nothing to train: the report is the evaluation before
        if not run.main:
            return _report(run)
        peak, measure = peak_memory_bytes(device)
        report = _report(run, eval_before=before, eval_after=before, peak_memory_bytes=peak, memory_measure=measure)
        report.save(run_dir / REPORT_JSON)
        _write_status(run_dir, "done", step=0)
        return report
    stages, progress = _train_stages(run, last, on_progress, on_stage_end)
    return _finish(run, before, stages, progress, on_progress)


def _prepare(model: Any, examples: list[RagExample], config: TrainConfig, run_dir: Path, device: torch.device,
             world: World) -> _RunContext:
    """The run's data and plan; rank 0 records them in run.json."""
    run = _RunContext(model=model, config=config, run_dir=run_dir, device=device, world=world,
                      identity=model_identity(model), data=prepare_data(examples, model.tokenizer, config),
                      plan=plan_for(config, model),  # a mask of another model: ModelMismatchError
                      total_params=count_parameters(model))
    if run.main and world.distributed and config.grad_accum < world.size:
        log.warning("grad_accum %d < %d processes: each step has %d micro-batch(es), so %d rank(s) idle every step; "
                    "raise grad_accum (and lower batch_size) to use them all",
                    config.grad_accum, world.size, config.grad_accum, world.size - config.grad_accum)
    if run.main:
        store.write_json(run_dir / RUN_JSON, {
            "plan": run.plan.describe(), "model": run.identity.__dict__, "data": run.data.summary(),
            "device": str(device), "torch": torch.__version__, "total_params": run.total_params,
            "world_size": world.size,
        })
    return run


def _note_resume(run_dir: Path, point: ResumePoint, last: ckpt.Checkpoint | None) -> None:
    """Clear what the interrupted process left (partial checkpoints, metrics after `last`) and log the resume."""
    for leftover in ckpt.remove_partial(run_dir):
        log.warning("removed a partial checkpoint %s left by the interrupted process", leftover)
    for path, why in point.unreadable:
        log.warning("checkpoint %s is unreadable (%s): set aside as %s; resuming from %s", path, why,
                    ckpt.set_aside(path).name, f"step {point.step}" if last else "step 0")
    _truncate_metrics(run_dir, last.step if last else 0)
    resumed: dict[str, Any] = {"event": "resume", "step": last.step if last else 0}
    if point.unreadable:
        resumed["unreadable"] = [path.name for path, _ in point.unreadable]
    _append_metric(run_dir, resumed)


def _evaluate_before(run: _RunContext, resume: bool, on_progress: ProgressFn) -> EvalReport | None:
    """The untrained model's evaluation (rank 0; always for ralm), reloaded when a resumed run has it."""
    if not (run.main and (run.config.eval_before or run.config.method == "ralm")):
        return None
    path = run.run_dir / EVAL_BEFORE
    if path.is_file() and resume:
        return EvalReport.load(path)
    before = _evaluate(run.model, run.data, run.config, None, "before", on_progress)
    before.save(path)
    return before


def _report(run: _RunContext, **fields: Any) -> TrainReport:
    """The run's TrainReport: what every report says about the run, plus `fields`."""
    return TrainReport(method=run.config.method, status="done", run_dir=str(run.run_dir), config=run.config.to_dict(),
                       model=run.identity.__dict__, total_params=run.total_params,
                       target_layers=run.plan.target_layers, data=run.data.summary(), **fields)


def _train_stages(run: _RunContext, last: ckpt.Checkpoint | None, on_progress: ProgressFn,
                  on_stage_end: StageCallback | None) -> tuple[list[StageReport], _Progress]:
    """Every stage of the plan in order, under the mask, from `last` when resuming; the model is
    left with its original requires_grad flags and LoRA merged."""
    model, config, plan = run.model, run.config, run.plan
    flags = {id(p): p.requires_grad for p in model.parameters()}
    needs_teacher = any(s.loss in ("kl", "ce_kl") for s in plan.stages)
    teacher = copy.deepcopy(model.original_model).eval().requires_grad_(False) if needs_teacher else None
    stage_reports: list[StageReport] = []
    applied = plan.mask.applied(model, strict=True) if plan.mask is not None else contextlib.nullcontext()
    with applied:  # entered on the untrained weights: the mask's strict check holds
        if any(s.trainable == "lora" for s in plan.stages):
            torch.manual_seed(config.seed)  # adapter initialisation
            inject_lora(model, config)
        progress = _Progress()
        if last is not None:
            params, _, _ = ckpt.read_checkpoint(last)
            _load_params(model, params, last)
            progress = _Progress(step=last.step, elapsed=float(last.meta.get("elapsed_s", 0.0)),
                                 trained=set(last.meta["params"]), stage_losses=dict(last.meta.get("stage_losses", {})))
        dev = dev_items(run.data, model.tokenizer, config) if config.dev_every else []
        stage_start = 0
        for index, stage in enumerate(plan.stages):
            ran = progress.step < stage_start + stage.steps  # else it finished before an interruption
            stage_reports.append(_train_stage(run, index, stage, stage_start, progress, last, teacher, dev,
                                              on_progress))
            if ran and on_stage_end is not None:
                on_stage_end(stage.name, model)
            stage_start += stage.steps
    if any(s.trainable == "lora" for s in plan.stages):
        merge_lora(model)
    for p in model.parameters():
        p.requires_grad_(flags.get(id(p), False))
    del teacher
    return stage_reports, progress


def _train_stage(run: _RunContext, index: int, stage: Stage, stage_start: int, progress: _Progress,
                 last: ckpt.Checkpoint | None, teacher: Any, dev: Sequence[TrainItem],
                 on_progress: ProgressFn) -> StageReport:
    """One stage's optimizer steps from progress.step to the stage's end (none when it finished
    before an interruption), with metrics, dev losses and checkpoints; advances `progress`."""
    model, config, run_dir = run.model, run.config, run.run_dir
    stage_end = stage_start + stage.steps
    names = stage_parameter_names(model, stage)
    params = set_trainable(model, names)
    n_trainable = sum(p.numel() for p in params)
    progress.trained |= set(names)
    if progress.step >= stage_end:  # finished before the interruption
        return StageReport(stage.name, stage.steps, n_trainable, n_trainable / run.total_params, math.nan, 0,
                           float(progress.stage_losses.get(stage.name, math.nan)))
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, stage.steps))
    if last is not None and last.stage == index and progress.step > stage_start:
        _, opt_state, rng = ckpt.read_checkpoint(last)
        optimizer.load_state_dict(opt_state)
        scheduler.load_state_dict(last.meta["scheduler"])
        ckpt.restore_rng(last, rng)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    end_ids = end_of_turn_ids(model.tokenizer)
    times: list[float] = []
    loss = math.nan
    while progress.step < stage_end:
        started = time.perf_counter()
        items = items_for_step(progress.step, run.data, model.tokenizer, config, end_ids=end_ids,
                               with_teacher=stage.loss != "ce")
        result = _optimizer_step(model, items, stage, params, optimizer, scheduler, teacher, config, progress.step,
                                 run_dir, run.world)
        progress.step += 1
        step = progress.step
        times.append(time.perf_counter() - started)
        progress.elapsed += times[-1]
        loss = progress.stage_losses[stage.name] = result["loss"]
        eta = (sum(times) / len(times)) * (config.max_steps - step)
        if run.main:
            _append_metric(run_dir, {"event": "step", "step": step, "stage": stage.name,
                                     "stage_step": step - stage_start, "elapsed_s": progress.elapsed, "eta_s": eta,
                                     "step_time_s": times[-1], **result})
        on_progress(step, config.max_steps, f"{stage.name} {step - stage_start}/{stage.steps} "
                                            f"loss {loss:.4f} eta {eta:.0f}s")
        if run.main and dev and config.dev_every and step % config.dev_every == 0:
            _append_metric(run_dir, {"event": "dev", "step": step, "stage": stage.name,
                                     "dev_loss": dev_loss(model, dev, config.batch_size)})
        due = (config.checkpoint_every and step % config.checkpoint_every == 0) or step == stage_end
        if due and config.save_checkpoints:
            _check_finite(model, progress.trained, step, stage, run_dir, config)  # on every rank: all stop together
            if run.main:
                _save_checkpoint(model, run_dir, step, index, step - stage_start, progress.trained, optimizer,
                                 scheduler, stage, config, progress.elapsed, progress.stage_losses)
            wait_for_all(run.world)
        throttle = float(os.environ.get(THROTTLE_ENV, "0") or 0)
        if throttle > 0:
            time.sleep(throttle)
    peak, _ = peak_memory_bytes(run.device)
    return StageReport(stage.name, stage.steps, n_trainable, n_trainable / run.total_params,
                       sum(times) / len(times) if times else math.nan, peak, loss)


def _finish(run: _RunContext, before: EvalReport | None, stages: list[StageReport], progress: _Progress,
            on_progress: ProgressFn) -> TrainReport:
    """Evaluate after training (with the mask), bake the final checkpoint, write the report and status."""
    after = final = None
    if run.main and run.config.eval_after:
        after = _evaluate(run.model, run.data, run.config, run.plan.mask, "after", on_progress)
        after.save(run.run_dir / EVAL_AFTER)
    if run.main and run.config.bake:
        mask = run.plan.mask if run.plan.mask is not None else NeuronMask.identity(run.model)
        final = str(bake(mask, run.model, run.run_dir / FINAL, strict=False, overwrite=True))
    peak, measure = peak_memory_bytes(run.device)
    report = _report(run, stages=tuple(stages), steps=progress.step, wall_time_s=progress.elapsed,
                     peak_memory_bytes=peak, memory_measure=measure, mask=run.plan.describe()["mask"],
                     eval_before=before, eval_after=after, final_checkpoint=final)
    if run.main:
        report.save(run.run_dir / REPORT_JSON)
        _write_status(run.run_dir, "done", step=progress.step)
    wait_for_all(run.world)
    return report


def _load_params(model: Any, params: dict[str, torch.Tensor], checkpoint: ckpt.Checkpoint) -> None:
    own = named_parameters(model)
    missing = sorted(set(params) - set(own))
    if missing:
        raise ckpt.CheckpointError(
            f"checkpoint {checkpoint.path} holds weights the model lacks ({missing[:3]}); it belongs to another "
            "model or method."
        )
    with torch.no_grad():
        for name, value in params.items():
            if own[name].shape != value.shape:
                raise ckpt.CheckpointError(
                    f"checkpoint {checkpoint.path}: {name} has shape {tuple(value.shape)}, the model's is "
                    f"{tuple(own[name].shape)}."
                )
            own[name].copy_(value.to(device=own[name].device, dtype=own[name].dtype))


def _check_finite(model: Any, trained: set[str], step: int, stage: Stage, run_dir: Path, config: TrainConfig) -> None:
    own = named_parameters(model)
    bad = [name for name in sorted(trained) if not bool(torch.isfinite(own[name].detach()).all())]
    if bad:
        raise _diverged(f"weights became non-finite ({bad[:3]})", step, stage, run_dir, config)


def _save_checkpoint(
    model: Any, run_dir: Path, step: int, stage_index: int, stage_step: int, trained: set[str], optimizer: Any,
    scheduler: Any, stage: Stage, config: TrainConfig, elapsed: float, stage_losses: dict[str, float],
) -> None:
    own = named_parameters(model)
    params = {name: own[name].detach() for name in sorted(trained)}
    scheduler_state = scheduler.state_dict()  # lr_lambdas: [None] (a closure, rebuilt from the config)
    written = ckpt.write_checkpoint(
        run_dir, step, params=params, optimizer=optimizer.state_dict(), scheduler=scheduler_state,
        meta={"stage": stage_index, "stage_name": stage.name, "stage_step": stage_step, "elapsed_s": elapsed,
              "loss": stage_losses[stage.name], "stage_losses": stage_losses, "config_hash": config.hash()},
    )
    _append_metric(run_dir, {"event": "checkpoint", "step": step, "path": str(written.path)})
    ckpt.prune_checkpoints(run_dir, config.keep_checkpoints)
