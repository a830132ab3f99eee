"""Train: Neuro-RIT or a baseline as a background job; live loss curve, log, cancel / resume, the report.

The page builds a TrainConfig (app.forms.train_form), queues `neurorit train` through
neurorit.training.submit_training, and reads what the run writes under cache/runs/<run>/
(status.json, metrics.jsonl, report.json) and the job record (progress, log). No model logic here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import streamlit as st
import torch

from app import artifacts, forms, resources, state, views
from app.progress import cancel_button, read_job_table
from neurorit import jobs, store, training
from neurorit.data import RagExample, demo_examples, examples_fingerprint, save_examples
from neurorit.errors import NeuroritError
from neurorit.training import (
    default_run_dir, has_started, load_report, read_metrics, read_status, submit_resume, submit_training,
)
from neurorit.training.checkpoints import latest_checkpoint

RUN_KEY = "neurorit.train.run"
JOB_KINDS = ("train", "resume")
POLL_S = 2.0

st.title("Train")
st.caption("Step 6: tune the model against noisy contexts, as a background job that keeps running when you leave the "
           "page. Neuro-RIT switches the irrelevant-exclusive neurons off (stage 1, denoise) and then tunes the target "
           "layers (stage 2, distill); the baselines train on the same data with the same step budget.")

loaded = resources.require_model()
ident = loaded.identity
spec = state.model_spec()
items = state.examples()


def runs_root() -> Path:
    return store.cache_root() / "runs"


def session_data(examples: list[RagExample]) -> str:
    """'demo' for the untouched demo set, else the content-addressed file the session's examples go to."""
    key = examples_fingerprint(examples)
    if key == examples_fingerprint(demo_examples()):
        return "demo"
    return str(store.artifact_dir("train-data", key) / "examples.jsonl")


def write_session_data(path: str, examples: list[RagExample]) -> None:
    if path == "demo" or Path(path).is_file():
        return
    with store.atomic_dir(Path(path).parent) as tmp:
        save_examples(tmp / Path(path).name, examples)


def job_by_run() -> dict[str, Any]:
    """The newest train / resume job of each run folder."""
    out: dict[str, Any] = {}
    found = [j for kind in JOB_KINDS for j in jobs.list_jobs(kind=kind, limit=100)]
    for job in sorted(found, key=lambda j: j.created, reverse=True):
        folder = training.run_of_job(job.argv, job.artifacts, runs_root())
        if folder is not None:
            out.setdefault(str(Path(folder)), job)
    return out


def read_run(folder: Path, job: Any) -> dict[str, Any]:
    """What the runs list shows of one folder (a folder whose files cannot be read says so)."""
    config: dict[str, Any] = {}
    status: dict[str, Any] = {}
    error = ""
    try:
        if (folder / "config.json").is_file():
            config = store.read_json(folder / "config.json")
        elif job is not None and "--config" in job.argv[:-1]:  # queued: the config the job was given
            submitted = Path(job.argv[list(job.argv).index("--config") + 1])
            config = store.read_json(submitted) if submitted.is_file() else {}
        status = read_status(folder)
    except (NeuroritError, OSError) as exc:
        error = str(exc)
    metrics = read_metrics(folder) if folder.is_dir() else []
    step = views.training_progress(metrics, int(config.get("max_steps") or 0)).step
    return {"name": folder.name, "folder": folder, "config": config, "status": status, "metrics": metrics,
            "state": training.run_state(status, job.state if job else None), "step": step, "job": job.id if job else "",
            "mtime": folder.stat().st_mtime if folder.exists() else (job.created if job else 0.0), "error": error}


run_jobs = read_job_table(job_by_run, key="train.repair_jobs") or {}

