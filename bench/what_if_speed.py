"""What-if latency on the bundled model: the workbench's "answer before / after a mask" for one example.

For each of --examples demo examples and each mask (a mined irrelevant-exclusive set when
--mined is given, a random set of the same per-layer size, and one whole layer), it times:
  - the unmasked side (answer + gold log-prob), computed once per example and view, through the
    bridge and on the fast path (neurorit/fastpath.py);
  - the masked side on the fast path decoded one pass a token (no proposals), with prompt-lookup
    proposals, with those plus the unmasked answer as a draft, and with those plus the unmasked
    prefill replayed below the mask's lowest layer (what `what_if` does); and the same work
    through the bridge with the mask's hooks (the path before the fast path). It checks that all
    give the same tokens and log-probs (1e-4);
  - `what_if` end to end for the noisy view and for the Ablate page's three views (relevant,
    noisy, irrelevant), the unmasked side remembered, on the fast path and through the bridge;
  - the Ablate page's batch (`ablate`: base, the first mask, its random control) on --batch
    examples, against three `evaluate` runs on the fast path and through the bridge.
Medians over examples; nothing else should run on the machine (see README, timings).
Run: python bench/what_if_speed.py [--examples 8] [--mined cache/mined/KEY] [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from neurorit import decoding, evaluation  # noqa: E402
from neurorit.data import demo_examples  # noqa: E402
from neurorit.masks import NeuronMask  # noqa: E402
from neurorit.mining import MinedNeurons  # noqa: E402
from neurorit.models import load_model, model_identity  # noqa: E402
from neurorit.neurons import NeuronSet  # noqa: E402


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


@contextlib.contextmanager
def _fastpath_off():  # type: ignore[no-untyped-def]
    """Inside: decoding goes through the bridge (NEURORIT_FASTPATH=0)."""
    before = os.environ.get("NEURORIT_FASTPATH")
    os.environ["NEURORIT_FASTPATH"] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NEURORIT_FASTPATH")
        else:
            os.environ["NEURORIT_FASTPATH"] = before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--mined", default=None, help="a mined folder: its irrelevant-exclusive set is one mask")
    parser.add_argument("--layer", type=int, default=15, help="the whole-layer mask's layer")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=4, help="examples in the ablation (batch) timing")
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
    first = next(iter(masks.values())) if masks else NeuronMask.silencing(base, ident)
    masks[f"random, same per-layer counts ({len(base)} neurons)"] = first.random_control(0)
    layer = torch.zeros(ident.n_layers, ident.d_mlp, dtype=torch.bool)
    layer[args.layer] = True
    masks[f"all of layer {args.layer} ({ident.d_mlp} neurons)"] = NeuronMask.silencing(NeuronSet(layer, "layer"), ident)

    examples = demo_examples()[: args.examples]
    print(f"machine: {describe()}; {ident.name} in {args.dtype}; {len(examples)} demo examples; views {config.views}; "
          f"max_new_tokens {config.max_new_tokens}")
    evaluation.what_if(model, examples[0], next(iter(masks.values())), config, views=("noisy",))  # warm-up

    unmasked_bridge, unmasked_fast, n_prompt = [], [], []
    for example in examples:
        for prompt in evaluation.what_if_prompts(model, example, config, None):
            with _fastpath_off():
                t0, a = timed(lambda: decoding.decode_and_score(model, prompt, config.max_new_tokens))
            t1, b = timed(lambda: decoding.decode_and_score(model, prompt, config.max_new_tokens))
            assert a[0] == b[0] and abs(a[1] - b[1]) < 1e-4, (a, b)
            unmasked_bridge.append(t0)
            unmasked_fast.append(t1)
            n_prompt.append(prompt.n_tokens)
    print(f"unmasked side (once per example and view): median {statistics.median(unmasked_bridge):.2f} s through the "
          f"bridge, {statistics.median(unmasked_fast):.2f} s on the fast path; prompts "
          f"{min(n_prompt)}-{max(n_prompt)} tokens (median {statistics.median(n_prompt):.0f})")

    print("| mask | lowest layer | masked side, fast path: one pass a token | + prompt lookup | + unmasked draft | "
          "+ prefill replay | same work through the bridge | same tokens & log-prob | answers changed | "
          "what_if, noisy view | what_if, 3 views | what_if, 3 views, bridge |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    n_ctx = config.max_new_tokens
    for name, mask in masks.items():
        cols: dict[str, list[float]] = {k: [] for k in ("plain", "lookup", "draft", "replay", "bridge", "one", "three", "three_bridge")}
        same = changed = 0
        for example in examples:
            plan = evaluation.what_if_prompts(model, example, config, None)
            decoding.ANSWER_CACHE.clear()  # as when the example is picked: the unmasked side runs, recorded
            for prompt in plan:
                before = decoding.ANSWER_CACHE.unmasked(model, prompt, n_ctx)
                replay = decoding.ANSWER_CACHE.replay(model, prompt, n_ctx)
                with torch.no_grad(), decoding.step_engine(model, mask) as new:
                    t0, a = timed(lambda: decoding.decode_and_score(model, prompt, n_ctx, lookup=False, steps=new()))
                    t1, b = timed(lambda: decoding.decode_and_score(model, prompt, n_ctx, steps=new()))
                    t2, c = timed(lambda: decoding.decode_and_score(model, prompt, n_ctx, draft=before[2], steps=new()))
                    t3, d = timed(lambda: decoding.decode_and_score(model, prompt, n_ctx, draft=before[2],
                                                                      steps=new(replay=replay)))
                with _fastpath_off(), torch.no_grad(), decoding.step_engine(model, mask) as new:
                    t4, e = timed(lambda: decoding.decode_and_score(model, prompt, n_ctx, draft=before[2], steps=new()))
                for k, t in zip(("plain", "lookup", "draft", "replay", "bridge"), (t0, t1, t2, t3, t4)):
                    cols[k].append(t)
                same += all(x[0] == a[0] and abs(x[1] - a[1]) < 1e-4 for x in (b, c, d, e))
                changed += a[0] != before[0]
            cols["one"].append(timed(lambda: evaluation.what_if(model, example, mask, config, views=("noisy",)))[0])
            cols["three"].append(timed(lambda: evaluation.what_if(model, example, mask, config))[0])
            with _fastpath_off():
                cols["three_bridge"].append(timed(lambda: evaluation.what_if(model, example, mask, config))[0])
        med = {k: statistics.median(v) for k, v in cols.items()}
        n = len(cols["plain"])
        print(f"| {name} | {min(mask.layers)} | {med['plain']:.2f} s | {med['lookup']:.2f} s | {med['draft']:.2f} s | "
              f"{med['replay']:.2f} s | {med['bridge']:.2f} s | {same}/{n} | {changed}/{n} | {med['one']:.2f} s (max {max(cols['one']):.2f}) | "
              f"{med['three']:.2f} s | {med['three_bridge']:.2f} s |")
    batch = examples[: args.batch]
    mask = next(iter(masks.values()))
    control = mask.random_control(0)

    def three_runs() -> list:  # type: ignore[type-arg]
        return [evaluation.evaluate(model, batch, config, mask=m) for m in (None, mask, control)]

    decoding.ANSWER_CACHE.clear()
    t_ablate, report = timed(lambda: evaluation.ablate(model, batch, config, mask, control_seed=0))
    t_three, runs = timed(three_runs)
    with _fastpath_off():
        t_bridge, bridge_runs = timed(three_runs)
    agree = sum(a.answer == b.answer == c.answer and abs(a.logprob - c.logprob) < 1e-4
                for r, other, old in zip((report.base, report.masked, report.control), runs, bridge_runs)
                for a, b, c in zip(r.results, other.results, old.results))
    n_prompts = len(report.base.results)
    print(f"\nablate ({len(batch)} examples x 3 views: base, {next(iter(masks))}, its random control; {3 * n_prompts} "
          f"answers): {t_ablate:.1f} s prompt by prompt (drafted, replayed); {t_three:.1f} s as three evaluate runs on "
          f"the fast path; {t_bridge:.1f} s as three evaluate runs through the bridge (ratio {t_bridge / t_ablate:.2f}); "
          f"same answers & log-probs in all three: {agree}/{3 * n_prompts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
