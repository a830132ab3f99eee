"""Activation index of the bundled model: build time, bytes per neuron, size on disk, card open time.

Builds the index (neurorit.activations.build_index) of SmolLM2-135M-Instruct (30 x 1536 neurons)
on the first --limit NQ-open examples of ../shared/data/nq-open-oracle.jsonl.gz (each given 4
irrelevant passages from other questions, as bench/ig_speed.py does) in three views (relevant,
noisy, irrelevant by default), saves it in the cache (cache/activations/<key>/), and prints:
  - the machine, the build time (and per prompt), the prompts and tokens indexed,
  - bytes per neuron (from the stored layout) and the index's size on disk,
  - the time to load the index, and to open a card from it (mean over --cards neurons drawn with
    a fixed seed; the card from the index and the weights alone, no forward pass),
  - with --switch-off N, the time of a card that also switches the neuron off alone on N examples.
Results go to --out (default bench/results/activation_index/) as a JSON file and the printed text.
Run: python bench/activation_index.py [--limit 200] [--views relevant,noisy,irrelevant]
     [--device cpu] [--dtype float32] [--threads N] [--cards 5] [--switch-off 0] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import describe  # noqa: E402
from neurorit import store  # noqa: E402
from neurorit.activations import INDEX_KIND, build_index, index_dir, load_index  # noqa: E402
from neurorit.data import load_examples  # noqa: E402
from neurorit.models import load_model  # noqa: E402
from neurorit.neuron_card import neuron_card  # noqa: E402
from neurorit.prompts import PromptConfig, add_distractors  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "nq-open-oracle.jsonl.gz"
RESULTS = Path(__file__).resolve().parent / "results" / "activation_index"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=200, help="NQ-open examples (default 200)")
    parser.add_argument("--views", default="relevant,noisy,irrelevant")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on a GPU, else float32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cards", type=int, default=5, help="neurons whose card open time is averaged")
    parser.add_argument("--switch-off", type=int, default=0, help="also time cards with switch-off on N examples")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.getLogger("neurorit.prompts").setLevel(logging.ERROR)  # long NQ passages are cut to 200 tokens
    if args.threads:
        torch.set_num_threads(args.threads)
    if not SHARED.is_file():
        print(f"{SHARED} is absent: this benchmark needs the NQ-open oracle file.", file=sys.stderr)
        return 2
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    model = load_model(None, device=args.device, dtype=args.dtype)
    parameter = next(iter(model.parameters()))
    examples = add_distractors(load_examples(SHARED, limit=args.limit), 4, seed=0)
    config = PromptConfig()
    n_layers, d_mlp = int(model.cfg.n_layers), int(model.cfg.d_mlp)
    say(f"machine: {describe()}; model on {parameter.device} in {parameter.dtype}")
    say(f"data: {len(examples)} NQ-open examples (+4 distractors from other questions) x {len(views)} views "
        f"({', '.join(views)}); {n_layers} layers x {d_mlp} neurons; top_k {args.top_k}, window {args.window}")

    start = time.perf_counter()
    index = build_index(model, examples, views=views, prompt_config=config, top_k=args.top_k, window=args.window,
                        use_cache=False)
    if parameter.device.type == "cuda":
        torch.cuda.synchronize()
    build_s = time.perf_counter() - start
    n_prompts = int((index.prompt_length > 0).sum())
    n_tokens = int(index.prompt_length.sum())
    say(f"build: {build_s:.1f} s for {n_prompts} prompts ({n_tokens} tokens): {build_s / n_prompts:.3f} s a prompt, "
        f"{1000 * build_s / n_tokens:.2f} ms a token")

    folder = store.save_cached(INDEX_KIND, index.key(), index.save)
    assert folder == index_dir(index)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    per_neuron = index.bytes_per_neuron()
    say(f"bytes per neuron: {per_neuron} ({per_neuron * n_layers * d_mlp / 2**20:.1f} MiB for all neurons); "
        f"index on disk: {size / 2**20:.1f} MiB in {folder}")

    start = time.perf_counter()
    loaded = load_index(folder, model)
    load_s = time.perf_counter() - start
    say(f"index load: {load_s:.2f} s")

    rng = random.Random(0)
    neurons = [(rng.randrange(n_layers), rng.randrange(d_mlp)) for _ in range(args.cards)]
    neuron_card(model, *neurons[0], activation_index=loaded)  # warm-up (first use of the weights)
    times = []
    for layer, i in neurons:
        start = time.perf_counter()
        neuron_card(model, layer, i, activation_index=loaded)
        times.append(time.perf_counter() - start)
    card_s = sum(times) / len(times)
    say(f"card open (index + weights, no forward): mean {1000 * card_s:.0f} ms over {len(neurons)} neurons "
        f"({', '.join(f'{l}:{i}' for l, i in neurons)}; " + ", ".join(f"{1000 * t:.0f}" for t in times) + " ms)")
    switch_s = None
    if args.switch_off > 0:
        times = []
        for layer, i in neurons:
            start = time.perf_counter()
            neuron_card(model, layer, i, activation_index=loaded, examples=examples, example=examples[0],
                        n_switch_off=args.switch_off)
            times.append(time.perf_counter() - start)
        switch_s = sum(times) / len(times)
        say(f"card with direct effect and switch-off on {args.switch_off} noisy examples: mean {switch_s:.2f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"{len(examples)}x{len(views)}-{parameter.device.type}-{str(parameter.dtype).replace('torch.', '')}"
    record = {
        "machine": describe(), "device": str(parameter.device), "dtype": str(parameter.dtype),
        "n_examples": len(examples), "views": list(views), "top_k": args.top_k, "window": args.window,
        "n_prompts": n_prompts, "n_tokens": n_tokens, "build_s": build_s, "bytes_per_neuron": per_neuron,
        "size_on_disk_bytes": size, "index_load_s": load_s, "card_open_s": card_s, "card_neurons": neurons,
        "card_with_switch_off_s": switch_s, "switch_off_examples": args.switch_off, "index_key": index.key(),
    }
    store.write_json(args.out / f"{tag}.json", record)
    store.write_text_atomic(args.out / f"{tag}.txt", "\n".join(lines) + "\n")
    print(f"results: {args.out / tag}.json / .txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
