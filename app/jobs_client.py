"""The workbench's side of background jobs: submit a mining job, read and cancel job records.

Owns: writing the chosen examples as neurorit JSON lines under `cache/job-inputs/<hash>/`
(`write_examples`; `write_inputs` adds the prompt section an index job reads), submitting a
`MiningSpec` on them (`submit_mine`: the spec writes its YAML and queues `neurorit mine`), and thin
calls into `neurorit.jobs` (`get`, `list_jobs`; cancelling is app.progress.cancel_button), and
`repair_table` (neurorit.job_recovery: a corrupt job table kept aside and rebuilt from disk). The
job runs in its own process and survives the page and the server; the record in
`cache/jobs.sqlite` is the only link. Must not: import streamlit, or run the mining itself.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import yaml

from neurorit import store
from neurorit.configs import stable_hash
from neurorit.data import RagExample, examples_fingerprint, save_examples
from neurorit.mining_spec import MiningSpec
from neurorit.prompts import PromptConfig

KIND = "mine"


def _jobs() -> Any:
    from neurorit import jobs  # imported on use: the jobs table lives under the cache root

    return jobs


def write_examples(examples: Sequence[RagExample]) -> Path:
    """The examples as a neurorit JSON-lines file a job reads (content-addressed, reused)."""
    folder = store.artifact_dir("job-inputs", examples_fingerprint(examples))
    data = folder / "examples.jsonl"
    if not data.is_file():
        with store.atomic_dir(folder) as tmp:
            save_examples(tmp / "examples.jsonl", examples)
    return data


def write_inputs(examples: Sequence[RagExample], prompt: PromptConfig) -> tuple[Path, Path]:
    """The examples file and a YAML config with the prompt section (what `neurorit index --config` reads)."""
    data = write_examples(examples)
    config = data.parent / f"prompt-{stable_hash(prompt, length=12)}.yaml"
    if not config.is_file():
        store.write_text_atomic(config, yaml.safe_dump({"prompt": prompt.to_dict()}, sort_keys=True))
    return data, config


def submit_mine(examples: Sequence[RagExample], spec: MiningSpec) -> Any:
    """Queue `neurorit mine` on these examples with the spec's model, prompt, attribution and selection."""
    return dataclasses.replace(spec, data=str(write_examples(examples)), format="neurorit").submit()


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
