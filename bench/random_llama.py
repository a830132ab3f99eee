"""Random-weight Llama models of real shapes, in a TransformerBridge, for the GPU benchmarks.

Nothing is downloaded: the config is built here, the weights are drawn from a seeded generator,
and the tokenizer is the bundled model's (or a folder given with --tokenizer, e.g. one copied to
a machine without the bundled GGUF).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# (hidden, intermediate, layers, heads, kv heads)
SHAPES = {
    "tiny": (64, 128, 4, 4, 2),
    "smol": (576, 1536, 30, 9, 3),  # SmolLM2-135M (the bundled model's shape)
    "1b": (2048, 8192, 16, 32, 8),  # Llama-3.2-1B-like
    "3b": (3072, 8192, 28, 24, 8),  # Llama-3.2-3B-like
    "8b": (4096, 14336, 32, 32, 8),  # Llama-3-8B-like
}


def load_tokenizer(folder: str | None) -> Any:
    """The tokenizer from `folder`, else the bundled model's."""
    from transformers import AutoTokenizer

    if folder is None:
        from neurorit.models import bundled_model_dir

        folder = str(bundled_model_dir())
    return AutoTokenizer.from_pretrained(Path(folder))


def build_random_bridge(shape: str, device: torch.device, tokenizer: Any, dtype: torch.dtype = torch.float32) -> Any:
    """A seeded random Llama of `shape` on `device`, wrapped in a TransformerBridge (eval mode)."""
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
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    bridge = TransformerBridge.boot_transformers(f"random-llama-{shape}", hf_model=model, tokenizer=tokenizer,
                                                 device=device)
    bridge.eval()
    return bridge


def n_parameters(bridge: Any) -> int:
    return sum(p.numel() for p in bridge.original_model.parameters())
