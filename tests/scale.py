"""Float comparisons in units of the values' scale.

Kernels differ between CPUs (AVX-512 vs AVX2, MKL vs oneDNN paths) and between batch shapes, so the
summation order, and with it the last bits of every float, differ too. An absolute tolerance tuned
on one machine then fails on another, and a relative tolerance per element fails on values near
zero. These helpers bound the worst difference by a fraction of the largest magnitude in the
expected values: `max|actual - expected| <= rel * max|expected|`.
"""

from __future__ import annotations

import numpy as np
import torch


def scale_error(actual: torch.Tensor | np.ndarray | float, expected: torch.Tensor | np.ndarray | float) -> float:
    """The worst absolute difference, in units of the expected values' largest magnitude."""
    got = torch.as_tensor(np.asarray(actual) if not isinstance(actual, torch.Tensor) else actual).double()
    want = torch.as_tensor(np.asarray(expected) if not isinstance(expected, torch.Tensor) else expected).double()
    assert got.shape == want.shape, f"shapes differ: {tuple(got.shape)} vs {tuple(want.shape)}"
    scale = float(want.abs().max()) if want.numel() else 0.0
    diff = float((got - want).abs().max()) if want.numel() else 0.0
    if scale == 0.0:
        return diff  # all-zero expectation: the difference itself must be (near) zero
    return diff / scale


def assert_close_in_scale(actual, expected, rel: float = 1e-4) -> None:  # type: ignore[no-untyped-def]
    """max|actual - expected| <= rel * max|expected| (both converted to float64)."""
    error = scale_error(actual, expected)
    assert error <= rel, f"worst difference is {error:.3g} of the values' scale (allowed {rel:g})"
