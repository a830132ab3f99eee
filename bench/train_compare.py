"""Every training method on the same split of a real dataset, CPU-sized: one table.

Loads the examples once (NQ-open from ../shared/data by default: one gold passage per question,
distractors drawn from other questions of the same split), mines the Neuro-RIT neuron sets on
training-split examples only (or takes --mined), then for each method trains a fresh copy of the
model for the same number of optimizer steps on the same training split and evaluates it on the
same test questions: clean context (the relevant passage only) and noisy contexts with k = 2 and
k = 4 distractors. RALM is the untrained model (the "before" of every other row). Writes a
markdown table with the date, the machine and the exact command, after every method.

Run: python bench/train_compare.py [--steps 24] [--n-eval 20] [--methods ralm,neuro_rit,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from neurorit.attribution import AttributionConfig  # noqa: E402
from neurorit.data import load_examples  # noqa: E402
from neurorit.evaluation import EvalConfig  # noqa: E402
from neurorit.mining import mine, mined_dir  # noqa: E402
from neurorit.models import BUNDLED_MODEL, load_model  # noqa: E402
from neurorit.neurons import SelectionRule  # noqa: E402
from neurorit.prompts import PromptConfig, add_distractors  # noqa: E402
from neurorit.store import cache_root  # noqa: E402
from neurorit.training import TrainConfig, run_training  # noqa: E402
from neurorit.training.data import split_examples  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NQ = ROOT.parent / "shared" / "data" / "nq-open-oracle.jsonl.gz"
ALL_METHODS = ("ralm", "neuro_rit", "random_mask", "full", "lora", "retrobust")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help=f"default: the bundled {BUNDLED_MODEL}")
    p.add_argument("--data", default=str(NQ))
    p.add_argument("--limit", type=int, default=200, help="examples read from the file (then split by id)")
    p.add_argument("--methods", default=",".join(ALL_METHODS))
    p.add_argument("--steps", type=int, default=24, help="optimizer steps per method (Neuro-RIT: both stages)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--grad-accum", type=int, default=2)
    p.add_argument("--n-distractors", default="1,2", help="training distractor counts")
    p.add_argument("--n-eval", type=int, default=20, help="test questions")
    p.add_argument("--noise-levels", default="2,4")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--mined", help="a MinedNeurons folder; default: mine one on training-split examples")
    p.add_argument("--mine-limit", type=int, default=16)
    p.add_argument("--mine-steps", type=int, default=8)
    p.add_argument("--mine-distractors", type=int, default=4)
    p.add_argument("--top-k", type=int, default=500, help="selection: top-k neurons per example, support 0.5")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_compare_cpu.md"))
    return p.parse_args()


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def mine_sets(args: argparse.Namespace, examples: list, base: TrainConfig) -> tuple[Path, str]:
    """Mine on the first --mine-limit training-split examples (never test questions)."""
    train = split_examples(examples, base)["train"][: args.mine_limit]
    train = add_distractors(train, args.mine_distractors, seed=0)
    model = load_model(args.model, device="cpu", dtype="float32")
    config, rule = AttributionConfig(n_steps=args.mine_steps), SelectionRule(mode="top_k", top_k=args.top_k, support=0.5)
    started = time.perf_counter()
    mined = mine(model, train, config, rule, PromptConfig(n_distractors=args.mine_distractors))
    seconds = time.perf_counter() - started
    folder = mined_dir(mined)
    if not folder.is_dir():
        mined.save(folder)
    sizes = ", ".join(f"{name} {len(s)}" for name, s in mined.named_sets().items())
    how = (f"mined here in {seconds:.0f} s on {len(train)} training-split questions with "
           f"{args.mine_distractors} distractors from other questions: IG m = {args.mine_steps}, no-context baseline, "
           f"last position, gold-answer target; selection top-{args.top_k} per example, support 0.5 ({sizes})")
    return folder, how


def fmt(value: float, pattern: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, pattern)


def write_table(path: Path, header: list[str], rows: list[dict], notes: list[str]) -> None:
    lines = header + ["", "| method | trainable params | trainable % | steps | train wall time (s) | s / step | "
                          "clean acc | noisy k=2 acc | noisy k=4 acc |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['trainable_params']:,} | {fmt(row['trainable_%'], '.2f')} | {row['steps']} | "
            f"{fmt(row['wall_time_s'], '.0f')} | {fmt(row['step_time_s'], '.1f')} | {fmt(row['clean_acc'], '.2f')} | "
            f"{fmt(row.get('noisy_k2_acc'), '.2f')} | {fmt(row.get('noisy_k4_acc'), '.2f')} |"
        )
    lines += [""] + notes
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python " + shlex.join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    examples = load_examples(args.data, limit=args.limit)
    noise = ints(args.noise_levels)
    eval_config = EvalConfig(views=("relevant", "noisy"), noise_levels=noise, max_new_tokens=args.max_new_tokens,
                             prompt=PromptConfig(n_distractors=max(noise)))
    base = TrainConfig(
        method="full", model=args.model, data=args.data, limit=args.limit, max_steps=args.steps,
        batch_size=args.batch_size, grad_accum=args.grad_accum, n_distractors=ints(args.n_distractors),
        n_eval=args.n_eval, eval=eval_config, eval_before=False, bake=False, checkpoint_every=0, dev_every=0,
        threads=args.threads,
    )
    if args.mined:
        mined, how = Path(args.mined), f"given: {args.mined}"
    else:
        mined, how = mine_sets(args, examples, base)
    runs = cache_root() / "runs" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    header = [
        "# Training methods compared, CPU-sized",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- machine: {platform.node()}, {describe()} (shared with other work), float32 on the CPU",
        f"- command: `{command}`",
        f"- model: {args.model or BUNDLED_MODEL}; data: {args.data} (first {args.limit} questions, split by id hash "
        f"80/10/20 train/dev/test; distractors from other questions of the same split)",
        f"- mined neuron sets: {how}; folder {mined}",
        f"- training: {args.steps} optimizer steps per method, batch {args.batch_size} x grad accumulation "
        f"{args.grad_accum}, noisy inputs with {args.n_distractors} distractors, target = first gold alias + "
        "<|im_end|>; AdamW, linear decay, lr 1e-4 (MLPs / full) or 2e-4 (LoRA r=8 on every linear layer); "
        "Neuro-RIT: half the steps denoise, half distill (answer CE), both on the MLPs of the 3 layers with the most "
        "relevant-exclusive neurons, irrelevant-exclusive neurons off; random_mask: the same with a random mask of "
        "the same per-layer sizes; retrobust: LoRA, half relevant-only, a quarter noisy, a quarter irrelevant-only",
        f"- evaluation: the first {args.n_eval} test-split questions, greedy answer (<= {args.max_new_tokens} "
        "tokens), accuracy = a normalized gold alias is contained in the answer; clean = relevant passage only",
    ]
    rows: list[dict] = []
    notes = [f"Runs: {runs}."]
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        config = dataclasses.replace(base, method=method, eval_before=method == "ralm",
                                     mined=str(mined) if method in ("neuro_rit", "random_mask") else None)
        model = load_model(args.model, device="cpu", dtype="float32")
        started = time.perf_counter()
        report = run_training(model, examples, config, runs / method)
        total = time.perf_counter() - started
        row = report.summary_row(noise)
        rows.append(row)
        extra = f", target layers {list(report.target_layers)}" if method in ("neuro_rit", "random_mask") else ""
        if report.mask:
            extra += f", {report.mask['n_neurons']} neurons off"
        notes.append(f"- {method}: {total:.0f} s in all (training + evaluation){extra}; "
                     f"data {report.data.get('train')} train / {report.data.get('test')} test questions")
        write_table(Path(args.out), header, rows, notes)
        print(f"{method}: {row}", flush=True)
        del model
    print(Path(args.out).read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
