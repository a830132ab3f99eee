"""IG speed and exactness on the bundled model: neurorit's folded IG against captum, in one run.

For one ~500-token noisy prompt (a real NQ-open question with four other questions' passages
when ../shared/data is present, else a demo example), all layers, m = 20 midpoint steps, last
prompt position, gold-answer target, no-context baseline (default), it prints:
  - neurorit's time (prefix KV cache, folded copies, block replay),
  - captum's time (IntegratedGradients on the hook, full sequence, layer by layer),
  - their ratio and the max relative difference of the scores,
  - the one-gradient preview's time and its Spearman rank correlation with IG,
  - the completeness gap per layer.
Run: python bench/ig_speed.py [--captum-layers 0-29] [--threads N] [--all-positions-layer L]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from neurorit.attribution import AttributionConfig, baseline_activations, attribute_neurons, preview_neurons  # noqa: E402
from neurorit.configs import parse_int_ranges  # noqa: E402
from neurorit.data import demo_examples, load_examples  # noqa: E402
from neurorit.models import load_model  # noqa: E402
from neurorit.prompts import PromptConfig, add_distractors, build_prompt  # noqa: E402
from neurorit.reference import captum_layer_ig  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nq-open-oracle.jsonl.gz"


def pick_prompt(model, target_tokens: int = 500):  # type: ignore[no-untyped-def]
    """The noisy prompt (4 distractors) whose length is closest to target_tokens."""
    config = PromptConfig(n_distractors=4)
    if SHARED.is_file():
        examples = add_distractors(load_examples(SHARED, limit=200), 4, seed=0)
        source = "nq-open-oracle (4 distractors from other questions)"
    else:
        examples, source = demo_examples(), "demo set"
    prompts = [build_prompt(e, "noisy", config, model.tokenizer) for e in examples]
    best = min(range(len(prompts)), key=lambda i: abs(prompts[i].n_tokens - target_tokens))
    closed = build_prompt(examples[best], "closed_book", config, model.tokenizer)
    return prompts[best], closed, source


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().double().argsort().argsort().double()
    rb = b.flatten().double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captum-layers", default=None, help="layers captum runs (default: all)")
    parser.add_argument("--n-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", choices=["no_context", "zero"], default="no_context")
    parser.add_argument("--repeats", type=int, default=3, help="neurorit timing repeats (median reported)")
    parser.add_argument("--all-positions-layer", type=int, default=None,
                        help="also time all-position IG on this layer against captum")
    args = parser.parse_args()
    logging.getLogger("neurorit.prompts").setLevel(logging.ERROR)  # long NQ passages are cut to 200 tokens
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(None, device="cpu", dtype="float32")
    prompt, closed, source = pick_prompt(model)
    n_layers = int(model.cfg.n_layers)
    config = AttributionConfig(n_steps=args.n_steps, baseline=args.baseline)
    baseline_ids = closed.token_ids if args.baseline == "no_context" else None
    print(f"machine: {describe()}")
    print(f"prompt: {prompt.example_id} from {source}: {prompt.n_tokens} prompt tokens, "
          f"{len(prompt.answer_ids)} answer tokens; {n_layers} layers x {model.cfg.d_mlp} neurons, m = {args.n_steps}")

    attribute_neurons(model, prompt.token_ids, prompt.answer_ids, AttributionConfig(n_steps=2, baseline="zero", layers=(n_layers - 1,)))  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = attribute_neurons(model, prompt.token_ids, prompt.answer_ids, config, baseline_ids=baseline_ids)
        times.append(time.perf_counter() - start)
    ours_time = sorted(times)[len(times) // 2]
    print(f"neurorit IG, all {n_layers} layers: {ours_time:.2f} s (median of {args.repeats}: "
          + ", ".join(f"{t:.2f}" for t in times) + ")")

    start = time.perf_counter()
    preview = preview_neurons(model, prompt.token_ids, prompt.answer_ids, config, baseline_ids=baseline_ids)
    preview_time = time.perf_counter() - start
    print(f"one-gradient preview: {preview_time:.2f} s; Spearman rank correlation with IG over all neurons "
          f"{spearman(preview.scores, ours.scores):.3f}; per layer median "
          f"{sorted(spearman(preview.scores[l], ours.scores[l]) for l in range(n_layers))[n_layers // 2]:.3f}")

    captum_layers = parse_int_ranges(args.captum_layers, name="--captum-layers") or tuple(range(n_layers))
    rel = []
    start = time.perf_counter()
    for layer in captum_layers:
        base = None
        if baseline_ids is not None:
            base = baseline_activations(model, [layer], int(model.cfg.d_mlp), config, baseline_ids)[layer]
        ref = captum_layer_ig(model, prompt.token_ids, prompt.answer_ids, layer, config, baseline=base,
                              internal_batch_size=args.n_steps)
        rel.append(float((ours.scores[layer].double() - ref.double()).abs().max() / ref.double().abs().max()))
    captum_time = time.perf_counter() - start
    scaled = captum_time * n_layers / len(captum_layers)
    note = "" if len(captum_layers) == n_layers else f" (ran {len(captum_layers)} layers in {captum_time:.1f} s, scaled to {n_layers})"
    print(f"captum IG, layer by layer on the full sequence: {scaled:.1f} s{note}")
    print(f"speed-up: {scaled / ours_time:.1f}x; max relative difference (max |ours - captum| / max |captum| per layer): "
          f"{max(rel):.2e}")
    gaps = ours.relative_gap
    worst = int(torch.nan_to_num(gaps, nan=-1).argmax())
    print(f"completeness gap |sum - (f(x) - f(x'))| / max(|f(x) - f(x')|, 0.05): median {float(gaps.nanmedian()):.2e}, "
          f"worst {float(gaps[worst]):.2e} at layer {worst}; layers over 1 %: "
          f"{[l for l in range(n_layers) if float(gaps[l]) > 0.01]}")

    if args.all_positions_layer is not None:
        layer = args.all_positions_layer
        allpos = AttributionConfig(n_steps=args.n_steps, positions="all", baseline="zero", layers=(layer,),
                              max_rows_per_pass=args.n_steps)
        start = time.perf_counter()
        mine = attribute_neurons(model, prompt.token_ids, prompt.answer_ids, allpos)
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        ref = captum_layer_ig(model, prompt.token_ids, prompt.answer_ids, layer, allpos, internal_batch_size=args.n_steps)
        t_captum = time.perf_counter() - start
        diff = float((mine.scores[layer].double() - ref.double()).abs().max() / ref.double().abs().max())
        print(f"all-position IG, layer {layer}: neurorit {t_ours:.2f} s, captum {t_captum:.2f} s, "
              f"speed-up {t_captum / t_ours:.1f}x, max relative difference {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
