"""Neuro-RIT against full fine-tuning on a large random-weight model: step time and memory per stage.

Builds a Llama-architecture model of a chosen shape with random weights (no download), wraps it
in a TransformerBridge, gives it random neuron sets of the right shape (the timing does not depend
on which neurons are off), and runs a few optimizer steps of each method through the same training
loop as `neurorit train` (bf16 autocast on a GPU that supports it). Prints, per method and stage:
trainable parameters, mean step time and peak memory. Evaluation, checkpoints and baking are off.

Run on a GPU machine:   python bench/train_gpu.py --shapes 1b,3b,8b --steps 8
Smoke test on a CPU:    python bench/train_gpu.py --shapes tiny --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neurorit.data import demo_examples  # noqa: E402
from neurorit.mining import MinedNeurons  # noqa: E402
from neurorit.models import model_identity, pick_device  # noqa: E402
from neurorit.neurons import NeuronSet  # noqa: E402
from neurorit.training import TrainConfig, run_training  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from random_llama import SHAPES, build_random_bridge, load_tokenizer, n_parameters  # noqa: E402

def random_mined(model, folder: Path, fraction: float = 0.002) -> Path:  # type: ignore[no-untyped-def]
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    g = torch.Generator().manual_seed(0)
    relevant = NeuronSet(torch.rand(n_layers, d_mlp, generator=g) < fraction, "relevant")
    irrelevant = NeuronSet(torch.rand(n_layers, d_mlp, generator=g) < fraction, "irrelevant")
    zeros = torch.zeros(n_layers, d_mlp)
    mined = MinedNeurons(relevant, irrelevant, relevant.grid.float(), irrelevant.grid.float(), zeros, zeros.clone(),
                         ("random",), model_identity(model), {"note": "random sets for timing only"})
    mined.save(folder)
    return folder


def run_one(shape: str, method: str, device: torch.device, tokenizer, args, tmp: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """Train one method on one shape; markdown table rows (one per stage), or one row saying why not."""
    model = None
    if device.type == "cuda":
        print(f"{shape} {method}: {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB allocated before", flush=True)
    try:
        model = build_random_bridge(shape, device, tokenizer)
        n_params = n_parameters(model)
        if device.type == "cuda":
            trace(device, "model built")
        mined = random_mined(model, tmp / f"mined-{shape}-{method}")
        config = TrainConfig(
            method=method, device=str(device), mined=str(mined), max_steps=args.steps,
            batch_size=args.batch_size, grad_accum=1, eval_before=False, eval_after=False, bake=False,
            dev_every=0, save_checkpoints=False, warmup_steps=0,
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        report = run_training(model, demo_examples(), config, tmp / f"run-{shape}-{method}",
                              on_progress=lambda done, total, what: trace(device, what))
        wall = time.perf_counter() - start
        print(f"{shape} {method}: {n_params / 1e9:.2f} B parameters, {wall:.1f} s in all", flush=True)
        rows = []
        for stage in report.stages:
            print(f"  stage {stage.name}: {stage.steps} steps, trainable {stage.trainable_params:,} "
                  f"({stage.trainable_share:.2%}), {stage.step_time_s:.3f} s/step, peak memory "
                  f"{stage.peak_memory_bytes / 2**30:.2f} GiB ({report.memory_measure}), final loss {stage.final_loss:.3f}",
                  flush=True)
            rows.append(f"| {shape} ({n_params / 1e9:.2f} B) | {method} | {stage.name} | {stage.steps} | "
                        f"{stage.trainable_share:.2%} | {stage.step_time_s:.3f} | {stage.peak_memory_bytes / 2**30:.1f} |")
        return rows
    except torch.OutOfMemoryError as exc:
        first = str(exc).splitlines()[0][:160]
        print(f"{shape} {method}: out of GPU memory ({first}); allocated {torch.cuda.memory_allocated(device) / 2**30:.1f} "
              f"GiB, peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", flush=True)
        return [f"| {shape} | {method} | - | - | - | - | out of memory |"]
    finally:
        del model
        gc.collect()  # the bridge holds reference cycles: free the model before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()


def trace(device: torch.device, what: str) -> None:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        print(f"  {what}: allocated {torch.cuda.memory_allocated(device) / 2**30:.1f} GiB, "
              f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB, device free {free / 2**30:.1f} "
              f"of {total / 2**30:.1f} GiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="3b", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--device", default=None)
    parser.add_argument("--methods", default="neuro_rit,full")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled model's)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shape(s) {unknown}; choose from {sorted(SHAPES)}")
    device = pick_device(args.device)
    tokenizer = load_tokenizer(args.tokenizer)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = (f"device: {device} ({gpu}), torch {torch.__version__}, steps {args.steps}, batch {args.batch_size}, "
              f"bf16 autocast: {device.type == 'cuda' and torch.cuda.is_bf16_supported()}")
    print(header, flush=True)
    rows = [header, "", "| shape | method | stage | steps | trainable | s/step | peak GiB |", "|---|---|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            for method in args.methods.split(","):
                rows += run_one(shape, method, device, tokenizer, args, Path(tmp))
    table = "\n".join(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
