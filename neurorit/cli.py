"""The command line: `neurorit <subcommand>` (or `python -m neurorit`).

Owns: argument parsing, YAML config files with flag overrides, the tqdm progress adapter, job
reporting when run as a background job (`--job-id`), short human summaries, and exit codes
(0 ok, 2 bad input with a one-line reason, 1 unexpected failure). Must not: hold model logic;
every subcommand calls the public API.

Subcommands follow the data flow: prepare (convert the bundled model), mine, sets, mask,
evaluate, ablate, export, jobs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from neurorit.errors import ConfigError, NeuroritError

log = logging.getLogger("neurorit.cli")


# ----------------------------------------------------------------------------------------------
# helpers


class UsageError(NeuroritError):
    """Bad command-line input."""


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    """A flag's '0,2,5-7' as integers; None when the flag is absent. A refusal names `flag`."""
    from neurorit.configs import parse_int_ranges

    if text is None or text == "":
        return None
    return parse_int_ranges(text, name=flag)


def _str_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(p.strip() for p in text.split(",") if p.strip())



def _progress_adapter(job_id: str | None, quiet: bool) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A progress callback writing to a tqdm bar (stderr) and, for a job, to its record."""
    reporter = None
    if job_id:
        from neurorit.jobs import JobReporter

        reporter = JobReporter(job_id)
    bar = None

    def on_progress(done: int, total: int, message: str) -> None:
        nonlocal bar
        if not quiet:
            from tqdm import tqdm

            if bar is None or bar.total != total:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, file=sys.stderr, dynamic_ncols=True, leave=False)
            bar.n = done
            bar.set_description(message[:40])
            bar.refresh()
        if reporter is not None:
            reporter.progress(done, total, message)

    def close() -> None:
        if bar is not None:
            bar.close()

    return on_progress, close


CONFIG_KEYS = ("model", "data", "format", "limit", "offset", "add_distractors", "mining", "selection", "prompt",
               "eval")


def _count(value: Any, key: str, shown: str) -> int:
    from neurorit.mining_spec import check_count

    return check_count(value, key, shown)


def _load_config_file(args: argparse.Namespace) -> dict[str, Any]:
    from neurorit.configs import load_yaml

    file_cfg = load_yaml(args.config) if getattr(args, "config", None) else {}
    unknown = sorted(set(file_cfg) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"config file {args.config}: unknown key(s) {unknown}; known keys are {list(CONFIG_KEYS)}.")
    for key in ("model", "data", "format"):
        value = file_cfg.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"config file {args.config}: {key} = {value!r} is not allowed; expected a non-empty "
                              "string.")
    from neurorit.mining_spec import COUNTS

    for key in COUNTS:
        if file_cfg.get(key) is not None:
            file_cfg[key] = _count(file_cfg[key], key, f"config file {args.config}: {key} = {file_cfg[key]!r}")
    return file_cfg


def _selection(args: argparse.Namespace, file_cfg: dict[str, Any]) -> dict[str, int | None]:
    """offset, limit and add_distractors from the flags, else the config file; each checked (COUNTS)."""
    from neurorit.mining_spec import COUNTS

    out: dict[str, int | None] = {}
    for key in COUNTS:
        flag = getattr(args, key, None)
        out[key] = _count(flag, key, f"--{key.replace('_', '-')} {flag}") if flag is not None else file_cfg.get(key)
    return out


def _section(file_cfg: dict[str, Any], name: str) -> dict[str, Any]:
    value = file_cfg.get(name, {}) or {}
    if not isinstance(value, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {type(value).__name__}.")
    return dict(value)


def _build(cls: type, file_cfg: dict[str, Any], section: str, overrides: dict[str, Any]) -> Any:
    from neurorit.configs import from_dict

    data = _section(file_cfg, section)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data)


def _model(args: argparse.Namespace, file_cfg: dict[str, Any]) -> Any:
    from neurorit.models import load_model

    name = args.model or file_cfg.get("model") or os.environ.get("NEURORIT_MODEL")
    return load_model(name, device=args.device or os.environ.get("NEURORIT_DEVICE"), dtype=args.dtype)


def _examples(args: argparse.Namespace, file_cfg: dict[str, Any]) -> list[Any]:
    from neurorit.data import choose_examples
    from neurorit.prompts import add_distractors

    chosen = _selection(args, file_cfg)
    examples = choose_examples(args.data or file_cfg.get("data") or "demo", args.format or file_cfg.get("format"),
                               offset=chosen["offset"], limit=chosen["limit"])
    if chosen["add_distractors"]:
        examples = add_distractors(examples, chosen["add_distractors"], seed=args.seed, hard=args.hard)
    return examples


def _prompt_config(args: argparse.Namespace, file_cfg: dict[str, Any]) -> Any:
    from neurorit.prompts import PromptConfig

    return _build(PromptConfig, file_cfg, "prompt", {"n_distractors": args.n_distractors, "seed": args.seed})


def _mining_spec(args: argparse.Namespace) -> Any:
    """The MiningSpec of `neurorit mine`: the --config file, with the flags given on top."""
    from neurorit.flags import given_flags
    from neurorit.mining_spec import AttributionConfig, MiningSpec, SelectionRule

    from neurorit.configs import load_yaml

    file_cfg = load_yaml(args.config) if args.config else {}  # the spec checks its keys and values, naming the file
    file_cfg.pop("eval", None)  # a config file shared with `evaluate`
    overrides = {
        "model": args.model, "device": args.device, "dtype": args.dtype, "data": args.data, "format": args.format,
        **_selection(args, file_cfg), "hard": True if args.hard else None, "seed": args.seed,
        "prompt": {"n_distractors": args.n_distractors, "seed": args.seed},
        "mining": given_flags(args, AttributionConfig, prefix="mining"),
        "selection": given_flags(args, SelectionRule, prefix="selection"),
        **given_flags(args, MiningSpec, prefix="spec"),
    }
    return MiningSpec.from_sources(file_cfg, overrides,
                                  where=f"config file {args.config}" if args.config else "neurorit mine")


def _eval_config(args: argparse.Namespace, file_cfg: dict[str, Any], prompt_config: Any) -> Any:
    from neurorit.configs import from_dict
    from neurorit.evaluation import EvalConfig

    data = _section(file_cfg, "eval")
    data.pop("prompt", None)
    overrides = {"views": _str_list(args.views), "noise_levels": _int_list(args.noise_levels, "--noise-levels"),
                 "max_new_tokens": args.max_new_tokens}
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("views", "noise_levels"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return from_dict(EvalConfig, {**data, "prompt": prompt_config})  # unknown fields: ConfigError


def _print_counts(title: str, sets: dict[str, Any]) -> None:
    names = list(sets)
    n_layers = len(next(iter(sets.values())).counts_per_layer())
    width = max(len(n) for n in names) + 2
    print(title)
    print("layer " + "".join(f"{n:>{width}}" for n in names))
    counts = {n: s.counts_per_layer() for n, s in sets.items()}
    for layer in range(n_layers):
        row = [counts[n][layer] for n in names]
        if any(row):
            print(f"{layer:>5} " + "".join(f"{c:>{width}}" for c in row))
    print("total " + "".join(f"{len(sets[n]):>{width}}" for n in names))


# ----------------------------------------------------------------------------------------------
# subcommands


def cmd_prepare(args: argparse.Namespace) -> int:
    from neurorit.models import bundled_model_dir

    on_progress, close = _progress_adapter(None, args.quiet)
    path = bundled_model_dir(on_progress)
    close()
    print(f"bundled model ready in {path}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    spec = _mining_spec(args)
    examples = spec.examples()
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    try:
        mined, folder = spec.run(examples=examples, on_progress=on_progress)
    finally:
        close()
    if args.job_id:
        from neurorit.jobs import JobReporter

        JobReporter(args.job_id).artifact("mined", folder)
    _print_counts(mined.summary(), mined.named_sets())
    gap = mined.provenance.get("max_relative_gap")
    if gap is not None:
        print(f"completeness gap: median {mined.provenance['median_relative_gap']:.2%}, worst {gap:.2%} of |f(x) - f(x')|")
    if mined.provenance.get("skipped"):
        print(f"skipped {len(mined.provenance['skipped'])} example(s) lacking a view: {', '.join(mined.provenance['skipped'][:10])}")
    print(f"mined sets: {folder}")
    if args.out_json:
        Path(args.out_json).write_text(json.dumps({"mined": str(folder), **mined.counts_per_layer()}, indent=2))
    return 0


def _load_set(mined_path: str, name: str, model: Any | None = None) -> tuple[Any, Any]:
    from neurorit.mining import MinedNeurons

    mined = MinedNeurons.load(Path(mined_path), model)
    sets = mined.named_sets()
    if name not in sets:
        raise UsageError(f"unknown set {name!r}; choose one of {', '.join(sets)}.")
    return mined, sets[name]


def cmd_sets(args: argparse.Namespace) -> int:
    from neurorit.mining import MinedNeurons

    mined = MinedNeurons.load(Path(args.mined))
    sets = mined.named_sets()
    if args.set:
        chosen = sets.get(args.set)
        if chosen is None:
            raise UsageError(f"unknown set {args.set!r}; choose one of {', '.join(sets)}.")
        if args.json:
            print(json.dumps({"set": args.set, "neurons": chosen.neurons()}))
        else:
            print(f"{args.set}: {len(chosen)} neurons")
            print(", ".join(f"{l}:{i}" for l, i in chosen.neurons()))
        return 0
    if args.json:
        print(json.dumps({"summary": mined.summary(), "counts_per_layer": mined.counts_per_layer()}))
    else:
        _print_counts(mined.summary(), sets)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from neurorit.compare import compare_paths, comparison_figure
    from neurorit.neurons import SET_NAMES
    from neurorit.store import write_text_atomic

    if args.set not in SET_NAMES:
        raise UsageError(f"unknown set {args.set!r}; choose one of {', '.join(SET_NAMES)}.")
    html = Path(args.html) if args.html else None
    if html is not None and html.is_dir():
        raise UsageError(f"--html {html} is a folder; give a file name such as compare.html.")
    result = compare_paths(args.a, args.b)
    if html is not None:
        page = comparison_figure(result, args.set).to_html(include_plotlyjs=True, full_html=True)  # offline: js inline
        try:
            write_text_atomic(html, page)
        except OSError as exc:
            raise UsageError(f"cannot write --html {html}: {exc}") from None
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    for side, folder, model, ids in (("A", result.a, result.model_a, result.example_ids_a),
                                     ("B", result.b, result.model_b, result.example_ids_b)):
        print(f"{side}: {folder} ({len(ids)} examples on {model['name']}, weights {model['fingerprint']})")
    print(f"examples: {len(result.example_ids_a)} in A, {len(result.example_ids_b)} in B, {result.shared_examples} shared")
    for note in result.notes:
        print(f"warning: {note}")
    def jac(j: float) -> str:
        return "-" if j != j else f"{j:.3f}"  # NaN (neither side has neurons) -> '-'

    header = f"{'A':>7}{'B':>7}{'both':>7}{'jaccard':>9}"
    rows = result.table(args.set, nonempty=True)
    print(f"{args.set} per layer (layers where A or B has neurons):")
    print(f"layer{header}")
    for r in rows.itertuples():
        print(f"{r.layer:>5}{r.a:>7}{r.b:>7}{r.both:>7}{jac(r.jaccard):>9}")
    totals = {t["set"]: t for t in result.totals().to_dict("records")}
    t = totals[args.set]
    print(f"total{t['a']:>7}{t['b']:>7}{t['both']:>7}{jac(t['jaccard']):>9}")
    print("every set, whole grid:")
    print(f"{'set':<21}{header}")
    for name, t in totals.items():
        print(f"{name:<21}{t['a']:>7}{t['b']:>7}{t['both']:>7}{jac(t['jaccard']):>9}")
    s = result.shift_summary()
    if s["n"]:
        print(f"A's {s['n']} irrelevant-exclusive neurons, mean IG score under A -> B: irrelevant view "
              f"{s['irrelevant_a']:.4g} -> {s['irrelevant_b']:.4g}, relevant view {s['relevant_a']:.4g} -> "
              f"{s['relevant_b']:.4g}; {s['still_in_b']} still irrelevant-exclusive in B")
    else:
        print("A has no irrelevant-exclusive neurons: no attribution to compare.")
    print("read against (irrelevant view, mean IG under A -> B, ratio B / A):")
    for r in result.references:
        print(f"  {r['what']} ({r['n']}): {r['a']:.4g} -> {r['b']:.4g} (x{r['ratio']:.3g})")
    if html is not None:
        print(f"figure: {html}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from neurorit.masks import NeuronMask
    from neurorit.neurons import parse_neurons
    from neurorit.store import artifact_dir, check_folder_path

    if args.out:
        check_folder_path(Path(args.out))  # refuse a file before loading the model
    file_cfg = _load_config_file(args)
    model = _model(args, file_cfg)
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    chosen = [bool(args.mined), bool(args.neurons), args.layer is not None]
    if sum(chosen) != 1:
        raise UsageError("give exactly one of --mined (with --set), --neurons or --layer.")
    if args.mined:
        mined, _ = _load_set(args.mined, args.set, model)
        mask = NeuronMask.from_mined(mined, args.set, scale=args.scale)
    elif args.neurons:
        mask = NeuronMask.from_neurons(parse_neurons(args.neurons, n_layers, d_mlp), model, scale=args.scale)
    else:
        mask = NeuronMask.from_layer(args.layer, model, scale=args.scale)
    if args.random_like is not None:
        mask = mask.random_control(args.random_like)
    folder = Path(args.out) if args.out else artifact_dir("masks", mask.key())
    mask.save(folder)
    print(f"mask of {len(mask.neurons)} neurons at scale {args.scale} ({mask.neurons.label}); per layer: "
          + " ".join(f"{l}:{c}" for l, c in enumerate(mask.counts_per_layer()) if c))
    print(f"saved: {folder}")
    return 0


def _load_mask(path: str, model: Any, strict: bool) -> Any:
    from neurorit.masks import NeuronMask

    return NeuronMask.load(Path(path), model, strict=strict)


def _eval_inputs(args: argparse.Namespace, mask_required: bool) -> tuple[Any, Any, Any, list[Any]]:
    """(eval config, model, mask or None, examples) from flags and the config file."""
    file_cfg = _load_config_file(args)
    config = _eval_config(args, file_cfg, _prompt_config(args, file_cfg))
    examples = _examples(args, file_cfg)
    model = _model(args, file_cfg)
    mask = _load_mask(args.mask, model, not args.loose) if (args.mask or mask_required) else None
    return config, model, mask, examples


def _run_report(args: argparse.Namespace, run: Callable[[Callable[[int, int, str], None]], Any]) -> int:
    """Run an evaluation with a progress bar, print its table, save it when asked."""
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    try:
        report = run(on_progress)
    finally:
        close()
    print(report.table().to_string(index=False))
    if args.out:
        report.save(Path(args.out))
        print(f"report: {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from neurorit.evaluation import evaluate

    config, model, mask, examples = _eval_inputs(args, mask_required=False)
    label = "masked" if mask else "base"
    return _run_report(args, lambda progress: evaluate(model, examples, config, mask=mask, label=label, on_progress=progress))


def cmd_ablate(args: argparse.Namespace) -> int:
    from neurorit.evaluation import ablate, what_if

    config, model, mask, examples = _eval_inputs(args, mask_required=True)
    if args.example:
        matches = [e for e in examples if e.id == args.example]
        if not matches:
            raise UsageError(f"no example with id {args.example!r} in the data (first ids: {[e.id for e in examples[:5]]}).")
        for row in what_if(model, matches[0], mask, config):
            mark = lambda ok: "correct" if ok else "wrong"  # noqa: E731
            print(f"[{row.view}] before: {row.answer_before!r} ({mark(row.correct_before)}, log p {row.logprob_before:.2f})"
                  f"  after: {row.answer_after!r} ({mark(row.correct_after)}, log p {row.logprob_after:.2f})")
        return 0
    seed = None if args.no_control else args.control_seed
    return _run_report(args, lambda progress: ablate(model, examples, config, mask, control_seed=seed, on_progress=progress))


def cmd_export(args: argparse.Namespace) -> int:
    from neurorit.masks import bake, check_export_target
    from neurorit.notes import notes_of, to_record

    check_export_target(Path(args.out), overwrite=args.overwrite)  # before loading the model
    file_cfg = _load_config_file(args)
    model = _model(args, file_cfg)
    mask = _load_mask(args.mask, model, not args.loose)
    notes = to_record(notes_of(mask.model.fingerprint, mask.neurons.neurons()))  # the neurons' notes travel along
    out = bake(mask, model, Path(args.out), strict=not args.loose, overwrite=args.overwrite, notes=notes)
    print(f"baked checkpoint ({len(mask.neurons)} neurons scaled by the mask"
          f"{f', {len(notes)} with notes' if notes else ''}) written to {out}; "
          "load it with transformers.AutoModelForCausalLM.from_pretrained")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from neurorit import jobs

    if args.action == "repair":
        from neurorit.job_recovery import repair_job_table

        repair = repair_job_table()
        print(repair.summary())
        for job in repair.jobs:
            print(f"{job.id}  {job.state:<9}  {job.done}/{job.total}  {(job.error or job.message)[:60]}")
        return 0
    if args.action == "list":
        if args.limit < 1:  # SQLite reads a negative LIMIT as "no limit"
            raise UsageError(f"--limit {args.limit} is not allowed; expected an integer >= 1 (the newest N jobs).")
        for job in jobs.list_jobs(limit=args.limit):
            print(f"{job.id}  {job.state:<9}  {job.done}/{job.total}  {job.message[:50]}")
        return 0
    if not args.job:
        raise UsageError(f"`neurorit jobs {args.action}` needs a job id.")
    if args.action == "cancel":
        job = jobs.cancel(args.job)
    elif args.action == "wait":
        job = jobs.wait(args.job, timeout=args.timeout)
    else:
        job = jobs.get(args.job)
    print(json.dumps(dataclasses.asdict(job), indent=2, default=str))
    if args.action == "show":
        print(job.log_tail())
    return 0


def _train_config(args: argparse.Namespace) -> Any:
    from neurorit.configs import load_yaml
    from neurorit.training import TrainConfig

    data = load_yaml(args.config) if args.config else {}
    overrides = {
        "method": args.method, "model": args.model, "device": args.device, "data": args.data, "format": args.format,
        "limit": args.limit, "mined": args.mined, "mask": args.mask, "target_layers": _int_list(args.target_layers, "--target-layers"),
        "n_distractors": _int_list(args.n_distractors, "--n-distractors"), "max_steps": args.max_steps, "batch_size": args.batch_size,
        "grad_accum": args.grad_accum, "lr": args.lr, "seed": args.train_seed, "stage2_loss": args.stage2_loss,
        "checkpoint_every": args.checkpoint_every, "n_eval": args.n_eval, "threads": args.threads,
        "max_prompt_tokens": args.max_prompt_tokens,
    }
    data.update({k: v for k, v in overrides.items() if v is not None})
    if args.no_eval_before:
        data["eval_before"] = False
    if args.noise_levels is not None or args.views is not None:
        eval_cfg = dict(data.get("eval") or {})
        if args.noise_levels is not None:
            eval_cfg["noise_levels"] = list(_int_list(args.noise_levels, "--noise-levels") or ())
        if args.views is not None:
            eval_cfg["views"] = list(_str_list(args.views) or ())
        data["eval"] = eval_cfg
    if isinstance(data.get("eval"), dict):
        from neurorit.training.config import DEFAULT_EVAL

        defaults = DEFAULT_EVAL.to_dict()
        data["eval"] = {**defaults, **data["eval"]}
    return TrainConfig.from_dict(data)


def _print_train_report(report: Any) -> None:
    row = report.summary_row()
    print(f"{report.method}: {report.status}, {report.steps} steps, trainable {row['trainable_params']:,} "
          f"({row['trainable_%']:.2f} %), {report.wall_time_s:.1f} s training, peak memory "
          f"{row['peak_memory_MiB']:.0f} MiB")
    table = report.table()
    if len(table):
        print(table.to_string(index=False))
    if report.final_checkpoint:
        print(f"tuned model (mask baked in): {report.final_checkpoint}")
    print(f"run folder: {report.run_dir}")


class TrainingLaunchError(NeuroritError):
    """A multi-process training launch failed."""


def cmd_train(args: argparse.Namespace) -> int:
    from neurorit.training import default_run_dir, load_report, train
    from neurorit.training.world import current_world

    config = _train_config(args)
    run_dir = Path(args.out) if args.out else default_run_dir(config)
    world = current_world()
    if args.processes < 1:
        raise UsageError(f"--processes {args.processes}: expected an integer >= 1.")
    if args.processes > 1 and not world.distributed:  # the launcher starts this command once per process
        from neurorit.training.accelerate import launch_data_parallel

        code = launch_data_parallel(config, run_dir, args.processes, args.job_id)
        report = load_report(run_dir)
        if code != 0 or report is None:
            raise TrainingLaunchError(f"the {args.processes}-process run exited with status {code}; see its output "
                                      f"above and {run_dir / 'status.json'}.")
        _record_train_artifacts(args.job_id, report)
        return 0  # rank 0 printed the report
    else:
        if args.job_id and world.main:
            from neurorit.jobs import JobReporter

            JobReporter(args.job_id).artifact("run", run_dir)
        on_progress, close = _progress_adapter(args.job_id if world.main else None, args.quiet)
        try:
            report = train(config, Path(args.out) if args.out else None, job_id=args.job_id, on_progress=on_progress)
        finally:
            close()
        if not world.main:
            return 0
    _record_train_artifacts(args.job_id, report)
    _print_train_report(report)
    return 0


def _record_train_artifacts(job_id: str | None, report: Any) -> None:
    if job_id:
        from neurorit.jobs import JobReporter

        reporter = JobReporter(job_id)
        reporter.artifact("report", Path(report.run_dir) / "report.json")
        if report.final_checkpoint:
            reporter.artifact("final", report.final_checkpoint)


def cmd_resume(args: argparse.Namespace) -> int:
    from neurorit.training import resume
    from neurorit.training.world import current_world

    main = current_world().main  # under torchrun / accelerate launch, rank 0 reports
    if args.job_id and main:
        from neurorit.jobs import JobReporter

        JobReporter(args.job_id).artifact("run", args.run_dir)
    on_progress, close = _progress_adapter(args.job_id if main else None, args.quiet)

    def on_resume(point: Any) -> None:
        if point.unreadable:  # fell back past unreadable checkpoints: say so
            print(f"{args.run_dir}: {point.describe()}", flush=True)

    try:
        report = resume(Path(args.run_dir), job_id=args.job_id, on_progress=on_progress, on_resume=on_resume)
    finally:
        close()
    if main:
        _record_train_artifacts(args.job_id, report)
        _print_train_report(report)
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    """Run a study file's grid (resumable), then print the pooled summary and where the outputs are."""
    from neurorit.study import StudySpec, default_study_dir, run_study, study_status

    spec = StudySpec.from_yaml(args.spec)
    out = Path(args.out) if args.out else default_study_dir(spec)
    if args.plan:
        print(study_status(spec, out)[["cell_id", "dataset", "noise", "seed", "method", "mining_size", "recipe",
                                       "state", "error"]].to_string(index=False))
        return 0
    if args.job_id:
        from neurorit.jobs import JobReporter

        JobReporter(args.job_id).artifact("study", out)
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    try:
        result = run_study(spec, out, resume=args.resume, on_progress=on_progress)
    finally:
        close()
    if not result.summary.empty:
        columns = ["method", "mining_size", "recipe", "n_distractors", "n_seeds", "n", "accuracy", "accuracy_low",
                   "accuracy_high"]
        for (dataset, noise), part in result.summary.groupby(["dataset", "noise"], sort=False):
            print(f"{Path(dataset).name}, {noise} noise (accuracy, seeds pooled, 95 % bootstrap interval):")
            print(part[columns].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{result.n_done} of {result.n_cells} cells done; table {out / 'results.csv'}, report {out / 'report.md'}, "
          f"figure {out / 'accuracy_vs_distractors.html'}")
    if result.failed:
        print(f"{len(result.failed)} cell(s) failed; fix the cause and rerun with --resume:", file=sys.stderr)
        for cell_id, message in result.failed.items():
            print(f"  {cell_id}: {message}", file=sys.stderr)
        return 1
    return 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    """Rank a corpus's passages for a question, or write a data file with retrieved noise."""
    from neurorit.data import load_examples, save_examples
    from neurorit.retrieval import (
        build_retriever, counterfactual_passages, load_corpus, make_noisy_examples, mentions_answer,
        retriever_config,
    )

    if (args.question is None) == (args.data is None):
        raise UsageError("give either --question (rank passages) or --data with --out (write a noisy data file).")
    if args.data is not None and not args.out:
        raise UsageError("--data needs --out FILE.jsonl: where to write the noisy examples.")
    config = retriever_config(args.retriever, dense_model=args.dense_model, splade_model=args.splade_model,
                              rrf_k=args.rrf_k)
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    try:
        if args.question is not None:
            corpus = load_corpus(args.corpus or ["wiki"])
            retriever = build_retriever(corpus, config, on_progress=on_progress)
            hits = retriever.search([args.question], args.k)[0]
            close()
            print(f"{retriever.name} over {corpus.name} ({len(corpus)} passages), top {len(hits)}:")
            for rank, (j, score) in enumerate(hits, start=1):
                flag = ""
                if args.answers:
                    flag = "relevant   " if mentions_answer(corpus.titles[j], corpus.texts[j], args.answers) \
                        else "irrelevant "
                text = " ".join(corpus.texts[j].split())
                print(f"{rank:>3}  {score:9.4f}  {flag}{corpus.ids[j]}  {corpus.titles[j]}: {text[:200]}")
            return 0
        examples = load_examples(args.data, args.format, limit=args.limit)
        corpus = retriever = counterfactuals = None
        if args.noise == "counterfactual":
            counterfactuals = counterfactual_passages(args.data)
        else:
            corpus = load_corpus(args.corpus or [args.data, "wiki"])
            if args.noise == "hard":
                retriever = build_retriever(corpus, config, on_progress=on_progress)
        noisy = make_noisy_examples(
            examples, corpus, retriever, kind=args.noise, n_distractors=args.n_distractors, position=args.position,
            seed=args.seed, counterfactuals=counterfactuals,
        )
    finally:
        close()
    save_examples(args.out, noisy)
    short = sum(e.provenance["n_found"] < args.n_distractors for e in noisy)
    print(f"wrote {len(noisy)} examples with {args.n_distractors} {args.noise} distractors each "
          f"({args.position} relevant passage, seed {args.seed}) to {args.out}"
          + (f"; {short} got fewer" if short else ""))
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    """Build (or extend from the cache) the activation index of a dataset and print where it is."""
    import time

    from neurorit.activations import DEFAULT_VIEWS, build_index, check_index_settings, index_dir

    views = check_index_settings(_str_list(args.views) or DEFAULT_VIEWS, args.top_k, args.window, args.n_bins)
    file_cfg = _load_config_file(args)
    prompts = _prompt_config(args, file_cfg)
    examples = _examples(args, file_cfg)
    model = _model(args, file_cfg)
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    start = time.perf_counter()
    try:
        index = build_index(model, examples, views=views, prompt_config=prompts, top_k=args.top_k,
                            window=args.window, n_bins=args.n_bins, use_cache=True, on_progress=on_progress)
    finally:
        close()
    seconds = time.perf_counter() - start
    folder = index_dir(index)
    if args.job_id:
        from neurorit.jobs import JobReporter

        JobReporter(args.job_id).artifact("index", folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    print(f"activation index of {index.n_examples} examples x {len(views)} views ({', '.join(views)}) on "
          f"{index.model.describe()}: {index.provenance.get('n_prompts', 0)} prompts, {seconds:.1f} s")
    skipped = index.provenance.get("skipped", [])
    if skipped:
        print(f"{len(skipped)} (example, view) pair(s) without a prompt, e.g. {skipped[0]['example_id']} "
              f"{skipped[0]['view']}: {skipped[0]['reason'][:120]}")
    print(f"{index.bytes_per_neuron()} bytes per neuron, {size / 2**20:.1f} MiB on disk")
    print(f"index: {folder}")
    return 0


def _context_text(context: Any) -> str:
    """A top context on one line, the hit in [brackets]."""
    tokens = list(context.tokens)
    tokens[context.center] = f"[{tokens[context.center]}]"
    return "".join(tokens).replace("\n", "\\n")


def _print_card(card: Any) -> None:
    f = lambda x: "-" if x is None or x != x else f"{x:.3g}"  # noqa: E731  NaN -> '-'
    print(f"neuron {card.layer}:{card.index} of {card.model} (weights {card.fingerprint}; activation index "
          f"{card.index_key}, {card.n_examples} examples)")
    print("top contexts:")
    for c in card.contexts[:10]:
        where = f"{c.region} passage {c.passage}" if c.passage else c.region
        print(f"  {c.activation:8.3f}  {c.example_id} {c.view} @{c.position} ({where}): {_context_text(c)}")
    print("last-token activation by view: " + "; ".join(
        f"{v.view} mean {f(v.mean)}, median {f(v.median)} (n {v.n})" for v in card.by_view))
    print("tokens by passage type: " + "; ".join(
        f"{r.region} mean {f(r.mean)}, q10/q50/q90 {f(r.q10)}/{f(r.q50)}/{f(r.q90)} (n {r.n_tokens})"
        for r in card.by_region))
    if card.rank_test is not None:
        t = card.rank_test
        print(f"relevant vs irrelevant (last token, Mann-Whitney U): U {t.u:.1f}, p {t.p_value:.3g}, "
              f"rank-biserial {t.rank_biserial:+.3f} (n {t.n_relevant} / {t.n_irrelevant})")
    print("promotes: " + ", ".join(f"{e.token!r} {e.logit:+.3f}" for e in card.promoted))
    print("suppresses: " + ", ".join(f"{e.token!r} {e.logit:+.3f}" for e in card.suppressed))
    if card.direct is not None:
        d = card.direct
        print(f"direct effect on {d.example_id} ({d.view}), gold first token {d.gold_token!r}: activation "
              f"{d.activation:.3f} x weight {d.weight:+.4f} = {d.contribution:+.4f} logit ({d.source})")
    if card.ig is not None:
        g = card.ig
        print(f"IG (mined on {g.n_examples} examples): relevant mean {g.relevant_mean:.3g} (selected "
              f"{g.relevant_frequency:.0%}), irrelevant mean {g.irrelevant_mean:.3g} (selected "
              f"{g.irrelevant_frequency:.0%}); in sets: {', '.join(g.sets) or 'none'}")
    if card.masks:
        print("in masks: " + "; ".join(f"{m.name} (scale {m.scale:g})" for m in card.masks))
    if card.switch_off is not None:
        s = card.switch_off
        print(f"switched off alone ({s.view}, {len(s.example_ids)} examples): gold log-prob change "
              f"{s.neuron.mean:+.4f} [{s.neuron.low:+.4f}, {s.neuron.high:+.4f}]; random neuron "
              f"{card.layer}:{s.random_index}: {s.random.mean:+.4f} [{s.random.low:+.4f}, {s.random.high:+.4f}]")


def cmd_card(args: argparse.Namespace) -> int:
    """Print one neuron's card (and write it as JSON with --json)."""
    from neurorit.activations import find_indexes, load_index
    from neurorit.neuron_card import neuron_card
    from neurorit.neurons import parse_neuron

    layer, index = parse_neuron(args.neuron)
    file_cfg = _load_config_file(args)
    model = _model(args, file_cfg)
    if args.index in (None, "auto"):
        found = find_indexes(model)
        if not found:
            raise UsageError("no activation index of this model's weights in the cache; build one with "
                             "`neurorit index --data ...`, or pass --index PATH.")
        path = found[0]
    else:
        path = Path(args.index)
    activation_index = load_index(path, model)
    mined = None
    if args.mined:
        from neurorit.mining import MinedNeurons

        mined = MinedNeurons.load(Path(args.mined), model)
    masks = {m: _load_mask(m, model, strict=False) for m in (args.mask or [])}
    examples = example = None
    if args.data:
        examples = _examples(args, file_cfg)
        example = examples[0]
        if args.example:
            example = next((e for e in examples if e.id == args.example), None)
            if example is None:
                raise UsageError(f"no example with id {args.example!r} in the data (first ids: "
                                 f"{[e.id for e in examples[:5]]}).")
    card = neuron_card(model, layer, index, activation_index=activation_index, mined=mined, masks=masks,
                       examples=examples if args.switch_off > 0 else None, example=example, view=args.view,
                       n_switch_off=max(args.switch_off, 1))
    _print_card(card)
    if args.json:
        from neurorit.store import write_text_atomic

        write_text_atomic(Path(args.json), json.dumps(card.to_json(), indent=2) + "\n")
        print(f"card: {args.json}")
    return 0


def cmd_passages(args: argparse.Namespace) -> int:
    """Which passage drives the answer: leave-one-out and IG per passage of one example's noisy view."""
    from neurorit.passages import PassageConfig, attribute_passages

    config = PassageConfig() if args.steps is None else PassageConfig(  # more first-pass nodes raise the ceiling
        n_steps=args.steps, max_steps=max(args.steps, PassageConfig.max_steps))
    file_cfg = _load_config_file(args)
    prompts = _prompt_config(args, file_cfg)
    examples = _examples(args, file_cfg)
    matches = [e for e in examples if e.id == args.example]
    if not matches:
        raise UsageError(f"no example with id {args.example!r} in the data (first ids: {[e.id for e in examples[:5]]}).")
    model = _model(args, file_cfg)
    neurons = _load_set(args.mined, args.set, model)[1] if args.mined else None
    on_progress, close = _progress_adapter(args.job_id, args.quiet)
    try:
        result = attribute_passages(model, matches[0], prompts, config, neurons=neurons, on_progress=on_progress)
    finally:
        close()
    print(f"example {result.example_id} ({result.view} view): gold answer log-prob {result.logprob:.4f} with "
          f"every passage")
    table = result.table()[["passage", "relevant", "loo_delta", "ig_sum", "share", "title"]]
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"completeness: sum of IG {float(result.token_ig.sum()):.4f} vs f(x) - f(x') "
          f"{result.f_input - result.f_baseline:.4f} ({config.baseline} baseline over the {config.scope}, "
          f"{result.config['steps_used']} nodes in {len(result.config['intervals'])} intervals): "
          f"gap {result.gap:+.2e}, relative {result.relative_gap:.2%}")
    if neurons is not None:
        print(f"top neurons of {neurons.label} ({len(result.neurons)}) by mean activation on each passage:")
        print(result.top_neurons(3).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.json:
        result.save(Path(args.json))
        print(f"passages: {args.json}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from neurorit import jobs

    if args.rest and args.rest[0] == "study":  # a study file, checked now, run as one job
        from neurorit.study import submit_study

        inner = build_parser().parse_args(list(args.rest))
        job, folder = submit_study(Path(inner.spec), Path(inner.out) if inner.out else None)
        print(f"submitted {job.id} ({job.state}) for {folder}; follow it with `neurorit jobs show {job.id}`")
        return 0
    if not args.rest or args.rest[0] not in ("mine", "evaluate", "ablate", "index", "train", "resume"):
        raise UsageError("`neurorit submit` runs `mine`, `evaluate`, `ablate`, `index`, `train` or `resume` as a background "
                         "job, e.g. `neurorit submit mine --data demo`.")
    inner = build_parser().parse_args(list(args.rest))
    if args.rest[0] == "mine":  # the spec, checked now, written to a file the job reads
        job = _mining_spec(inner).submit()
    else:
        if args.rest[0] == "train":  # refuse bad settings now, not in a failed job
            _train_config(inner)
        elif args.rest[0] == "resume":
            if not (Path(inner.run_dir) / "config.json").is_file():
                raise UsageError(f"{inner.run_dir} holds no training run to resume (config.json is missing).")
        else:  # a bad config file or a negative --limit / --offset
            _selection(inner, _load_config_file(inner))
            if args.rest[0] == "index":
                from neurorit.activations import DEFAULT_VIEWS, check_index_settings

                check_index_settings(_str_list(inner.views) or DEFAULT_VIEWS, inner.top_k, inner.window, inner.n_bins)
        job = jobs.submit(args.rest[0], list(args.rest))
    print(f"submitted {job.id} ({job.state}); follow it with `neurorit jobs show {job.id}`")
    return 0


# ----------------------------------------------------------------------------------------------
# parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="bundled model (default), a local HF folder, or a hub name already cached")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--dtype", help="float32, bfloat16, float16 (default: bf16 on a GPU, else float32)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="'demo' (default) or a dataset file (.jsonl / .jsonl.gz)")
    p.add_argument("--format", help="dataset format (default: detected); one of neurorit, flashrag, "
                   "nq-open-oracle, popqa, retrievalqa, rgb")
    p.add_argument("--limit", type=int, help="use the first N examples")
    p.add_argument("--offset", type=int, help="skip the first N examples (default 0)")
    p.add_argument("--add-distractors", type=int, help="give each example N irrelevant passages from other examples")
    p.add_argument("--hard", action="store_true", help="with --add-distractors: the BM25-closest passages")
    p.add_argument("--n-distractors", type=int, help="irrelevant passages in noisy / irrelevant prompts (default 4)")
    p.add_argument("--seed", type=int, default=None, help="seed for distractor choice and passage order")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (sections: model, data, mining, selection, prompt, eval); flags override it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--job-id", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neurorit", description="Neuro-RIT workbench: mine, switch off and evaluate "
                                     "the MLP neurons that make a RAG model follow irrelevant passages.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="convert the bundled SmolLM2-135M-Instruct once into cache/models")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("mine", help="IG-mine the relevant / irrelevant neuron sets of a dataset")
    _add_common(p), _add_model_args(p), _add_data_args(p)
    from neurorit.flags import add_flags
    from neurorit.mining_spec import AttributionConfig, MiningSpec, SelectionRule

    add_flags(p.add_argument_group("attribution"), AttributionConfig, prefix="mining")
    add_flags(p.add_argument_group("selection"), SelectionRule, prefix="selection")
    add_flags(p.add_argument_group("mining"), MiningSpec, prefix="spec")
    p.add_argument("--out-json", help="also write the result's path and counts to this JSON file")
    p.set_defaults(func=cmd_mine)

    p = sub.add_parser("sets", help="show the mined sets: per-layer counts, or the neurons of one set")
    p.add_argument("--mined", required=True, help="a mined folder (printed by `neurorit mine`)")
    p.add_argument("--set", help="one of relevant, irrelevant, irrelevant-exclusive, relevant-exclusive, shared")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sets)

    p = sub.add_parser("compare", help="compare two mined results (checkpoints, retrievers, data): per-layer overlap, "
                       "Jaccard, and A's irrelevant-exclusive neurons' attribution under A vs B")
    p.add_argument("a", help="mined result A (the base): a mined folder or its mined.json")
    p.add_argument("b", help="mined result B, of the same n_layers x d_mlp (e.g. mined on the trained checkpoint)")
    p.add_argument("--set", default="irrelevant-exclusive",
                   help="the set of the per-layer table and the figure (default irrelevant-exclusive; see `neurorit sets`)")
    p.add_argument("--json", action="store_true", help="print the whole comparison (every set and layer) as JSON")
    p.add_argument("--html", metavar="FIG.html", help="also write the figure (bars per layer, attribution scatter)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("mask", help="make a neuron mask from a mined set, hand-picked neurons or a layer")
    _add_common(p), _add_model_args(p)
    p.add_argument("--mined", help="a mined folder")
    p.add_argument("--set", default="irrelevant-exclusive", help="which mined set (default irrelevant-exclusive)")
    p.add_argument("--neurons", help="hand-picked 'layer:index' pairs, e.g. '3:17,12:404'")
    p.add_argument("--layer", type=int, help="every neuron of one layer")
    p.add_argument("--scale", type=float, default=0.0, help="0 = off (default), 1 = unchanged, 2 = amplified")
    p.add_argument("--random-like", type=int, metavar="SEED", help="a random set with the same per-layer counts")
    p.add_argument("--out", help="folder (default cache/masks/<hash>)")
    p.set_defaults(func=cmd_mask)

    for name, func, help_ in (("evaluate", cmd_evaluate, "generate answers and score accuracy / EM / F1 / log-prob"),
                              ("ablate", cmd_ablate, "evaluate with and without a mask, plus a random control")):
        p = sub.add_parser(name, help=help_)
        _add_common(p), _add_model_args(p), _add_data_args(p)
        p.add_argument("--mask", required=name == "ablate", help="a mask folder or mask.safetensors")
        p.add_argument("--loose", action="store_true", help="accept a mask whose weight fingerprint differs (same shape)")
        p.add_argument("--views", help="comma-separated: relevant,noisy,irrelevant,closed_book")
        p.add_argument("--noise-levels", help="distractor counts for the noisy view, e.g. '0-4'")
        p.add_argument("--max-new-tokens", type=int)
        p.add_argument("--out", help="save the report as JSON")
        if name == "ablate":
            p.add_argument("--example", help="what-if on one example id: answers before / after")
            p.add_argument("--control-seed", type=int, default=0, help="seed of the random control mask")
            p.add_argument("--no-control", action="store_true", help="skip the random control")
        p.set_defaults(func=func)

    p = sub.add_parser("export", help="bake a mask into a plain Hugging Face checkpoint")
    _add_common(p), _add_model_args(p)
    p.add_argument("--mask", required=True)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier neurorit export in --out (never deletes any other folder)")
    p.add_argument("--loose", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("jobs", help="list, show, wait for or cancel background jobs; repair a corrupt job table")
    p.add_argument("action", choices=["list", "show", "wait", "cancel", "repair"],
                   help="repair: when cache/jobs.sqlite is corrupt, keep it aside as jobs.sqlite.corrupt-<time> and "
                        "rebuild the table from the job logs and run folders on disk (a readable table is left as it is)")
    p.add_argument("job", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--timeout", type=float, default=3600)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("train", help="Neuro-RIT or a baseline: train, evaluate before / after, bake (see neurorit.training)")
    p.add_argument("--config", help="YAML or JSON file of TrainConfig fields; flags override it")
    p.add_argument("--out", help="run folder (default cache/runs/<method>-<config hash>)")
    p.add_argument("--method", help="neuro_rit, full, lora, retrobust, random_mask or ralm")
    _add_model_args(p)
    p.add_argument("--data", help="'demo' or a dataset file")
    p.add_argument("--format", help="dataset format (default: detected)")
    p.add_argument("--limit", type=int, help="use the first N examples (before the train/dev/test split)")
    p.add_argument("--mined", help="a mined folder (neuro_rit, random_mask): mask and target layers")
    p.add_argument("--mask", help="a mask folder instead of the mined irrelevant-exclusive set")
    p.add_argument("--target-layers", help="explicit target layers, e.g. '10,12,14'")
    p.add_argument("--n-distractors", help="training distractor counts drawn per example, e.g. '1-4'")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, dest="train_seed")
    p.add_argument("--stage2-loss", choices=["ce", "kl", "ce_kl"])
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--max-prompt-tokens", type=int)
    p.add_argument("--n-eval", type=int, help="test examples evaluated before / after")
    p.add_argument("--views", help="evaluated views, e.g. 'relevant,noisy'")
    p.add_argument("--noise-levels", help="distractor counts of the noisy evaluation, e.g. '2,4'")
    p.add_argument("--no-eval-before", action="store_true", help="skip the evaluation of the untrained model")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--processes", type=int, default=1,
                   help="data-parallel processes, one per GPU (accelerate launch; torchrun on CPUs); default 1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--job-id", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resume", help="continue a training run from its last checkpoint")
    p.add_argument("run_dir", help="the run folder")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--job-id", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("study", help="run a study file: a grid of datasets x noise x methods x seeds, with "
                       "bootstrap intervals and paired tests (see neurorit.study)")
    p.add_argument("spec", help="a study YAML file (see studies/)")
    p.add_argument("--out", help="study folder (default cache/studies/<name>-<spec hash>)")
    p.add_argument("--resume", action="store_true", help="continue the study in --out: finished cells are skipped")
    p.add_argument("--plan", action="store_true", help="list the grid's cells and their state, run nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--job-id", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("retrieve", help="rank corpus passages for a question (BM25, dense, SPLADE, hybrid), or "
                       "write a data file with retrieved noise (see neurorit.retrieval)")
    p.add_argument("--corpus", action="append", help="'wiki' (Wikipedia summaries), 'demo', a corpus file "
                   "({id, contents} or {id, title, text} lines) or a dataset file; repeat to combine "
                   "(default: wiki; with --data: the data file's passages + wiki)")
    p.add_argument("--retriever", default="bm25", help="bm25 (default), dense, splade, hybrid (= bm25+dense) or a "
                   "fusion such as bm25+dense+splade")
    p.add_argument("--dense-model", help="a local sentence-embedding model folder (default: bundled all-MiniLM-L6-v2)")
    p.add_argument("--splade-model", help="a local SPLADE model folder or cached HF id (default: bundled SPLADE-tiny)")
    p.add_argument("--rrf-k", type=int, default=60, help="reciprocal-rank fusion constant (default 60)")
    p.add_argument("--question", help="rank passages for this question")
    p.add_argument("--k", type=int, default=5, help="how many passages to show (default 5)")
    p.add_argument("--answers", nargs="+", help="gold answers: flag each passage relevant / irrelevant")
    p.add_argument("--data", help="a dataset file whose examples get retrieved noise (with --out)")
    p.add_argument("--format", help="dataset format (default: detected)")
    p.add_argument("--limit", type=int, help="use the first N examples")
    p.add_argument("--noise", default="hard", choices=("hard", "random", "counterfactual"),
                   help="hard: top-ranked passages without a gold alias (default); random; counterfactual: RGB's "
                   "positive_wrong")
    p.add_argument("--n-distractors", type=int, default=4, help="distractors per example (default 4)")
    p.add_argument("--position", default="shuffled", choices=("first", "middle", "last", "shuffled"),
                   help="where the relevant passage goes (default shuffled)")
    p.add_argument("--seed", type=int, default=0, help="seed of random draws and shuffles (default 0)")
    p.add_argument("--out", help="the noisy data file to write (neurorit JSON lines, readable by --data)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--job-id", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("index", help="record every neuron's activations on a dataset (last token per view, top "
                       "contexts, activations by passage type): the data of the neuron cards")
    _add_common(p), _add_model_args(p), _add_data_args(p)
    p.add_argument("--views", help="comma-separated views (default relevant,noisy,irrelevant,closed_book)")
    p.add_argument("--top-k", type=int, default=20, help="top-activating tokens kept per neuron (default 20)")
    p.add_argument("--window", type=int, default=8, help="tokens kept on each side of a top token (default 8)")
    p.add_argument("--n-bins", type=int, default=256, help="histogram bins of the per-region quantiles (default 256)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("card", help="one neuron's card: top contexts, activation by view and passage type, "
                       "promoted tokens, IG record, masks, switch-off test")
    p.add_argument("neuron", help="the neuron as layer:index, e.g. 12:404")
    _add_common(p), _add_model_args(p), _add_data_args(p)
    p.add_argument("--index", default="auto", help="an activation index folder, or 'auto' (default): the newest "
                   "index of the model's weights in the cache")
    p.add_argument("--mined", help="a mined folder: the neuron's IG scores and sets")
    p.add_argument("--mask", action="append", help="a saved mask folder (repeat): does it hold the neuron?")
    p.add_argument("--example", help="with --data: the example of the direct effect (default: the first)")
    p.add_argument("--view", default="noisy", help="view of the direct effect and switch-off test (default noisy)")
    p.add_argument("--switch-off", type=int, default=8, metavar="N",
                   help="with --data: switch the neuron off alone on the first N examples (default 8; 0 = skip)")
    p.add_argument("--json", metavar="OUT", help="also write the whole card as JSON to OUT")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("passages", help="which passage drives the answer: leave-one-out and IG over the input "
                       "embeddings, per passage of one example's noisy view (see neurorit.passages)")
    _add_common(p), _add_model_args(p), _add_data_args(p)
    p.add_argument("--example", required=True, help="the example id")
    p.add_argument("--mined", help="a mined folder: the mean activation of its --set on each passage")
    p.add_argument("--set", default="irrelevant-exclusive", help="which mined set (default irrelevant-exclusive)")
    p.add_argument("--steps", type=int, help="IG nodes of the first pass, in intervals of 8 Gauss-Legendre nodes "
                   "(default 32); intervals that miss completeness are then bisected (up to 512 nodes)")
    p.add_argument("--json", metavar="OUT", help="also write the whole result as JSON to OUT")
    p.set_defaults(func=cmd_passages)

    p = sub.add_parser("submit", help="run mine / evaluate / ablate / index / train / resume as a background job")
    p.add_argument("rest", nargs=argparse.REMAINDER, metavar="COMMAND ...",
                   help="mine, evaluate, ablate, index, train or resume and its options, e.g. `mine --data demo --limit 10`")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar before every summary
    job_id = getattr(args, "job_id", None)
    if job_id:  # a background job: SIGTERM (cancel) ends it cleanly
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if getattr(args, "seed", "absent") is None:
        args.seed = 0
    try:
        code = args.func(args)
    except NeuroritError as exc:
        error = " ".join(str(exc).split())  # one line, even for a multi-line YAML parser message
        print(f"neurorit: error: {error}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("neurorit: interrupted", file=sys.stderr)
        code, error = 130, "interrupted"
    except SystemExit as exc:
        code, error = int(exc.code or 0), "cancelled" if exc.code == 143 else f"exit {exc.code}"
    except Exception as exc:  # a job must record how it ended; the traceback goes to its log
        if not job_id:
            raise
        import traceback

        traceback.print_exc()
        code, error = 1, f"{type(exc).__name__}: {exc}"
    else:
        error = ""
    if job_id:
        from neurorit.jobs import JobReporter
        from neurorit.training.world import current_world

        if not current_world().distributed:  # a launched rank: the launching process ends the job
            JobReporter(job_id).finish(error if code else "")
    return code
