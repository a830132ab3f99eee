"""Multi-process launch: the Accelerate config a data-parallel run writes, and its command.

Owns: the `accelerate launch` config (data parallel on several GPUs; or FSDP for a model that does
not fit one card: full sharding, wrapping each decoder layer, with `use_orig_params` because
Neuro-RIT freezes most parameters), the layer class FSDP wraps (the model's own
`_no_split_modules`), the command line that launches `neurorit train` with it, and
`launch_data_parallel`, which writes the configs into the run folder and runs that command
(`accelerate launch` on GPUs; on CPUs, where accelerate needs MPI for several processes,
`torch.distributed.run`, which accelerate itself uses on GPUs). Status: data parallel runs (the
loop joins the process group the launcher describes, world.py; tested with two CPU processes);
the FSDP config is written and checked, but the loop refuses an FSDP launch because it does not
shard parameters. Must not: touch GPUs beyond counting them.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from neurorit import store
from neurorit.errors import ConfigError
from neurorit.models import pick_device

MIXED_PRECISIONS = ("no", "bf16", "fp16")


def layer_class_to_wrap(model_or_hf: Any) -> str:
    """The decoder layer class FSDP wraps, from the Hugging Face model's `_no_split_modules`."""
    hf = getattr(model_or_hf, "original_model", model_or_hf)
    names = list(getattr(hf, "_no_split_modules", None) or [])
    if not names:
        raise ConfigError(
            f"{type(hf).__name__} declares no _no_split_modules; pass layer_cls (e.g. 'LlamaDecoderLayer') explicitly."
        )
    return ",".join(names)


def accelerate_config(
    *,
    num_processes: int,
    fsdp: bool = False,
    mixed_precision: str = "bf16",
    layer_cls: str | None = None,
    num_machines: int = 1,
    cpu_offload: bool = False,
) -> dict[str, Any]:
    """The content of an `accelerate launch --config_file` YAML for one machine with several GPUs."""
    if not isinstance(num_processes, int) or num_processes < 1:
        raise ConfigError.field("accelerate_config", "num_processes", num_processes, "an integer >= 1 (GPUs)")
    if mixed_precision not in MIXED_PRECISIONS:
        raise ConfigError.field("accelerate_config", "mixed_precision", mixed_precision, f"one of {list(MIXED_PRECISIONS)}")
    if fsdp and not layer_cls:
        raise ConfigError.field("accelerate_config", "layer_cls", layer_cls,
                                "the decoder layer class to wrap with FSDP (layer_class_to_wrap(model))")
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "debug": False,
        "distributed_type": "FSDP" if fsdp else ("MULTI_GPU" if num_processes > 1 else "NO"),
        "downcast_bf16": "no",
        "gpu_ids": "all",
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": mixed_precision,
        "num_machines": num_machines,
        "num_processes": num_processes,
        "rdzv_backend": "static",
        "same_network": True,
        "use_cpu": False,
    }
    if fsdp:
        config["fsdp_config"] = {
            "fsdp_version": 1,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": layer_cls,
            "fsdp_sharding_strategy": "FULL_SHARD",
            "fsdp_backward_prefetch": "BACKWARD_PRE",
            "fsdp_forward_prefetch": False,
            "fsdp_offload_params": cpu_offload,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",  # checkpoints per rank; FULL at the end for bake
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,
            "fsdp_use_orig_params": True,  # frozen and trainable parameters share flat buffers
        }
    return config


def write_accelerate_config(path: Path, **kwargs: Any) -> Path:
    """Write accelerate_config(**kwargs) as YAML (atomically); returns the path."""
    path = Path(path)
    store.write_text_atomic(path, yaml.safe_dump(accelerate_config(**kwargs), sort_keys=True))
    return path


def _train_argv(train_config_path: Path, run_dir: Path, job_id: str | None) -> list[str]:
    job = ["--job-id", job_id] if job_id else []
    return ["-m", "neurorit", "train", "--config", str(train_config_path), "--out", str(run_dir), "--quiet", *job]


def launch_command(accelerate_config_path: Path, train_config_path: Path, run_dir: Path,
                   job_id: str | None = None) -> list[str]:
    """`accelerate launch --config_file C -m neurorit train --config T --out R` as an argv list."""
    return ["accelerate", "launch", "--config_file", str(accelerate_config_path),
            *_train_argv(train_config_path, run_dir, job_id)]


def data_parallel_command(config: Any, run_dir: Path, processes: int, job_id: str | None = None) -> list[str]:
    """Write run_dir/launch/{train.yaml, accelerate.yaml} and return the command that trains with
    `processes` data-parallel processes (one per GPU on a GPU machine)."""
    if not isinstance(processes, int) or processes < 2:
        raise ConfigError.field("launch", "processes", processes, "an integer >= 2 (1 runs in this process)")
    device = pick_device(config.device)
    launch = Path(run_dir) / "launch"
    train_yaml = launch / "train.yaml"
    store.write_text_atomic(train_yaml, yaml.safe_dump(config.to_dict(), sort_keys=True))
    if device.type == "cuda":
        have = torch.cuda.device_count()
        if have < processes:
            raise ConfigError(f"{processes} processes asked for, this machine has {have} GPU(s); expected at most {have}.")
        bf16 = torch.cuda.is_bf16_supported() and config.autocast
        accelerate_yaml = write_accelerate_config(launch / "accelerate.yaml", num_processes=processes,
                                                  mixed_precision="bf16" if bf16 else "no")
        argv = launch_command(accelerate_yaml, train_yaml, run_dir, job_id)
        return [sys.executable, "-m", "accelerate.commands.launch", *argv[2:]]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            *_train_argv(train_yaml, run_dir, job_id)]


def launch_data_parallel(config: Any, run_dir: Path, processes: int, job_id: str | None = None) -> int:
    """Run data_parallel_command in the foreground; its exit status (0: every rank finished)."""
    return subprocess.run(data_parallel_command(config, run_dir, processes, job_id), check=False).returncode


def launch_line(argv: list[str]) -> str:
    """The command as one shell line (for the README and the page)."""
    return shlex.join(argv)
