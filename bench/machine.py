"""What machine a benchmark ran on, in one line: CPU model, the kernel family torch dispatches to
(AVX512 / AVX2 / ...; ATEN_CPU_CAPABILITY=avx2 forces the AVX2 paths), cores, torch and threads.

CPUs of one machine kind differ (Intel Xeon with AVX-512, AMD EPYC with AVX2) and some kernels run
2-10x apart on them, so every timing printed by bench/ says which one it came from.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    forced = os.environ.get("ATEN_CPU_CAPABILITY")
    kernels = f"{capability} kernels" + (f" (ATEN_CPU_CAPABILITY={forced})" if forced else "")
    return (f"{cpu_model()}, {kernels}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
