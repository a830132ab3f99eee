"""The workbench's side of background jobs: submit a mining job, read and cancel job records.

Owns: writing a mining job's inputs (the chosen examples as neurorit JSON lines and a YAML config
with the prompt, mining and selection sections) under `cache/job-inputs/<hash>/`, the argv of
`python -m neurorit mine` for them (`mine_argv`, pure), and thin calls into `neurorit.jobs`
(`submit`, `get`, `list_jobs`; cancelling is app.progress.cancel_button), and `repair_table`
(neurorit.job_recovery: a corrupt job table kept aside and rebuilt from disk). The job runs in its own process and survives the page
and the server; the record in `cache/jobs.sqlite` is the only link. Must not: import streamlit,
or run the mining itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import yaml

from neurorit import store
from neurorit.attribution import MiningConfig
from neurorit.configs import stable_hash
from neurorit.data import RagExample, examples_fingerprint, save_examples
from neurorit.neurons import SelectionRule
from neurorit.prompts import PromptConfig

KIND = "mine"


def _jobs() -> Any:
    from neurorit import jobs  # imported on use: the jobs table lives under the cache root

    return jobs


def write_inputs(
    examples: Sequence[RagExample], prompt: PromptConfig, mining: MiningConfig, rule: SelectionRule
) -> tuple[Path, Path]:
    """The examples file and the YAML config a mining job reads (content-addressed, reused)."""
    key = stable_hash(examples_fingerprint(examples), prompt, mining, rule)
    folder = store.artifact_dir("job-inputs", key)
    data, config = folder / "examples.jsonl", folder / "config.yaml"
    if not (data.is_file() and config.is_file()):
        with store.atomic_dir(folder) as tmp:
            save_examples(tmp / "examples.jsonl", examples)
            sections = {"prompt": prompt.to_dict(), "mining": mining.to_dict(), "selection": rule.to_dict()}
            (tmp / "config.yaml").write_text(yaml.safe_dump(sections, sort_keys=True))
    return data, config


def mine_argv(
    data: Path | str, config: Path | str, *, model: str | None = None, device: str | None = None,
    dtype: str | None = None, preview: bool = False, irrelevant_target: str | None = None,
) -> list[str]:
    """`neurorit mine` arguments for a job (the config file carries prompt, mining and selection)."""
    argv = ["mine", "--data", str(data), "--format", "neurorit", "--config", str(config), "--quiet"]
    if model:
        argv += ["--model", model]
    if device:
        argv += ["--device", device]
    if dtype:
        argv += ["--dtype", dtype]
    if preview:
        argv.append("--preview")
    if irrelevant_target:
        argv += ["--irrelevant-target", irrelevant_target]
    return argv


def submit_mine(
    examples: Sequence[RagExample], prompt: PromptConfig, mining: MiningConfig, rule: SelectionRule, *,
    model: str | None = None, device: str | None = None, dtype: str | None = None, preview: bool = False,
    irrelevant_target: str | None = None,
) -> Any:
    """Write the inputs and queue the mining job; returns its Job record."""
    data, config = write_inputs(examples, prompt, mining, rule)
    argv = mine_argv(data, config, model=model, device=device, dtype=dtype, preview=preview,
                     irrelevant_target=irrelevant_target)
    return _jobs().submit(KIND, argv)


def list_jobs(limit: int = 20) -> list[Any]:
    return _jobs().list_jobs(kind=KIND, limit=limit)


def get(job_id: str) -> Any:
    return _jobs().get(job_id)


def repair_table() -> Any:
    """Keep a corrupt `cache/jobs.sqlite` aside and rebuild it from the job logs and run folders on disk
    (what `neurorit jobs repair` runs); returns the TableRepair."""
    from neurorit.job_recovery import repair_job_table

    return repair_job_table()


def is_final(job: Any) -> bool:
    from neurorit.jobs import FINAL_STATES

    return job.state in FINAL_STATES
