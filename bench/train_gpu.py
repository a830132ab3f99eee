"""Neuro-RIT against full fine-tuning on a large random-weight model: step time and memory per stage.

Builds a Llama-architecture model of a chosen shape with random weights (no download), wraps it
in a TransformerBridge, gives it random neuron sets of the right shape (the timing does not depend
on which neurons are off), and runs a few optimizer steps of each method through the same training
loop as `neurorit train` (bf16 autocast on a GPU that supports it). Prints, per method and stage:
trainable parameters, mean step time and peak memory. Evaluation, checkpoints and baking are off.

Run on a GPU machine:   python bench/train_gpu.py --shape 3b --steps 8
Smoke test on a CPU:    python bench/train_gpu.py --shape tiny --device cpu --steps 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from neurorit.data import demo_examples  # noqa: E402
from neurorit.mining import MinedNeurons  # noqa: E402
from neurorit.models import bundled_model_dir, model_identity, pick_device  # noqa: E402
from neurorit.neurons import NeuronSet  # noqa: E402
from neurorit.training import TrainConfig, run_training  # noqa: E402

# (hidden, intermediate, layers, heads, kv heads)
SHAPES = {
    "tiny": (64, 128, 4, 4, 2),
    "1b": (2048, 8192, 16, 32, 8),  # Llama-3.2-1B-like
    "3b": (3072, 8192, 28, 24, 8),  # Llama-3.2-3B-like
    "8b": (4096, 14336, 32, 32, 8),  # Llama-3-8B-like (full fine-tuning needs > 100 GB)
}


def build_model(shape: str, device: torch.device, tokenizer):  # type: ignore[no-untyped-def]
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, LlamaConfig

    hidden, inter, layers, heads, kv = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=4096,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    bridge = TransformerBridge.boot_transformers(f"random-llama-{shape}", hf_model=model, tokenizer=tokenizer, device=device)
    bridge.eval()
    return bridge


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    parser.add_argument("--device", default=None)
    parser.add_argument("--methods", default="neuro_rit,full")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    device = pick_device(args.device)
    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"device: {device} ({gpu}), torch {torch.__version__}, shape {args.shape} {SHAPES[args.shape]}")
    examples = demo_examples()
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            model = build_model(args.shape, device, tokenizer)
            n_params = sum(p.numel() for p in model.original_model.parameters())
            mined = random_mined(model, Path(tmp) / f"mined-{method}")
            config = TrainConfig(
                method=method, device=str(device), mined=str(mined), max_steps=args.steps,
                batch_size=args.batch_size, grad_accum=1, eval_before=False, eval_after=False, bake=False,
                dev_every=0, checkpoint_every=10**6, warmup_steps=0,
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            report = run_training(model, examples, config, Path(tmp) / f"run-{method}")
            wall = time.perf_counter() - start
            print(f"{method}: {n_params / 1e9:.2f} B parameters, {wall:.1f} s in all")
            for stage in report.stages:
                print(f"  stage {stage.name}: {stage.steps} steps, trainable {stage.trainable_params:,} "
                      f"({stage.trainable_share:.2%}), {stage.step_time_s:.3f} s/step, peak memory "
                      f"{stage.peak_memory_bytes / 2**30:.2f} GiB ({report.memory_measure}), final loss {stage.final_loss:.3f}")
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
