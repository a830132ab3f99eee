"""The workbench's side of studies: study files, study folders and their background jobs.

Owns: the example study files (`studies/*.yaml`), checking a study written in the page (YAML text
-> StudySpec) and saving it content-addressed under `cache/study-specs/`, submitting it as a
background job (neurorit.study.submit_study), listing the study folders under `cache/studies/`
with their progress, and the job that runs a folder. Must not: import streamlit or run a study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from neurorit import store
from neurorit.configs import stable_hash
from neurorit.errors import ArtifactError, ConfigError
from neurorit.study import SPEC_FILE, StudySpec, default_study_dir, read_results, study_status, submit_study

EXAMPLES_DIR = store.PROJECT_ROOT / "studies"
KIND = "study"


def example_files() -> dict[str, Path]:
    """The example study files, by name."""
    return {p.stem: p for p in sorted(EXAMPLES_DIR.glob("*.yaml"))} if EXAMPLES_DIR.is_dir() else {}


def parse_spec(text: str) -> StudySpec:
    """A StudySpec from YAML text (relative dataset paths from the project folder); ConfigError if bad."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"the study is not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"a study is a mapping of fields, got {type(data).__name__}.")
    return StudySpec.from_dict(data, base=store.PROJECT_ROOT)


def save_spec(spec: StudySpec) -> Path:
    """The spec as a YAML file under cache/study-specs/ (content-addressed: the same spec, the same file)."""
    path = store.cache_root() / "study-specs" / f"{spec.name}-{stable_hash(spec, length=12)}.yaml"
    if not path.is_file():
        store.write_text_atomic(path, spec.to_yaml())
    return path


def submit(spec: StudySpec) -> tuple[Any, Path]:
    """Queue the study as one background job (it resumes its folder when that holds it); (Job, folder)."""
    return submit_study(save_spec(spec), default_study_dir(spec))


@dataclass(frozen=True)
class StudyFolder:
    folder: Path
    spec: StudySpec | None
    error: str
    n_cells: int
    n_done: int
    mtime: float

    @property
    def label(self) -> str:
        state = self.error or f"{self.n_done}/{self.n_cells} cells"
        return f"{self.folder.name} · {state}"


def read_folder(folder: Path) -> StudyFolder:
    """A study folder's spec and progress (a folder that cannot be read says why)."""
    try:
        spec = StudySpec.from_dict(yaml.safe_load((folder / SPEC_FILE).read_text()) or {})
        status = study_status(spec, folder)
        return StudyFolder(folder, spec, "", len(status), int((status["state"] == "done").sum()),
                           folder.stat().st_mtime)
    except (ConfigError, ArtifactError, OSError, yaml.YAMLError) as exc:
        return StudyFolder(folder, None, f"unreadable: {exc}", 0, 0, folder.stat().st_mtime)


def list_folders() -> list[StudyFolder]:
    """Every study folder under cache/studies/, newest first."""
    root = store.cache_root() / "studies"
    if not root.is_dir():
        return []
    found = [read_folder(f) for f in root.iterdir() if f.is_dir() and (f / SPEC_FILE).is_file()]
    return sorted(found, key=lambda s: s.mtime, reverse=True)


def job_of(folder: Path) -> Any | None:
    """The newest study job that runs this folder, or None."""
    from neurorit import jobs

    for job in jobs.list_jobs(kind=KIND, limit=100):
        argv = list(job.argv)
        if "--out" in argv[:-1] and Path(argv[argv.index("--out") + 1]) == Path(folder):
            return job
    return None


def results(folder: Path) -> pd.DataFrame:
    return read_results(folder)


def summary(folder: Path) -> pd.DataFrame:
    path = Path(folder) / "summary.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def pooled(folder: Path) -> pd.DataFrame:
    """pooled.csv (seeds pooled, paired), dataset names shortened; empty for a study written before it existed."""
    path = Path(folder) / "pooled.csv"
    frame = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if "dataset" in frame:
        frame["dataset"] = frame["dataset"].map(lambda d: Path(str(d)).name)
    return frame


def comparison_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison columns of a results table: each cell and distractor count against RALM and
    the random-mask control (difference, 95 % paired interval, exact McNemar p)."""
    if table.empty:
        return table
    columns = ["method", "dataset", "noise", "seed", "mining_size", "recipe", "n_distractors", "n", "accuracy",
               "vs_ralm_diff", "vs_ralm_low", "vs_ralm_high", "vs_ralm_p", "vs_random_mask_diff",
               "vs_random_mask_low", "vs_random_mask_high", "vs_random_mask_p"]
    frame = table[[c for c in columns if c in table.columns]].copy()
    if "dataset" in frame:
        frame["dataset"] = frame["dataset"].map(lambda d: Path(str(d)).name)
    return frame
