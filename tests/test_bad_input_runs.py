"""Bad state on disk, run for real: a corrupt job table (random bytes, and a real table with scrambled
pages) refused in one line by `jobs list` / `jobs show` / `submit` and rebuilt by `neurorit jobs repair`
(CLI and the Train page's button); a `train` with a bad model or data path refused before it makes a
run folder, and a never-started folder reused; a resume whose newest checkpoint is corrupt falling
back to the previous intact one, and refused with the folder unchanged when none is intact."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_harness import ok, reason, tree_snapshot
from neurorit import jobs, store, training
from neurorit.data import demo_examples
from neurorit.models import load_model
from neurorit.evaluation import EvalConfig
from neurorit.prompts import PromptConfig
from neurorit.training import TrainConfig, TrainReport, load_report, read_metrics, read_status, run_training
from neurorit.training import checkpoints as ckpt
from neurorit.training import loop

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(loop.THROTTLE_ENV, raising=False)
    return tmp_path / "cache"


# ---- a corrupt job table ------------------------------------------------------------------------


def _run_folder(cache: Path, name: str, status: dict[str, Any] | None, *, steps: int = 0, report: bool = False) -> Path:
    """A hand-written training run folder (config, status, metrics; a report when done)."""
    folder = cache / "runs" / name
    folder.mkdir(parents=True)
    store.write_json(folder / "config.json", TrainConfig(method="full", max_steps=4).to_dict())
    if status is not None:
        store.write_json(folder / "status.json", status)
    (folder / "metrics.jsonl").write_text("".join(
        json.dumps({"event": "step", "step": s, "loss": 1.0}) + "\n" for s in range(1, steps + 1)))
    if report:
        TrainReport(method="full", status="done", run_dir=str(folder), config={}, model={}, total_params=1,
                    steps=steps).save(folder / "report.json")
    return folder


def _disk(cache: Path) -> dict[str, Path]:
    """What jobs leave on disk: two run folders and three job logs (done, failed, cut short)."""
    done = _run_folder(cache, "full-done", {"state": "done", "updated": 5.0, "step": 4}, steps=4, report=True)
    stopped = _run_folder(cache, "full-stopped", {"state": "running", "pid": 1, "updated": 6.0}, steps=2)
    logs = cache / "jobs"
    logs.mkdir(parents=True)
    mined = cache / "mined" / "abc"
    (logs / "mine-20260101-120000-aaaaaa.log").write_text(f"layer relevant\ntotal 3\nmined sets: {mined}\n")
    (logs / "mine-20260101-130000-bbbbbb.log").write_text("neurorit: error: data file x.jsonl is missing\n")
    (logs / "evaluate-20260101-140000-cccccc.log").write_text("Traceback (most recent call last):\n  ...\n")
    return {"done": done, "stopped": stopped, "mined": mined}


def _scrambled_table(path: Path) -> None:
    """A real job table with 60 jobs whose middle pages are then overwritten with random bytes."""
    with jobs._database() as conn:
        for i in range(60):
            conn.execute("INSERT INTO jobs (id, kind, state, argv, created, log_path) VALUES (?, 'mine', 'done', ?, ?, ?)",
                         (f"mine-20260101-1200{i:02d}-{i:06x}", json.dumps(["mine", "--data", "demo"] * 5), float(i),
                          f"/nowhere/{'x' * 80}.log"))
    data = bytearray(path.read_bytes())
    assert len(data) >= 4 * 4096 and not Path(f"{path}-wal").exists()
    rng = random.Random(0)
    middle = len(data) // 2
    data[middle : middle + 1000] = bytes(rng.randrange(256) for _ in range(1000))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["random bytes", "scrambled pages"])
def test_a_corrupt_job_table_is_refused_in_one_line_then_rebuilt_from_disk(damage, cache, capsys):
    disk = _disk(cache)
    table = cache / "jobs.sqlite"
    if damage == "random bytes":
        table.write_bytes(random.Random(1).randbytes(16384))
    else:
        _scrambled_table(table)
    before = tree_snapshot(cache)

    for argv in (["jobs", "list"], ["jobs", "show", "mine-20260101-120000-aaaaaa"], ["jobs", "cancel", "x"],
                 ["submit", "mine", "--data", "demo", "--limit", "1"]):
        line = reason(capsys, *argv)
        assert f"the job table {table} is corrupt" in line and "Run `neurorit jobs repair`" in line, line
        assert tree_snapshot(cache) == before, argv  # refused: nothing written, nothing moved
    with pytest.raises(jobs.JobTableCorruptError, match="neurorit jobs repair"):
        jobs.list_jobs()

    out = ok(capsys, "jobs", "repair")
    aside = [p for p in cache.iterdir() if p.name.startswith("jobs.sqlite.corrupt-")]
    assert len(aside) == 1 and tree_snapshot(aside[0].parent)[aside[0].name] == before["jobs.sqlite"]  # kept, as it was
    assert f"kept aside as {aside[0]}" in out and "rebuilt it with 5 job(s)" in out
    after = tree_snapshot(cache)
    unchanged = {k: v for k, v in before.items() if k != "jobs.sqlite"}
    assert {k: v for k, v in after.items() if k in unchanged} == unchanged  # runs and logs untouched
    assert set(after) - set(before) <= {aside[0].name, "jobs.sqlite-wal", "jobs.sqlite-shm"}

    rebuilt = {j.id: j for j in jobs.list_jobs(limit=100)}
    assert len(rebuilt) == 5
    by_run = {j.artifacts.get("run"): j for j in rebuilt.values() if j.artifacts.get("run")}
    assert set(by_run) == {str(disk["done"]), str(disk["stopped"])}  # the runs on disk are listed again
    done, stopped = by_run[str(disk["done"])], by_run[str(disk["stopped"])]
    assert (done.state, done.done, done.total, done.artifacts["report"]) == ("done", 4, 4, str(disk["done"] / "report.json"))
    assert stopped.state == "failed" and "interrupted" in stopped.error and stopped.done == 2
    mined = rebuilt["mine-20260101-120000-aaaaaa"]
    assert (mined.state, mined.kind, mined.artifacts) == ("done", "mine", {"mined": str(disk["mined"])})
    failed = rebuilt["mine-20260101-130000-bbbbbb"]
    assert (failed.state, failed.error) == ("failed", "data file x.jsonl is missing")
    unknown = rebuilt["evaluate-20260101-140000-cccccc"]
    assert unknown.state == "failed" and unknown.error.startswith("state unknown") and "jobs repair" in unknown.error
    assert "Traceback" in unknown.log_tail()

    for folder in (disk["done"], disk["stopped"]):  # the Train page finds each run's job again
        assert training.run_of_job(by_run[str(folder)].argv, by_run[str(folder)].artifacts, cache / "runs") == str(folder)
    listed = ok(capsys, "jobs", "list")
    assert all(job_id in listed for job_id in rebuilt)
    assert str(disk["done"]) in ok(capsys, "jobs", "show", done.id)

    repaired = tree_snapshot(cache)
    assert ok(capsys, "jobs", "repair").strip() == f"the job table {table} is readable; nothing to repair."
    assert tree_snapshot(cache) == repaired


def test_a_training_job_still_running_keeps_its_running_record(cache):
    import os
    import socket

    from neurorit.job_recovery import recover_jobs

    live = _run_folder(cache, "full-live", {"state": "running", "pid": os.getpid(), "updated": 7.0}, steps=1)
    job_id = "train-20260101-150000-dddddd"
    (live / ckpt.LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "job_id": job_id,
                                              "since": 7.0}))
    (cache / "jobs").mkdir()
    (cache / "jobs" / f"{job_id}.log").write_text("")
    orphan = _run_folder(cache, "full-orphan", None)  # config.json only: never started
    recovered = {j.id: j for j in recover_jobs(cache)}
    assert len(recovered) == 2
    running = recovered[job_id]
    assert (running.state, running.pid, running.artifacts["run"], running.done) == ("running", os.getpid(), str(live), 1)
    (other,) = [j for j in recovered.values() if j.id != job_id]
    assert other.state == "failed" and "no status" in other.error and other.artifacts == {"run": str(orphan)}


def test_jobs_help_names_the_repair(capsys):
    out = ok(capsys, "jobs", "--help")
    assert "repair" in out and "jobs.sqlite.corrupt-" in out


@pytest.mark.parametrize("page", ["train", "mine"])
def test_the_pages_listing_jobs_show_the_corrupt_table_and_repair_it(page: str, app_env: Path) -> None:
    from streamlit.testing.v1 import AppTest

    disk = _disk(app_env)
    table = app_env / "jobs.sqlite"
    _scrambled_table(table)
    at = AppTest.from_file(str(ROOT / "pages" / f"{page}.py"), default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [str(e.value) for e in at.error]
    assert any(f"the job table {table} is corrupt" in e and "neurorit jobs repair" in e for e in errors), errors
    buttons = [b for b in at.button if b.label == "Repair the job table"]
    assert len(buttons) == 1
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.error if "job table" in str(e.value)]
    assert any("rebuilt it with 5 job(s)" in str(s.value) for s in at.success)
    assert len([p for p in app_env.iterdir() if p.name.startswith("jobs.sqlite.corrupt-")]) == 1
    assert {j.artifacts.get("run") for j in jobs.list_jobs(kind="train")} == {str(disk["done"]), str(disk["stopped"])}


# ---- train: a bad model or data path makes no run folder ----------------------------------------


def _ralm_config(path: Path, model: Path | str) -> Path:
    path.write_text(f"method: ralm\nmodel: {model}\nn_eval: 1\nthreads: 1\n"
                    "prompt: {max_passage_tokens: 24}\neval: {max_new_tokens: 3, noise_levels: [2]}\n")
    return path


def test_train_with_a_bad_model_or_data_path_makes_no_run_folder_and_a_retry_runs(tiny_llama_dir, tmp_path, cache,
                                                                                  capsys):
    missing = tmp_path / "no-such-model"
    config = _ralm_config(tmp_path / "train.yaml", missing)
    out = tmp_path / "run"
    store.write_json(cache / "marker.json", {})  # the cache exists: its snapshot must stay as it is
    before = tree_snapshot(cache)
    for extra in ([], ["--out", out]):  # the default folder under cache/runs, and an explicit one
        line = reason(capsys, "train", "--config", config, "--quiet", *extra)
        assert str(missing) in line, line
        assert tree_snapshot(cache) == before and not out.exists()
    line = reason(capsys, "train", "--config", config, "--model", tiny_llama_dir, "--data", tmp_path / "none.jsonl",
                  "--out", out, "--quiet")
    assert "none.jsonl" in line and tree_snapshot(cache) == before and not out.exists()

    # a folder an older version left behind (config.json of the bad model only) does not block the retry
    out.mkdir()
    (out / "config.json").write_text(json.dumps(TrainConfig.from_dict(
        {"method": "ralm", "model": str(missing), "n_eval": 1, "threads": 1}).to_dict()))
    assert not loop.has_started(out)
    printed = ok(capsys, "train", "--config", config, "--model", tiny_llama_dir, "--out", out, "--quiet")
    assert "ralm: done" in printed and read_status(out)["state"] == "done"
    assert json.loads((out / "config.json").read_text())["model"] == str(tiny_llama_dir)
    assert loop.has_started(out)
    line = reason(capsys, "train", "--config", config, "--model", tiny_llama_dir, "--out", out, "--quiet")
    assert f"{out} already holds a run (state done)" in line  # a run that did start is still protected


# ---- resume: fall back to the newest intact checkpoint ------------------------------------------


class _Stop(Exception):
    pass


def _config(model: Path) -> TrainConfig:
    prompt = PromptConfig(max_passage_tokens=24)
    return TrainConfig(method="full", model=str(model), max_steps=6, batch_size=2, grad_accum=1, n_distractors=(1, 2),
                       prompt=prompt, eval=EvalConfig(views=("relevant",), noise_levels=(2,), max_new_tokens=3,
                                                      prompt=prompt),
                       n_eval=1, checkpoint_every=2, keep_checkpoints=3, dev_every=0, threads=1, lr=1e-3,
                       eval_before=False, eval_after=False, bake=False)


def _interrupted_run(model_dir: Path, folder: Path) -> None:
    """Train until step 5 (checkpoints at steps 2 and 4), then stop as a crash would."""
    def stop_at_5(done: int, total: int, message: str) -> None:
        if done == 5:
            raise _Stop("stopped for the test")

    model = load_model(str(model_dir), device="cpu", dtype="float32")
    with pytest.raises(_Stop):
        run_training(model, demo_examples(), _config(model_dir), folder, on_progress=stop_at_5)
    assert [c.step for c in ckpt.list_checkpoints(folder)] == [2, 4]


def _flip_bytes(path: Path) -> None:
    """Overwrite bytes in the middle of a file, keeping its size (a loader alone would not notice)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def _losses(folder: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_metrics(folder) if m["event"] == "step"]