# ---- a new run ----------------------------------------------------------------------------------
st.subheader("New run")
mined_entries = [e for e in artifacts.list_mined() if artifacts.fits(e, n_layers=ident.n_layers, d_mlp=ident.d_mlp)]
data_file = session_data(items)
config = forms.train_form(
    ident.n_layers, {artifacts.mined_label(e): str(e.folder) for e in mined_entries}, session_data=data_file,
    session_label=state.dataset_label(), prompt=state.prompt_config(), model=spec.name, device=spec.device,
)
gpus = torch.cuda.device_count()
processes = 1
if gpus > 1:
    processes = int(st.number_input("Data-parallel processes (one per GPU)", min_value=1, max_value=gpus, step=1,
                                    key=forms.init("w.train.processes", 1),
                                    help="Each GPU holds the whole model and takes its share of every step; "
                                         "launched with `accelerate launch` (see the README, Training)."))
fresh = st.checkbox("Start in a new folder even if this config already ran", key=forms.init("w.train.fresh", False),
                    help="The default folder is keyed by the config: the same config finds its run again.")
if config is not None:
    st.caption(f"Model **{spec.name or 'bundled SmolLM2-135M-Instruct'}** · {config.max_steps} steps of "
               f"{config.items_per_step} inputs · default folder `{default_run_dir(config)}`")
