"""Background jobs with real processes (`python -m neurorit ... --job-id ID`): a mining job run to the
end, the queue, cancelling, a killed process, a failing job, and the `jobs` / `submit` commands."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from neurorit import jobs
from neurorit.cli import main
from neurorit.jobs import JobError
from neurorit.mining import MinedNeurons


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NEURORIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "cache"


def mine_argv(model: Path, *, limit: int = 1, n_steps: int = 1) -> list[str]:
    return ["mine", "--model", str(model), "--data", "demo", "--limit", str(limit), "--n-steps", str(n_steps),
            "--quiet"]


def until(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    """Poll `condition()` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(0.05)


def has_ended(pid: int) -> bool:
    """The process is gone: reaped here, unknown to the kernel, or a zombie."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def test_mine_job_runs_to_done_and_records_its_result(tiny_llama_dir, capsys):
    job = jobs.submit("mine", mine_argv(tiny_llama_dir, limit=2, n_steps=2))
    assert job.state == "running" and job.pid
    job = jobs.wait(job.id, timeout=120)
    assert job.state == "done", (job.error, job.log_tail())
    assert job.done == job.total == 2 and job.fraction == 1.0 and job.error == ""
    assert job.pid is None and job.finished >= job.started >= job.created
    mined = Path(job.artifacts["mined"])
    assert mined.is_dir()
    assert MinedNeurons.load(mined).example_ids == ("demo-01", "demo-02")
    assert Path(job.log_path).is_file() and f"mined sets: {mined}" in job.log_tail()

    # the command line reads the same table
    assert main(["jobs", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(job.id))
    assert line.split()[:3] == [job.id, "done", "2/2"]
    assert main(["jobs", "show", job.id]) == 0
    out = capsys.readouterr().out
    assert f'"id": "{job.id}"' in out and '"state": "done"' in out and "mined sets:" in out

    # cancelling a finished job changes nothing
    assert jobs.cancel(job.id) == job


def test_queue_runs_one_job_at_a_time_and_the_first_starts_the_second(tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("NEURORIT_MAX_JOBS", "1")
    first = jobs.submit("mine", mine_argv(tiny_llama_dir))
    second = jobs.submit("mine", mine_argv(tiny_llama_dir, n_steps=2))
    assert first.state == "running"
    assert second.state == "queued" and second.pid is None
    assert jobs.get(second.id).state == "queued"  # still waiting while the first runs
    first = jobs.wait(first.id, timeout=120)
    second = jobs.wait(second.id, timeout=120)
    assert (first.state, second.state) == ("done", "done"), (first.error, second.error)
    assert second.started >= first.finished  # never both at once
    assert [j.id for j in jobs.list_jobs()] == [second.id, first.id]  # newest first


def test_cancel_stops_a_running_job(tiny_llama_dir):
    job = jobs.submit("mine", mine_argv(tiny_llama_dir, limit=20, n_steps=20))
    pid = job.pid
    until(lambda: jobs.get(job.id).done >= 1, 90, "the job's first progress report")
    cancelled = jobs.cancel(job.id)
    assert cancelled.state == "cancelled" and cancelled.finished is not None
    until(lambda: has_ended(pid), 10, f"process {pid} to end after the cancel")
    job = jobs.get(job.id)
    assert job.state == "cancelled" and job.done < job.total == 20
    assert "mined" not in job.artifacts


def test_a_killed_job_is_reported_failed(tiny_llama_dir):
    job = jobs.submit("mine", mine_argv(tiny_llama_dir, limit=20, n_steps=20))
    os.kill(job.pid, signal.SIGKILL)
    job = until(lambda: (j := jobs.get(job.id)).state != "running" and j, 10, "the killed job to be noticed")
    assert job.state == "failed"
    assert "ended without reporting" in job.error
    assert has_ended(job.pid)


def test_a_failing_job_records_its_error(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["submit", "mine", "--data", str(missing), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("submitted mine-")
    job_id = out.split()[1]
    job = jobs.wait(job_id, timeout=60)
    assert job.state == "failed"
    assert f"{missing} does not exist" in job.error
    assert f"neurorit: error: {missing} does not exist" in job.log_tail()
    assert jobs.cancel(job_id) == job  # a no-op on a finished job
    assert main(["jobs", "list"]) == 0
    assert f"{job_id}  failed" in capsys.readouterr().out


def test_unknown_job_id():
    with pytest.raises(JobError, match="no job with id 'mine-nope'.*jobs list"):
        jobs.get("mine-nope")
    with pytest.raises(JobError, match="no job with id"):
        jobs.cancel("mine-nope")


def test_jobs_command_errors(capsys):
    assert main(["jobs", "show", "mine-nope"]) == 2
    assert capsys.readouterr().err.strip().startswith("neurorit: error: no job with id 'mine-nope'")
    assert main(["jobs", "show"]) == 2
    assert "needs a job id" in capsys.readouterr().err
    assert main(["submit", "train"]) == 2
    assert "mine" in capsys.readouterr().err
    assert jobs.list_jobs() == []


class _FakeProcess:
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        time.sleep(0.2)  # a slow start widens any race between two dispatchers
        STARTS.append(args)
        self.pid = os.getpid()  # a live process


STARTS: list[object] = []


def test_concurrent_dispatchers_start_a_queued_job_once(monkeypatch):
    monkeypatch.setenv("NEURORIT_MAX_JOBS", "1")
    monkeypatch.setattr(jobs.subprocess, "Popen", _FakeProcess)
    STARTS.clear()
    first = jobs.submit("mine", ["mine"])
    second = jobs.submit("mine", ["mine"])
    assert (first.state, second.state, len(STARTS)) == ("running", "queued", 1)
    with closing(jobs._connect()) as conn:  # the first ends without dispatching
        conn.execute("UPDATE jobs SET state='done' WHERE id=?", (first.id,))
    readers = [threading.Thread(target=jobs.get, args=(second.id,)) for _ in range(4)]
    for t in readers:
        t.start()
    for t in readers:
        t.join(timeout=30)
    assert len(STARTS) == 2
    assert jobs.get(second.id).state == "running"


def test_cancel_a_queued_job_never_starts_it(monkeypatch):
    monkeypatch.setenv("NEURORIT_MAX_JOBS", "1")
    monkeypatch.setattr(jobs.subprocess, "Popen", _FakeProcess)
    STARTS.clear()
    first = jobs.submit("mine", ["mine"])
    second = jobs.submit("mine", ["mine"])
    cancelled = jobs.cancel(second.id)
    assert cancelled.state == "cancelled" and cancelled.pid is None and cancelled.started is None
    jobs.JobReporter(first.id).finish()  # the slot frees: nothing queued is left to start
    assert len(STARTS) == 1
    assert [j.state for j in jobs.list_jobs()] == ["cancelled", "done"]
