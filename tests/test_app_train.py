"""The Train page: its pure views on hand-made metrics and reports, its form, and the page under AppTest.

The views get metrics records shaped like neurorit.training's metrics.jsonl and a hand-made
TrainReport with known results, so every curve point and table cell is checked exactly. The page
runs headless with the tiny Llama injected through NEURORIT_MODEL and a hand-written run folder
(done, interrupted with a checkpoint, running under a fake job); one slow test drives a real
two-step training job from the page to its report.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

from streamlit.testing.v1 import AppTest

from app import forms, views
from neurorit import store, training
from neurorit.errors import ConfigError
from neurorit.evaluation import EvalReport, ExampleResult
from neurorit.training import StageReport, TrainConfig, TrainReport

TIMEOUT = 120

METRICS: list[dict[str, Any]] = [
    {"event": "step", "step": 1, "stage": "denoise", "loss": 3.0, "lr": 1e-4, "grad_norm": 2.0, "eta_s": 30.0, "step_time_s": 1.0},
    {"event": "step", "step": 2, "stage": "denoise", "loss": 2.5, "lr": 1e-4, "grad_norm": 1.5, "eta_s": 20.0, "step_time_s": 1.0},
    {"event": "dev", "step": 2, "stage": "denoise", "dev_loss": 2.75},
    {"event": "checkpoint", "step": 2, "path": "/x/checkpoints/step-000002"},
    {"event": "step", "step": 3, "stage": "distill", "loss": 9.0, "lr": 1e-4, "grad_norm": 1.0, "eta_s": 10.0, "step_time_s": 1.0},
    {"event": "resume", "step": 2},
    {"event": "step", "step": 3, "stage": "distill", "loss": 2.0, "lr": 5e-5, "grad_norm": 1.0, "eta_s": 9.0, "step_time_s": 1.5},
    {"event": "step", "step": 4, "stage": "distill", "loss": 1.5, "lr": 0.0, "grad_norm": 0.5, "eta_s": 0.0, "step_time_s": 1.5},
    {"event": "dev", "step": 4, "stage": "distill", "dev_loss": 1.25},
]


def _result(example_id: str, view: str, k: int, correct: bool) -> ExampleResult:
    return ExampleResult(example_id, view, k, "answer", correct, correct, float(correct), -1.0)


def _eval(label: str, correct: dict[tuple[str, int], list[bool]]) -> EvalReport:
    results = tuple(_result(f"e{i}", view, k, c) for (view, k), flags in correct.items() for i, c in enumerate(flags))
    return EvalReport(results, label=label, config={"views": ["relevant", "noisy"]})


def hand_report(run_dir: str = "/runs/x", *, final: str | None = "/runs/x/final") -> TrainReport:
    """Before: clean 2/4, noisy k=2 1/4, k=4 0/4; after: clean 3/4, k=2 2/4, k=4 1/4."""
    before = _eval("before", {("relevant", 0): [True, True, False, False], ("noisy", 2): [True, False, False, False],
                              ("noisy", 4): [False] * 4})
    after = _eval("after", {("relevant", 0): [True, True, True, False], ("noisy", 2): [True, True, False, False],
                            ("noisy", 4): [True, False, False, False]})
    stages = (StageReport("denoise", 2, 1000, 0.01, 0.5, 2 * 2**20, 2.5),
              StageReport("distill", 2, 3000, 0.03, 1.5, 4 * 2**20, 1.5))
    return TrainReport(method="neuro_rit", status="done", run_dir=run_dir, config={"method": "neuro_rit"}, model={},
                       total_params=100_000, stages=stages, steps=4, wall_time_s=4.0, peak_memory_bytes=4 * 2**20,
                       memory_measure="test", target_layers=(1,), data={"train": 30, "dev": 4, "test": 8, "dropped": 0},
                       eval_before=before, eval_after=after, final_checkpoint=final)


# ---- pure views -----------------------------------------------------------------------------------


def test_training_steps_keep_the_last_record_of_a_step_and_dev_losses_their_points() -> None:
    steps = views.training_steps(METRICS)
    assert steps["step"].tolist() == [1, 2, 3, 4]
    assert steps["loss"].tolist() == [3.0, 2.5, 2.0, 1.5]  # step 3 logged again after the resume
    assert steps["stage"].tolist() == ["denoise", "denoise", "distill", "distill"]
    dev = views.dev_losses(METRICS)
    assert dev["step"].tolist() == [2, 4] and dev["dev_loss"].tolist() == [2.75, 1.25]
    assert views.training_steps([]).empty and views.dev_losses([{"event": "dev", "step": 1}]).empty


def test_loss_curve_has_one_line_per_stage_the_dev_points_and_the_resume_marked() -> None:
    fig = views.loss_curve_figure(METRICS, max_steps=4)
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {"train loss (denoise)", "train loss (distill)", "dev loss"}
    assert list(traces["train loss (denoise)"].x) == [1, 2] and list(traces["train loss (denoise)"].y) == [3.0, 2.5]
    assert list(traces["train loss (distill)"].x) == [3, 4] and list(traces["train loss (distill)"].y) == [2.0, 1.5]
    assert list(traces["dev loss"].x) == [2, 4] and list(traces["dev loss"].y) == [2.75, 1.25]
    assert [s.x0 for s in fig.layout.shapes] == [2.0]  # the resume
    assert list(fig.layout.xaxis.range) == [0, 4.5]
    failed = views.loss_curve_figure(METRICS[:2] + [{"event": "failed", "step": 2, "error": "nan"}])
    assert [a.text for a in failed.layout.annotations] == ["failed"]
    assert len(views.loss_curve_figure([]).data) == 0


def test_training_progress_reads_the_last_step() -> None:
    progress = views.training_progress(METRICS[:3], max_steps=4)
    assert (progress.step, progress.stage, progress.loss, progress.eta_s) == (2, "denoise", 2.5, 20.0)
    assert progress.fraction == 0.5
    assert progress.text() == "step 2/4 · denoise · loss 2.5000 · ETA 20 s (training steps)"
    done = views.training_progress(METRICS, max_steps=4)
    assert done.fraction == 1.0 and "ETA" not in done.text()
    empty = views.training_progress([], max_steps=4)
    assert (empty.step, empty.fraction, empty.eta_s) == (0, 0.0, None) and empty.text() == "step 0/4"


def test_run_state_resume_and_the_run_a_job_writes() -> None:
    assert training.run_state({"state": "interrupted"}, "running") == "running"
    assert training.run_state({}, "queued") == "queued"
    assert training.run_state({"state": "done"}, "done") == "done"
    assert training.run_state({"state": "interrupted"}, "failed") == "interrupted"
    assert training.run_state({}, "cancelled") == "cancelled" and training.run_state({}, None) == "unknown"
    assert training.can_resume("interrupted", True) and training.can_resume("cancelled", True)
    assert not training.can_resume("failed", False) and not training.can_resume("done", True)
    assert not training.can_resume("running", True)

    root = "/c/runs"
    assert training.run_of_job(["train", "--config", "x.json"], {"run": "/c/runs/a"}, root) == "/c/runs/a"
    assert training.run_of_job(["resume", "/c/runs/b", "--quiet"], {}, root) == "/c/runs/b"
    assert training.run_of_job(["train", "--config", "/c/runs/_submitted/full-abc.json", "--out", "/o/r", "--quiet"], {},
                            root) == "/o/r"
    assert training.run_of_job(["train", "--config", "/c/runs/_submitted/full-abc.json", "--quiet"], {}, root) \
        == "/c/runs/full-abc"
    assert training.run_of_job(["mine", "--data", "x"], {}, root) is None


def test_runs_frame_rows() -> None:
    frame = views.runs_frame([
        {"name": "full-abc", "config": {"method": "full", "max_steps": 40}, "state": "running", "step": 7, "job": "j1",
         "mtime": 0},
        {"name": "odd", "config": {}, "state": "unknown", "step": 0, "job": ""},
    ])
    assert frame.columns.tolist() == views.RUNS_COLUMNS
    assert frame.iloc[0][["run", "method", "state", "step", "max_steps", "job"]].tolist() == \
        ["full-abc", "full", "running", 7, 40, "j1"]
    assert frame.iloc[1][["method", "max_steps", "updated"]].tolist() == ["?", 0, ""]


def test_report_views_before_after_stages_and_headline() -> None:
    report = hand_report()
    table = views.train_eval_frame(report)
    assert table.columns.tolist() == views.TRAIN_EVAL_COLUMNS
    assert table["condition"].tolist() == ["relevant", "noisy (2)", "noisy (4)"]
    assert table["n"].tolist() == [4, 4, 4]
    assert table["accuracy_before"].tolist() == [0.5, 0.25, 0.0]
    assert table["accuracy_after"].tolist() == [0.75, 0.5, 0.25]
    assert table["delta_accuracy"].tolist() == [0.25, 0.25, 0.25]
    fig = views.train_eval_figure(report)
    assert [t.name for t in fig.data] == ["before", "after"]
    assert list(fig.data[0].y) == [0.5, 0.25, 0.0] and list(fig.data[1].x) == ["relevant", "noisy (2)", "noisy (4)"]

    only_after = dataclasses.replace(report, eval_before=None)
    assert views.train_eval_frame(only_after)["accuracy_before"].isna().all()
    assert [t.name for t in views.train_eval_figure(only_after).data] == ["after"]
    assert views.train_eval_frame(dataclasses.replace(report, eval_before=None, eval_after=None)).empty

    stages = views.train_stages_frame(report)
    assert stages.columns.tolist() == views.STAGES_COLUMNS
    assert stages["stage"].tolist() == ["denoise", "distill"] and stages["trainable_%"].tolist() == [1.0, 3.0]
    assert stages["peak_memory_MiB"].tolist() == [2.0, 4.0]
    assert views.train_summary(report) == {
        "Trainable parameters": "3,000 (3.00 %)", "Steps": "4", "Step time": "1.00 s", "Training time": "4 s",
        "Peak memory": "4 MiB",
    }
    ralm = dataclasses.replace(report, stages=(), steps=0)
    assert views.train_summary(ralm)["Step time"] == "-" and views.train_stages_frame(ralm).empty


def test_parse_counts() -> None:
    assert forms.parse_counts("1-4") == (1, 2, 3, 4)
    assert forms.parse_counts(" 4, 0; 2, 2 ") == (0, 2, 4)
    assert forms.parse_counts("", allow_empty=True) == ()
    for bad in ("", "two", "-1", "4-1", "1-x"):
        with pytest.raises(ConfigError, match="distractors"):
            forms.parse_counts(bad, name="distractors")


# ---- the page -------------------------------------------------------------------------------------


def _page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages" / "train.py"), default_timeout=TIMEOUT)


def _text(at: AppTest) -> str:
    parts: list[str] = []
    for kind in ("title", "subheader", "markdown", "caption", "info", "success", "warning", "error", "code"):
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{e.label}: {e.value}" for e in at.metric]
    return "\n".join(parts)


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _buttons(at: AppTest, label: str) -> list[Any]:
    return [b for b in at.button if b.label.startswith(label)]


@dataclasses.dataclass(frozen=True)
class FakeJob:
    id: str
    state: str
    argv: tuple[str, ...] = ()
    kind: str = "resume"
    done: int = 2
    total: int = 4
    message: str = "distill 0/2"
    error: str = ""
    created: float = 1.0
    artifacts: dict = dataclasses.field(default_factory=dict)

    def log_tail(self, lines: int = 20) -> str:
        return "log line"


def _write_run(cache: Path, name: str, *, state: str, metrics: list[dict[str, Any]], report: bool = False) -> Path:
    folder = cache / "runs" / name
    folder.mkdir(parents=True)
    store.write_json(folder / "config.json", TrainConfig(method="full", max_steps=4).to_dict())
    store.write_json(folder / "status.json", {"state": state, "pid": 1, "updated": 0.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if report:
        hand_report(str(folder), final=str(folder / "final")).save(folder / "report.json")
    return folder


def test_page_renders_the_form_and_builds_a_config(app_env: Path) -> None:
    at = _page().run()
    _ok(at)
    assert at.title[0].value == "Train"
    text = _text(at)
    assert "No mining result for this model" in text  # Neuro-RIT by default: it needs mined sets
    assert "No training run yet" in text
    assert _buttons(at, "Start training")[0].disabled
    at.selectbox(key="w.train.method").set_value("lora").run()
    _ok(at)
    assert not _buttons(at, "Start training")[0].disabled
    assert "default folder" in _text(at) and "/runs/lora-" in _text(at)
    at.text_input(key="w.train.lr").set_value("fast").run()
    _ok(at)
    assert "Learning rate: expected a number" in _text(at) and _buttons(at, "Start training")[0].disabled
    at.text_input(key="w.train.lr").set_value("-1").run()
    _ok(at)
    assert "TrainConfig.lr = -1.0 is not allowed" in _text(at)


def test_page_offers_data_parallel_processes_only_with_several_gpus(app_env: Path, monkeypatch) -> None:
    at = _page().run()
    _ok(at)
    assert not [n for n in at.number_input if n.key == "w.train.processes"]  # this machine: no GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    at = _page().run()
    _ok(at)
    (field,) = [n for n in at.number_input if n.key == "w.train.processes"]
    assert field.label == "Data-parallel processes (one per GPU)" and field.max == 4 and field.value == 1


def test_page_offers_the_mined_sets_and_target_layers_for_neuro_rit(app_env: Path) -> None:
    from neurorit.mining import MinedNeurons
    from neurorit.models import ModelIdentity
    from neurorit.neurons import NeuronSet

    ident = ModelIdentity(name="tiny-llama", architecture="LlamaForCausalLM", n_layers=2, d_mlp=48, fingerprint="f" * 16)
    grid = torch.zeros(2, 48, dtype=torch.bool)
    grid[1, :5] = True
    MinedNeurons(NeuronSet(grid, "relevant"), NeuronSet(~grid, "irrelevant"), grid.float(), (~grid).float(),
                 grid.float(), (~grid).float(), ("x",), ident, {"mining": {"n_steps": 2}}).save(app_env / "mined" / "m1")
    at = _page().run()
    _ok(at)
    assert at.selectbox(key="w.train.mined").value.startswith("m1")
    assert not _buttons(at, "Start training")[0].disabled and "/runs/neuro_rit-" in _text(at)
    at.radio(key="w.train.layer_mode").set_value("list").run()
    assert "target layers: none given" in _text(at) and _buttons(at, "Start training")[0].disabled
    at.text_input(key="w.train.layers").set_value("5").run()
    assert "layers [5] are outside" in _text(at)
    at.text_input(key="w.train.layers").set_value("1").run()
    _ok(at)
    assert not _buttons(at, "Start training")[0].disabled


def test_page_shows_a_finished_run_with_its_curve_and_report(app_env: Path) -> None:
    folder = _write_run(app_env, "full-done", state="done", metrics=METRICS, report=True)
    at = _page().run()
    _ok(at)
    text = _text(at)
    assert at.selectbox(key="neurorit.train.run").value == str(folder)
    assert "Trainable parameters: 3,000 (3.00 %)" in text and "Peak memory: 4 MiB" in text
    assert f"`{folder / 'final'}`" in text and "target layers [1]" in text
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # loss curve, before / after
    assert any("train loss (distill)" in c.proto.spec for c in charts)
    assert at.dataframe[-1].value["accuracy_after"].tolist() == [0.75, 0.5, 0.25]
    assert not _buttons(at, "Cancel") and not _buttons(at, "Resume")


def test_page_resumes_an_interrupted_run_and_cancels_a_running_job(app_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import neurorit.training as training
    from neurorit import jobs
    from neurorit.training.checkpoints import write_checkpoint

    folder = _write_run(app_env, "full-stopped", state="running", metrics=METRICS[:4])  # no lock: interrupted
    write_checkpoint(folder, 2, params={"w": torch.zeros(2)}, optimizer={"state": {}, "param_groups": []},
                     scheduler={}, meta={"stage": 0})
    resumed: list[Path] = []
    monkeypatch.setattr(training, "submit_resume", lambda run_dir, **_: resumed.append(Path(run_dir)) or FakeJob("r1", "queued"))
    monkeypatch.setattr(jobs, "list_jobs", lambda kind=None, limit=50: [])
    at = _page().run()
    _ok(at)
    assert "The run's process ended without a final state" in _text(at)
    _buttons(at, "Resume from step 2")[0].click().run()
    _ok(at)
    assert resumed == [folder]

    running = FakeJob("j1", "running", argv=("resume", str(folder)))
    cancelled: list[str] = []
    monkeypatch.setattr(jobs, "list_jobs", lambda kind=None, limit=50: [running] if kind == "resume" else [])
    monkeypatch.setattr(jobs, "get", lambda job_id: running)
    monkeypatch.setattr(jobs, "cancel", lambda job_id: cancelled.append(job_id))
    at = _page().run()
    _ok(at)
    assert "step 2/4 · denoise · loss 2.5000" in at.get("progress")[0].proto.text
    assert "log line" in _text(at) and not _buttons(at, "Resume")
    _buttons(at, "Cancel")[0].click().run()
    assert cancelled == ["j1"]


def test_start_writes_the_sessions_examples_and_finds_a_config_that_already_ran(
    app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import neurorit.training as training
    from neurorit.data import demo_examples, load_examples

    from neurorit import jobs

    submitted: list[TrainConfig] = []
    queued: dict[str, FakeJob] = {}

    def fake_submit(config: TrainConfig, run_dir: Path | None = None, **_: Any) -> tuple[Any, Path]:
        submitted.append(config)
        folder = run_dir or training.default_run_dir(config)
        config_file = app_env / "runs" / "_submitted" / f"{config.method}-{config.hash()}.json"
        store.write_json(config_file, config.to_dict())  # as submit_training does
        job = queued[f"t{len(queued)}"] = FakeJob(f"t{len(queued)}", "queued", kind="train",
                                                   argv=("train", "--config", str(config_file), "--quiet")
                                                   + (("--out", str(run_dir)) if run_dir else ()))
        return job, folder

    monkeypatch.setattr(training, "submit_training", fake_submit)
    monkeypatch.setattr(jobs, "list_jobs", lambda kind=None, limit=50: list(queued.values()) if kind == "train" else [])
    monkeypatch.setattr(jobs, "get", lambda job_id: queued[job_id])
    at = _page()
    at.session_state["neurorit.examples"] = demo_examples()[:12]
    at.session_state["neurorit.original_examples"] = demo_examples()[:12]
    at.session_state["neurorit.dataset_label"] = "a dozen"
    at.run()
    at.selectbox(key="w.train.method").set_value("full").run()
    _buttons(at, "Start training")[0].click().run()
    _ok(at)
    [config] = submitted
    assert config.method == "full" and config.format == "neurorit" and config.model == str(Path(config.model))
    assert [e.id for e in load_examples(config.data, "neurorit")] == [e.id for e in demo_examples()[:12]]
    assert at.session_state["neurorit.train.run"] == str(training.default_run_dir(config))

    assert "step 0/40" in at.get("progress")[0].proto.text  # the queued job's panel
    _buttons(at, "Start training")[0].click().run()  # its job is still queued: not submitted twice
    _ok(at)
    assert len(submitted) == 1 and "already trains this config (queued)" in _text(at)

    # the same config again, once its folder holds a run: selected, not submitted twice
    queued.clear()
    _write_run(app_env, training.default_run_dir(config).name, state="done", metrics=METRICS[:2])
    _buttons(at, "Start training")[0].click().run()
    _ok(at)
    assert len(submitted) == 1 and "This config already has a run (done)" in _text(at)
    at.checkbox(key="w.train.fresh").check().run()
    _buttons(at, "Start training")[0].click().run()
    _ok(at)
    assert len(submitted) == 2 and at.session_state["neurorit.train.run"].startswith(
        str(training.default_run_dir(config)) + "-")


@pytest.mark.slow
def test_page_runs_a_real_training_job_to_its_report(app_env: Path) -> None:
    """The page's config is accepted by `python -m neurorit train`, and the page reads the finished run."""
    from neurorit import jobs

    at = _page().run()
    at.selectbox(key="w.train.method").set_value("full")
    for key, value in (("w.train.max_steps", 2), ("w.train.batch_size", 1), ("w.train.grad_accum", 1),
                       ("w.train.n_eval", 1), ("w.train.limit", 20)):
        at.number_input(key=key).set_value(value)
    at.text_input(key="w.train.noise_levels").set_value("2")
    at.text_input(key="w.train.lr").set_value("1e-3")
    at.checkbox(key="w.train.eval_before").uncheck()
    at.number_input(key="w.train.threads").set_value(1)
    at.run()
    _ok(at)
    _buttons(at, "Start training")[0].click().run()
    _ok(at)
    [job] = jobs.list_jobs(kind="train")
    job = jobs.wait(job.id, timeout=300)
    assert job.state == "done", job.error + job.log_tail()
    at.run()
    _ok(at)
    assert at.selectbox(key="neurorit.train.run").value == job.artifacts["run"]
    text = _text(at)
    assert "Steps: 2" in text and "Tuned model (mask baked in)" in text
    assert (Path(job.artifacts["run"]) / "final" / "config.json").is_file()
    table = at.dataframe[-1].value
    assert isinstance(table, pd.DataFrame) and table["accuracy_before"].isna().all()
    assert not math.isnan(float(table["accuracy_after"].iloc[0]))
