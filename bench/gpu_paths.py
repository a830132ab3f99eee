"""Every engine path once on a GPU, on a random-weight model: does it run there, and how fast.

Boots a random-weight Llama of a chosen shape (bench/random_llama.py) on the device in the
device's default precision (bf16 where supported) and runs, timing each: mining a few demo
examples (IG, all layers, both views), the irrelevant-exclusive mask, a what-if (unmasked side,
masked side drafted by it), a small evaluation with the mask, and the bake into a plain Hugging
Face folder, reloaded with transformers and compared with the hooked model (greedy tokens and
logits). Prints one line per step and fails loudly where a path does not work on the device.
Run on a GPU machine:  python bench/gpu_paths.py --shape smol
Smoke test on a CPU:   python bench/gpu_paths.py --shape tiny --device cpu
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ig_gpu import timed  # noqa: E402
from random_llama import SHAPES, build_random_bridge, load_tokenizer  # noqa: E402

from neurorit import decoding, evaluation  # noqa: E402
from neurorit.attribution import AttributionConfig  # noqa: E402
from neurorit.data import demo_examples  # noqa: E402
from neurorit.masks import NeuronMask, bake  # noqa: E402
from neurorit.mining import mine  # noqa: E402
from neurorit.models import model_identity, pick_device, pick_dtype  # noqa: E402
from neurorit.neurons import SelectionRule  # noqa: E402
from neurorit.prompts import PromptConfig, build_prompt  # noqa: E402


def step(name: str, fn, device: torch.device):  # type: ignore[no-untyped-def]
    seconds, out = timed(fn, device, 1)
    print(f"{name}: {seconds:.2f} s", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smol")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: bf16 on a GPU that supports it, else float32")
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--tokenizer", default=None)
    args = parser.parse_args()
    device = pick_device(args.device)
    dtype = pick_dtype(device, args.dtype)
    tokenizer = load_tokenizer(args.tokenizer)
    model = build_random_bridge(args.shape, device, tokenizer, dtype=dtype)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), {dtype}, "
          f"shape {args.shape}, torch {torch.__version__}", flush=True)
    examples = demo_examples()[: args.examples]
    prompts = PromptConfig(n_distractors=2)
    mined = step(f"mine {len(examples)} examples x 2 views (IG, all layers, m = 20, 64 rows a pass)",
                 lambda: mine(model, examples, AttributionConfig(), SelectionRule(mode="top_k", top_k=200, support=0.5),
                              prompts, use_cache=False), device)
    print(f"  {mined.summary()}")
    sets = mined.named_sets()
    chosen = sets["irrelevant-exclusive"] if len(sets["irrelevant-exclusive"]) else sets["irrelevant"]
    mask = NeuronMask.silencing(chosen, model_identity(model))
    config = evaluation.EvalConfig(views=("relevant", "noisy", "irrelevant"), max_new_tokens=16, prompt=prompts)
    step("unmasked answers, 3 views", lambda: evaluation.answers_without_mask(model, examples[0], config), device)
    results = step(f"what-if with {len(mask)} neurons off, 3 views", lambda: evaluation.what_if(model, examples[0], mask, config), device)
    for r in results:
        print(f"  {r.view}: logprob {r.logprob_before:.3f} -> {r.logprob_after:.3f}")
    report = step(f"evaluate {len(examples)} examples x 3 views with the mask",
                  lambda: evaluation.evaluate(model, examples, config, mask=mask), device)
    print(report.table().to_string(index=False))
    with tempfile.TemporaryDirectory() as tmp:
        folder = step("bake", lambda: bake(mask, model, Path(tmp) / "baked"), device)
        from transformers import AutoModelForCausalLM

        plain = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
        prompt = build_prompt(examples[0], "noisy", prompts, tokenizer)
        ids = torch.tensor([list(prompt.token_ids)], device=device)
        with torch.no_grad(), mask.applied(model):
            hooked = model(ids)[0, -1].float()
            hooked_tokens = decoding.generate_tokens(model, prompt.token_ids, max_new_tokens=8)
        with torch.no_grad():
            baked = plain(input_ids=ids).logits[0, -1].float()
            out = plain.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
        diff = float((hooked - baked).abs().max() / hooked.abs().max())
        print(f"baked vs hooked: max relative logit difference {diff:.2e}; greedy tokens equal for the first "
              f"{next((i for i, (a, b) in enumerate(zip(hooked_tokens, out)) if a != b), min(len(out), len(hooked_tokens)))}"
              f" of {len(hooked_tokens)}", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
