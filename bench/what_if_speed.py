"""What-if latency on the bundled model: the workbench's "answer before / after a mask" for one example.

For each of --examples demo examples and each mask (a mined irrelevant-exclusive set when
--mined is given, a random set of the same per-layer size, and one whole layer), it times:
  - the unmasked side (answer + gold log-prob), computed once per example and view;
  - the masked side decoded one pass a token (no proposals), with prompt-lookup proposals, and
    with those plus the unmasked answer as a draft (what `what_if` does), and checks that all
    three give the same tokens and log-prob;
  - `what_if` end to end for the noisy view and for the Ablate page's three views (relevant,
    noisy, irrelevant), the unmasked side remembered.
Medians over examples; nothing else should run on the machine (see README, timings).
Run: python bench/what_if_speed.py [--examples 8] [--mined cache/mined/KEY] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neurorit import evaluation  # noqa: E402
from neurorit.data import demo_examples  # noqa: E402
from neurorit.masks import NeuronMask, random_like  # noqa: E402
from neurorit.mining import MinedNeurons  # noqa: E402
from neurorit.models import load_model, model_identity  # noqa: E402
from neurorit.neurons import NeuronSet  # noqa: E402


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--mined", default=None, help="a mined folder: its irrelevant-exclusive set is one mask")
    parser.add_argument("--layer", type=int, default=15, help="the whole-layer mask's layer")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="float32 (default, as evaluated) or bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(None, device="cpu", dtype=args.dtype)
    ident = model_identity(model)
    config = evaluation.EvalConfig(views=("relevant", "noisy", "irrelevant"))  # the Ablate page's default
    masks: dict[str, NeuronMask] = {}
    if args.mined:
        mined = MinedNeurons.load(Path(args.mined), model)
        base = mined.named_sets()["irrelevant-exclusive"]
        masks[f"mined irrelevant-exclusive ({len(base)} neurons)"] = NeuronMask.silencing(base, ident)
    else:
        grid = torch.zeros(ident.n_layers * ident.d_mlp, dtype=torch.bool)
        grid[torch.randperm(grid.numel(), generator=torch.Generator().manual_seed(1))[:100]] = True
        base = NeuronSet(grid.view(ident.n_layers, ident.d_mlp), "random")
    masks[f"random, same per-layer counts ({len(base)} neurons)"] = NeuronMask.silencing(random_like(base, seed=0), ident)
    layer = torch.zeros(ident.n_layers, ident.d_mlp, dtype=torch.bool)
    layer[args.layer] = True
    masks[f"all of layer {args.layer} ({ident.d_mlp} neurons)"] = NeuronMask.silencing(NeuronSet(layer, "layer"), ident)

    examples = demo_examples()[: args.examples]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {ident.name} in {args.dtype}; {len(examples)} demo examples; views {config.views}; "
          f"max_new_tokens {config.max_new_tokens}")
    evaluation.what_if(model, examples[0], next(iter(masks.values())), config, views=("noisy",))  # warm-up

    unmasked, unmasked_plain, n_prompt = [], [], []
    for example in examples:
        for prompt in evaluation._what_if_plan(model, example, config, None):
            t0, _ = timed(lambda: evaluation._answer_logprob_ids(model, prompt, config.max_new_tokens, lookup=False))
            t, _ = timed(lambda: evaluation._unmasked_answer(model, prompt, config.max_new_tokens))
            unmasked_plain.append(t0)
            unmasked.append(t)
            n_prompt.append(prompt.n_tokens)
    print(f"unmasked side (once per example and view): median {statistics.median(unmasked_plain):.2f} s one pass a "
          f"token, {statistics.median(unmasked):.2f} s with prompt lookup; prompts "
          f"{min(n_prompt)}-{max(n_prompt)} tokens (median {statistics.median(n_prompt):.0f})")

    print("| mask | masked side: one pass a token | + prompt lookup | + unmasked draft | same tokens & log-prob | "
          "answers changed | what_if, noisy view | what_if, 3 views |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, mask in masks.items():
        plain, looked, drafted, same, changed, one_view, three_views = [], [], [], 0, 0, [], []
        for example in examples:
            plan = evaluation._what_if_plan(model, example, config, None)
            for prompt in plan:
                before = evaluation._unmasked_answer(model, prompt, config.max_new_tokens)
                with mask.applied(model):
                    t0, a = timed(lambda: evaluation._answer_logprob_ids(model, prompt, config.max_new_tokens,
                                                                         lookup=False))
                    t1, b = timed(lambda: evaluation._answer_logprob_ids(model, prompt, config.max_new_tokens))
                    t2, c = timed(lambda: evaluation._answer_logprob_ids(model, prompt, config.max_new_tokens,
                                                                         draft=before[2]))
                plain.append(t0)
                looked.append(t1)
                drafted.append(t2)
                same += a == b == c
                changed += a[0] != before[0]
            one_view.append(timed(lambda: evaluation.what_if(model, example, mask, config, views=("noisy",)))[0])
            three_views.append(timed(lambda: evaluation.what_if(model, example, mask, config))[0])
        n = len(plain)
        print(f"| {name} | {statistics.median(plain):.2f} s | {statistics.median(looked):.2f} s | "
              f"{statistics.median(drafted):.2f} s | {same}/{n} | "
              f"{changed}/{n} | {statistics.median(one_view):.2f} s | {statistics.median(three_views):.2f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
