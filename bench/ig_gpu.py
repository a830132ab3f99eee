"""IG on a GPU: neurorit's folded IG against captum on random-weight models, fp32 and bf16.

For each shape (random weights, no download) and one ~500-token noisy demo prompt, all layers,
m = 20 midpoint steps, last prompt position, gold-answer target, no-context baseline, it prints:
  - neurorit's time in float32 at the default batching (64 folded copies per pass) and with a
    large batch (--big-rows copies per pass),
  - captum's time on --captum-layers layers (float32, layer by layer), scaled to all layers,
    the ratio, and the max relative difference of the scores (float32),
  - neurorit in bfloat16: time, worst completeness gap, and agreement with float32 (Spearman rank
    correlation over all neurons, overlap of the top 1 % neurons).
Times are medians of --repeats runs after a warm-up, with torch.cuda.synchronize().
Run on a GPU machine:  python bench/ig_gpu.py --shapes smol,1b
Smoke test on a CPU:   python bench/ig_gpu.py --shapes tiny --device cpu --repeats 1
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ig_speed import spearman  # noqa: E402
from random_llama import SHAPES, build_random_bridge, load_tokenizer, n_parameters  # noqa: E402

from neurorit.attribution import AttributionConfig, attribute_neurons, baseline_activations  # noqa: E402
from neurorit.data import demo_examples  # noqa: E402
from neurorit.models import pick_device  # noqa: E402
from neurorit.prompts import PromptConfig, add_distractors, build_prompt  # noqa: E402
from neurorit.reference import captum_layer_ig  # noqa: E402


def pick_prompt(tokenizer: Any, target_tokens: int = 500) -> tuple[Any, Any]:
    config = PromptConfig(n_distractors=4)
    examples = add_distractors(demo_examples(), 4, seed=0)
    prompts = [build_prompt(e, "noisy", config, tokenizer) for e in examples]
    best = min(range(len(prompts)), key=lambda i: abs(prompts[i].n_tokens - target_tokens))
    return prompts[best], build_prompt(examples[best], "closed_book", config, tokenizer)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out


def top_overlap(a: torch.Tensor, b: torch.Tensor, share: float = 0.01) -> float:
    k = max(1, int(a.numel() * share))
    ta = set(a.flatten().abs().topk(k).indices.tolist())
    tb = set(b.flatten().abs().topk(k).indices.tolist())
    return len(ta & tb) / k


def run_shape(shape: str, device: torch.device, tokenizer: Any, args: argparse.Namespace) -> list[str]:
    prompt, closed = pick_prompt(tokenizer)
    rows = []
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        if dtype == torch.bfloat16 and not (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            continue
        model = build_random_bridge(shape, device, tokenizer, dtype=dtype)
        n_layers = int(model.cfg.n_layers)
        config = AttributionConfig(n_steps=args.n_steps)

        def ours(cfg: AttributionConfig = config) -> Any:
            return attribute_neurons(model, prompt.token_ids, prompt.answer_ids, cfg, baseline_ids=closed.token_ids)

        ours(AttributionConfig(n_steps=2, layers=(n_layers - 1,)))  # warm-up
        t_default, scores = timed(ours, device, args.repeats)
        big = AttributionConfig(n_steps=args.n_steps, max_rows_per_pass=args.big_rows)
        t_big, scores_big = timed(lambda: ours(big), device, args.repeats)
        name = "float32" if dtype == torch.float32 else "bfloat16"
        gap = float(torch.nan_to_num(scores.relative_gap, nan=0).max())
        line = (f"{shape} ({n_parameters(model) / 1e9:.2f} B, {n_layers} layers x {model.cfg.d_mlp}) {name}: "
                f"neurorit IG all layers {t_default:.2f} s (64 rows/pass), {t_big:.2f} s ({args.big_rows} rows/pass); "
                f"worst completeness gap {gap:.2e}")
        if device.type == "cuda":
            line += f"; peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
        print(line, flush=True)
        results[dtype] = scores
        row = {"shape": shape, "dtype": name, "ours": t_default, "ours_big": t_big, "gap": gap}
        if dtype == torch.float32:
            diff_big = float((scores_big.scores - scores.scores).abs().max() / scores.scores.abs().max())
            layers = list(range(min(args.captum_layers, n_layers)))
            rel, t_captum = [], 0.0
            for layer in layers:
                base = baseline_activations(model, [layer], int(model.cfg.d_mlp), config, closed.token_ids)[layer]
                t, ref = timed(lambda: captum_layer_ig(model, prompt.token_ids, prompt.answer_ids, layer, config,
                                                       baseline=base, internal_batch_size=args.n_steps), device, 1)
                t_captum += t
                ref = ref.double().cpu()
                rel.append(float((scores.scores[layer].double() - ref).abs().max() / ref.abs().max()))
            scaled = t_captum * n_layers / len(layers)
            print(f"  captum ({len(layers)} layers run, scaled to {n_layers}): {scaled:.2f} s; speed-up "
                  f"{scaled / t_default:.1f}x (default batching), {scaled / t_big:.1f}x (large batch); max relative "
                  f"difference to captum {max(rel):.2e}; large batch vs default {diff_big:.2e}", flush=True)
            row.update(captum=scaled, rel=max(rel))
        else:
            ref = results[torch.float32].scores
            rho = spearman(scores.scores, ref)
            overlap = top_overlap(scores.scores, ref)
            print(f"  bf16 vs float32: Spearman {rho:.3f}, top-1% overlap {overlap:.2%}", flush=True)
            row.update(rho=rho, overlap=overlap)
        rows.append(row)
        del model
        gc.collect()  # the bridge holds reference cycles: free the model before the next one
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
    lines = []
    for r in rows:
        captum = f"{r['captum']:.2f} ({r['captum'] / r['ours']:.0f}x)" if "captum" in r else "-"
        agree = f"rho {r['rho']:.3f}, top-1% {r['overlap']:.0%}" if "rho" in r else f"max rel diff {r['rel']:.1e}"
        lines.append(f"| {r['shape']} | {r['dtype']} | {prompt.n_tokens} | {r['ours']:.2f} | {r['ours_big']:.2f} | "
                     f"{captum} | {r['gap']:.1e} | {agree} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="smol,1b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--big-rows", type=int, default=640)
    parser.add_argument("--captum-layers", type=int, default=2, help="captum runs layers 0..N-1")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled model's)")
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    logging.getLogger("neurorit.prompts").setLevel(logging.ERROR)
    shapes = args.shapes.split(",")
    if any(s not in SHAPES for s in shapes):
        parser.error(f"shapes must be among {sorted(SHAPES)}")
    device = pick_device(args.device)
    tokenizer = load_tokenizer(args.tokenizer)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    header = f"device: {device} ({name}), torch {torch.__version__}, m = {args.n_steps}, random weights"
    print(header, flush=True)
    lines = [header, "", "| shape | dtype | prompt tokens | neurorit s | large batch s | captum s (ratio) | worst gap | agreement |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for shape in shapes:
        lines += run_shape(shape, device, tokenizer, args)
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
