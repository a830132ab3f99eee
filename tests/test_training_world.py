"""Data-parallel training: a real two-process run (torchrun, gloo on the CPU) against one process."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from neurorit.configs import load_yaml
from neurorit.data import demo_examples
from neurorit.errors import ConfigError
from neurorit.training import load_report, read_metrics, run_training
from neurorit.training import loop
from neurorit.training.world import World, current_world, my_share, refuse_sharding, sum_gradients
from test_training import fake_mined, fresh, small
from scale import scale_error


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(loop.THROTTLE_ENV, raising=False)
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_FSDP"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache"


def test_the_world_comes_from_the_launchers_environment(monkeypatch):
    assert current_world() == World(0, 1, 0) and current_world().main and not current_world().distributed
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert current_world() == World(3, 4, 1) and not current_world().main
    assert list(my_share(7, current_world())) == [3]
    assert list(my_share(7, World(1, 2, 1))) == [1, 3, 5]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match=r"RANK = 4, WORLD_SIZE = 4: expected 0 <= RANK < WORLD_SIZE"):
        current_world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match=r"RANK = 'x' in the environment; expected an integer"):
        current_world()


def test_one_process_sums_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    sum_gradients([p], World())
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def test_an_fsdp_launch_is_refused_with_a_reason(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="launched with FSDP, which the training loop does not implement"):
        refuse_sharding()
    with pytest.raises(ConfigError, match="FSDP"):
        run_training(fresh(tiny_llama_dir), demo_examples(), small(model=str(tiny_llama_dir), max_steps=1), tmp_path / "r")


def test_two_processes_train_as_one_does(tiny_llama_dir, tmp_path):
    """`neurorit train --processes 2` (torchrun with two gloo ranks on a CPU): each rank takes one of the
    step's two micro-batches, gradients are summed; the result equals a one-process run, and only
    rank 0 writes the folder."""
    mined = fake_mined(fresh(tiny_llama_dir), tmp_path / "mined")
    config = small(mined=str(mined), model=str(tiny_llama_dir), n_target_layers=1, max_steps=4, batch_size=1,
                   grad_accum=2, eval_before=False, n_eval=1, device="cpu")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "neurorit", "train", "--config", str(config_file), "--out", str(two), "--processes", "2",
         "--quiet"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "idle every step" not in proc.stderr  # grad_accum 2 = 2 processes
    assert f"run folder: {two}" in proc.stdout and proc.stdout.count("neuro_rit: done") == 1  # rank 0 prints
    assert load_yaml(two / "launch" / "train.yaml") == config.to_dict()
    one = run_training(fresh(tiny_llama_dir), demo_examples(), config, tmp_path / "one")

    report = load_report(two)
    assert report.status == "done" and report.steps == one.steps == 4
    assert loop.store.read_json(two / loop.RUN_JSON)["world_size"] == 2
    steps = [m for m in read_metrics(two) if m["event"] == "step"]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]  # one writer: each step logged once
    ref = [m for m in read_metrics(tmp_path / "one") if m["event"] == "step"]
    assert [m["tokens"] for m in steps] == [m["tokens"] for m in ref]  # the whole step's targets, not a rank's
    for a, b in zip(steps, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    got = load_file(two / "final" / "model.safetensors")
    want = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert got.keys() == want.keys()
    worst = max(scale_error(got[k], want[k]) for k in got)
    assert worst <= 1e-5, f"two-process weights differ from one process by {worst:.3g} of their scale"
    changed = [k for k in got if not torch.equal(got[k], load_file(tiny_llama_dir / "model.safetensors").get(k, got[k]))]
    assert changed, "training changed nothing"
    assert [r.answer for r in report.eval_after.results] == [r.answer for r in one.eval_after.results]


def test_the_data_parallel_command_on_a_cpu_and_its_refusals(tmp_path, capsys):
    from neurorit.cli import main
    from neurorit.training.accelerate import data_parallel_command

    config = small(device="cpu", max_steps=1)
    argv = data_parallel_command(config, tmp_path / "run", 3, job_id="j1")
    assert argv[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"]
    assert argv[6:] == ["-m", "neurorit", "train", "--config", str(tmp_path / "run" / "launch" / "train.yaml"),
                        "--out", str(tmp_path / "run"), "--quiet", "--job-id", "j1"]
    with pytest.raises(ConfigError, match="processes"):
        data_parallel_command(config, tmp_path / "run", 1)
    assert main(["train", "--method", "full", "--processes", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--processes 0: expected an integer >= 1" in capsys.readouterr().err


def test_a_background_job_trains_with_two_processes(tiny_llama_dir, tmp_path):
    """submit_training(processes=2): the job runs `neurorit train --processes 2`, whose launcher
    starts two ranks; the job ends done with rank 0's report in the folder."""
    from neurorit import jobs
    from neurorit.training import submit_training

    config = small(model=str(tiny_llama_dir), max_steps=2, batch_size=1, grad_accum=2, eval_before=False, n_eval=1,
                   device="cpu", bake=False)
    config = dataclasses.replace(config, grad_accum=1)  # one micro-batch a step: rank 1 idles, with a warning
    job, folder = submit_training(config, tmp_path / "job", processes=2)
    assert job.argv[-2:] == ("--processes", "2")
    done = jobs.wait(job.id, timeout=300)
    assert done.state == "done", done.log_tail()
    report = load_report(folder)
    assert report.status == "done" and report.steps == 2
    assert loop.store.read_json(folder / loop.RUN_JSON)["world_size"] == 2
    assert done.artifacts["report"] == str(folder / "report.json")
    assert "grad_accum 1 < 2 processes" in Path(done.log_path).read_text()