def test_resume_falls_back_past_a_corrupt_checkpoint_and_refuses_when_none_is_intact(tiny_llama_dir, tmp_path,
                                                                                     capsys, caplog):
    run_dir = tmp_path / "run"
    _interrupted_run(tiny_llama_dir, run_dir)

    # every checkpoint corrupt (a copy of the run): refused in one line, the folder byte for byte unchanged
    all_bad = tmp_path / "all-bad"
    shutil.copytree(run_dir, all_bad)
    (all_bad / "checkpoints" / "step-000004" / "checkpoint.json").write_text("{not json")
    rng_file = all_bad / "checkpoints" / "step-000002" / "rng.safetensors"
    rng_file.write_bytes(rng_file.read_bytes()[:20])
    before = tree_snapshot(all_bad)
    line = reason(capsys, "resume", all_bad, "--quiet")
    assert f"cannot resume {all_bad}: no intact checkpoint" in line and "step-000004" in line and "step-000002" in line
    assert "rng.safetensors" in line
    assert tree_snapshot(all_bad) == before

    # the newest corrupt: resumes from step 2, says so, and ends as an uninterrupted run would
    _flip_bytes(run_dir / "checkpoints" / "step-000004" / "params.safetensors")
    with caplog.at_level(logging.WARNING, logger="neurorit.training.loop"):
        out = ok(capsys, "resume", run_dir, "--quiet")
    assert f"{run_dir}: resuming from checkpoint step 2, the newest intact one: step-000004 unreadable" in out
    assert "params.safetensors does not match the sha256" in out
    assert any("step-000004 is unreadable" in r.getMessage() and "resuming from step 2" in r.getMessage()
               for r in caplog.records)
    resumes = [m for m in read_metrics(run_dir) if m["event"] == "resume"]
    assert resumes == [{"event": "resume", "step": 2, "unreadable": ["step-000004"]}]
    assert (run_dir / "checkpoints" / "corrupt-step-000004" / "params.safetensors").is_file()  # kept, out of the way
    report = load_report(run_dir)
    assert report is not None and report.status == "done" and report.steps == 6
    assert [c.step for c in ckpt.list_checkpoints(run_dir)] == [2, 4, 6]

    straight = tmp_path / "straight"
    run_training(load_model(str(tiny_llama_dir), device="cpu", dtype="float32"), demo_examples(),
                 _config(tiny_llama_dir), straight)
    assert [s for s, _ in _losses(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert _losses(run_dir) == _losses(straight)  # as if never interrupted (the corrupt weights were not used)


def test_checkpoints_record_their_files_and_an_intact_one_verifies(tiny_llama_dir, tmp_path):
    written = ckpt.write_checkpoint(tmp_path, 3, params={"w": torch.ones(3)}, optimizer={"state": {}, "param_groups": []},
                                    scheduler={}, meta={"stage": 0, "stage_step": 3})
    files = written.meta["files"]
    assert set(files) == {"params.safetensors", "optimizer.safetensors", "rng.safetensors"}
    assert all(f["bytes"] == (written.path / n).stat().st_size for n, f in files.items())
    ckpt.verify_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert ckpt.newest_intact(tmp_path) == (ckpt.latest_checkpoint(tmp_path), ())
    (written.path / "optimizer.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="optimizer.safetensors is missing"):
        ckpt.verify_checkpoint(ckpt.latest_checkpoint(tmp_path))
