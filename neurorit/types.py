"""Named tensor shapes and small shared type aliases.

Owns: the jaxtyping aliases used in signatures and dataclass fields, and the progress callback
type. Must not: hold logic.
"""

from __future__ import annotations

from typing import Callable

from jaxtyping import Bool, Float, Int
from torch import Tensor

NeuronGrid = Float[Tensor, "n_layers d_mlp"]
"""One number per neuron: scores, scales, counts."""
NeuronMaskGrid = Bool[Tensor, "n_layers d_mlp"]
"""One flag per neuron: membership in a neuron set."""
LayerVector = Float[Tensor, "n_layers"]
TokenIds = Int[Tensor, "pos"]
BatchTokenIds = Int[Tensor, "batch pos"]
Logits = Float[Tensor, "batch pos d_vocab"]
MlpActs = Float[Tensor, "batch pos d_mlp"]

ProgressFn = Callable[[int, int, str], None]
"""on_progress(done, total, message): called by long work after each unit of progress."""


def no_progress(done: int, total: int, message: str) -> None:
    """The default progress callback: does nothing."""