if st.button("Start training", type="primary", disabled=config is None) and config is not None:
    folder = default_run_dir(config)
    active = run_jobs.get(str(folder))
    if fresh:
        folder = folder.with_name(f"{folder.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not fresh and active is not None and active.state in training.ACTIVE_RUN_STATES:
        st.session_state[RUN_KEY] = str(folder)
        st.info(f"Job {active.id} already trains this config ({active.state}); it is selected below.")
    elif not fresh and (folder / "config.json").is_file() and has_started(folder):  # a never-started one is reused
        st.session_state[RUN_KEY] = str(folder)
        st.info(f"This config already has a run ({read_status(folder).get('state', 'unknown')}); it is selected "
                "below. Resume it there, or tick 'Start in a new folder' to train again.")
    else:
        try:
            if config.data == data_file:
                write_session_data(data_file, items)
            job, folder = submit_training(config, folder if fresh else None, processes=processes)
            st.session_state[RUN_KEY] = str(folder)
            run_jobs[str(folder)] = job
            st.toast(f"Job {job.id} submitted")
        except (NeuroritError, OSError) as exc:
            st.error(f"Could not start the training job: {exc}")

# ---- runs ---------------------------------------------------------------------------------------
st.subheader("Runs")
root = runs_root()
folders = {str(f): f for f in root.iterdir() if f.is_dir() and not f.name.startswith(("_", "."))} if root.is_dir() else {}
folders.update({k: Path(k) for k, j in run_jobs.items() if j.state in training.ACTIVE_RUN_STATES})
runs = sorted((read_run(f, run_jobs.get(k)) for k, f in folders.items()), key=lambda r: r["mtime"], reverse=True)
if not runs:
    st.info("No training run yet: start one above (or with `neurorit train`).")
    state.stop_run()
with st.expander(f"All runs ({len(runs)})", expanded=len(runs) <= 5):
    st.dataframe(views.runs_frame(runs), hide_index=True)
by_key = {str(r["folder"]): r for r in runs}
if st.session_state.get(RUN_KEY) not in by_key:
    st.session_state[RUN_KEY] = next(iter(by_key))
run_key = st.selectbox("Run", list(by_key), key=RUN_KEY,
                       format_func=lambda k: f"{by_key[k]['name']} · {by_key[k]['state']}")
first = by_key[run_key]
was_active = first["state"] in training.ACTIVE_RUN_STATES


@st.fragment(run_every=POLL_S if was_active else None)
def run_panel() -> None:
    folder = Path(run_key)
    job = None
    if first["job"]:
        try:
            job = jobs.get(first["job"])
        except (NeuroritError, OSError) as exc:
            st.error(f"Cannot read job {first['job']}: {exc}")
    run = read_run(folder, job)
    config_dict, run_state = run["config"], run["state"]
    colors = {"queued": "gray", "running": "blue", "done": "green", "failed": "red", "cancelled": "orange",
              "interrupted": "orange"}
    st.badge(f"{config_dict.get('method', '?')} · {run_state}", color=colors.get(run_state, "gray"))
    if run["error"]:
        st.error(run["error"])
    progress = views.training_progress(run["metrics"], int(config_dict.get("max_steps") or 0))
    text = progress.text()
    if job is not None and run_state == "running" and job.message:
        text += f" · {job.message}"
    st.progress(1.0 if run_state == "done" else progress.fraction, text=text)
    error = run["status"].get("error") or (job.error if job is not None and run_state == "failed" else "")
    if error and run_state in ("failed", "cancelled", "interrupted"):
        st.error(f"The run stopped ({run_state}): {error}")
    elif run_state == "interrupted":
        st.warning("The run's process ended without a final state (killed, or the machine restarted).")

    c1, c2, _ = st.columns([1, 1, 4])
    if job is not None and job.state in training.ACTIVE_RUN_STATES:
        cancel_button(job.id, label="Cancel", key=f"train.cancel.{job.id}", container=c1)
    checkpoint = latest_checkpoint(folder) if folder.is_dir() else None
    if training.can_resume(run_state, checkpoint is not None):
        if c2.button(f"Resume from step {checkpoint.step}", key=f"train.resume.{folder.name}"):
            try:
                resumed = submit_resume(folder)
                st.toast(f"Job {resumed.id} resumes {folder.name}")
            except (NeuroritError, OSError) as exc:
                st.error(f"Could not resume: {exc}")
            st.rerun()
    elif run_state in ("failed", "cancelled", "interrupted"):
        st.caption("No checkpoint to resume from: start the run again.")

    if views.training_steps(run["metrics"]).empty:
        st.info("No training step logged yet (loading the model, evaluating before training, or queued).")
    else:
        st.plotly_chart(views.loss_curve_figure(run["metrics"], max_steps=progress.max_steps or None),
                        key="train.loss")
    with st.expander("Log", expanded=run_state in ("running", "failed")):
        st.code((job.log_tail(40) if job is not None else "") or "(no job log for this run)", language=None)
    if was_active and run_state not in training.ACTIVE_RUN_STATES:
        st.rerun()  # it just stopped: redraw the page (report, no more polling)


run_panel()

# ---- the report ---------------------------------------------------------------------------------
if first["state"] in training.ACTIVE_RUN_STATES:
    state.stop_run()
try:
    report = load_report(Path(run_key))
except (NeuroritError, OSError) as exc:
    st.error(f"Cannot read the run's report: {exc}")
    state.stop_run()
if report is None:
    state.stop_run()
st.subheader("Report")
for column, (label, value) in zip(st.columns(5), views.train_summary(report).items()):
    column.metric(label, value)
st.dataframe(views.train_stages_frame(report), hide_index=True)
if report.eval_before is not None or report.eval_after is not None:
    st.plotly_chart(views.train_eval_figure(report), key="train.eval")
    st.dataframe(views.train_eval_frame(report), hide_index=True)
details = []
if report.target_layers:
    details.append(f"target layers {list(report.target_layers)}")
if report.mask:
    details.append(f"mask {report.mask.get('key', '')} ({report.mask.get('n_neurons', '?')} neurons)")
if report.data:
    d = report.data
    details.append(f"examples: {d.get('train', '?')} train / {d.get('dev', '?')} dev / {d.get('test', '?')} test "
                   f"({d.get('dropped', 0)} dropped)")
if details:
    st.caption(" · ".join(details))
if report.final_checkpoint:
    st.success(f"Tuned model (mask baked in), a plain Hugging Face checkpoint: `{report.final_checkpoint}`")
st.caption(f"Run folder: `{report.run_dir}` · memory measured with {report.memory_measure or '-'}")
