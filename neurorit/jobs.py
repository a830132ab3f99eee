"""Background jobs: long work (mining a dataset, training) as processes recorded in SQLite.

Owns: the job table in `cache/jobs.sqlite` (queued / running / done / failed / cancelled,
progress, log file, artifacts), starting a job as its own process (`python -m neurorit ...`),
a queue with at most `NEURORIT_MAX_JOBS` (default 1) running at once, cancelling, noticing jobs
whose process died, and the `JobReporter` a job process writes its progress through. The CLI and
the workbench read the same table, so nothing is lost when either restarts. A table file that is
not a readable SQLite database (checked with `PRAGMA quick_check` on every connection) is refused
with JobTableCorruptError, which names `neurorit jobs repair` (neurorit.job_recovery); that command
moves it aside and writes a new table through `replace_table`.
Must not: know what a job computes.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from neurorit.errors import NeuroritError
from neurorit.processes import is_alive
from neurorit.store import cache_root

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, argv TEXT NOT NULL,
    created REAL NOT NULL, started REAL, finished REAL, pid INTEGER,
    done INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, message TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL, artifacts TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT ''
)
"""


REPAIR_COMMAND = "neurorit jobs repair"


class JobError(NeuroritError):
    """A job id is unknown, or a job cannot move to the asked state."""


class JobTableCorruptError(JobError):
    """`cache/jobs.sqlite` is not a readable SQLite database (overwritten, truncated, damaged pages)."""


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    state: str
    argv: tuple[str, ...]
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    done: int
    total: int
    message: str
    log_path: str
    artifacts: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the rate so far (None before the first unit of progress)."""
        if self.state != "running" or not self.started or not self.done or not self.total:
            return None
        rate = (time.time() - self.started) / self.done
        return rate * (self.total - self.done)

    def log_tail(self, lines: int = 20) -> str:
        path = Path(self.log_path)
        if not path.is_file():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def db_path() -> Path:
    return cache_root() / "jobs.sqlite"


def _corrupt(path: Path, detail: str) -> JobTableCorruptError:
    return JobTableCorruptError(
        f"the job table {path} is corrupt ({detail}); expected a readable SQLite database. Run `{REPAIR_COMMAND}` "
        f"to keep it aside as {path.name}.corrupt-<time> and rebuild the table from the run folders and job logs "
        "on disk."
    )


def _is_corruption(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT / SQLITE_NOTADB, or a stored text that is not UTF-8 (a damaged page)."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    return (type(exc) is sqlite3.DatabaseError or name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
            or "malformed" in text or "not a database" in text or "decode" in text)


def _unusable(path: Path, exc: sqlite3.Error) -> JobError:
    if _is_corruption(exc):
        return _corrupt(path, str(exc))
    return JobError(f"cannot use the job table {path}: {exc}.")


def _connect() -> sqlite3.Connection:
    """A connection to the job table, checked first (`PRAGMA quick_check`): a damaged file is refused
    (JobTableCorruptError) before anything is written to it."""
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise _unusable(path, exc) from exc
    try:
        problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            lines = [line for p in problems for line in p.splitlines() if line and not line.startswith("***")]
            raise _corrupt(path, "; ".join(lines[:2]) or "quick_check failed")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(_SCHEMA)
    except sqlite3.Error as exc:
        conn.close()
        raise _unusable(path, exc) from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def _database() -> Iterator[sqlite3.Connection]:
    """`_connect()` for one block, closed after it; an SQLite error inside becomes a JobError."""
    conn = _connect()
    try:
        yield conn
    except sqlite3.Error as exc:
        raise _unusable(db_path(), exc) from exc
    finally:
        conn.close()


def _row_to_job(row: sqlite3.Row | tuple) -> Job:
    try:
        (id_, kind, state, argv, created, started, finished, pid, done, total, message, log_path, artifacts,
         error) = row
        return Job(id_, kind, state, tuple(json.loads(argv)), created, started, finished, pid, done, total,
                   message, log_path, json.loads(artifacts), error)
    except (TypeError, ValueError) as exc:  # a damaged row: not the JSON we wrote
        raise _corrupt(db_path(), f"a job record does not decode: {exc}") from exc


def check_table() -> None:
    """Raise JobTableCorruptError when the job table cannot be read (creates an empty one when absent)."""
    with _database() as conn:
        for row in conn.execute("SELECT * FROM jobs").fetchall():
            _row_to_job(row)


def replace_table(records: Sequence[Job]) -> tuple[Path, ...]:
    """Move the job table aside (with its -wal / -shm files) as `jobs.sqlite.corrupt-<time>`, start a
    new one and write `records` into it; returns where the old files went."""
    path = db_path()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while any(Path(f"{aside}{s}").exists() for s in ("", "-wal", "-shm")):
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    moved = []
    for suffix in ("", "-wal", "-shm"):  # kept together: sqlite opens `<aside>` with `<aside>-wal`
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, Path(f"{aside}{suffix}"))
            moved.append(Path(f"{aside}{suffix}"))
    with _database() as conn:
        for job in records:
            conn.execute(
                "INSERT OR REPLACE INTO jobs (id, kind, state, argv, created, started, finished, pid, done, total, "
                "message, log_path, artifacts, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.kind, job.state, json.dumps(list(job.argv)), job.created, job.started, job.finished,
                 job.pid, job.done, job.total, job.message, job.log_path, json.dumps(job.artifacts), job.error),
            )
    return tuple(moved)


def _reap_dead(conn: sqlite3.Connection) -> None:
    """A running job whose process is gone (killed, machine restart) becomes failed."""
    for job_id, pid in conn.execute("SELECT id, pid FROM jobs WHERE state = 'running'").fetchall():
        if not is_alive(pid):
            conn.execute(
                "UPDATE jobs SET state='failed', finished=?, error=? WHERE id=? AND state='running'",
                (time.time(), "the job's process ended without reporting (killed or crashed); see its log", job_id),
            )


def max_running() -> int:
    return max(1, int(os.environ.get("NEURORIT_MAX_JOBS", "1")))


def _dispatch(conn: sqlite3.Connection) -> None:
    """Start queued jobs, oldest first, while fewer than max_running() run."""
    _reap_dead(conn)
    while True:
        conn.execute("BEGIN IMMEDIATE")  # one dispatcher at a time (any process): a queued job starts once
        try:
            running = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()[0]
            if running >= max_running():
                return
            row = conn.execute("SELECT id, argv, log_path FROM jobs WHERE state='queued' ORDER BY created LIMIT 1").fetchone()
            if row is None:
                return
            job_id, argv, log_path = row
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "neurorit", *json.loads(argv), "--job-id", job_id],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    env={**os.environ, "NEURORIT_CACHE": str(cache_root())},
                )
            conn.execute(
                "UPDATE jobs SET state='running', started=?, pid=? WHERE id=?", (time.time(), proc.pid, job_id)
            )
        finally:
            conn.execute("COMMIT")


def submit(kind: str, argv: list[str]) -> Job:
    """Queue `python -m neurorit <argv>` as a job; it starts now if a slot is free."""
    job_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log_path = cache_root() / "jobs" / f"{job_id}.log"
    with _database() as conn:
        conn.execute(
            "INSERT INTO jobs (id, kind, state, argv, created, log_path) VALUES (?, ?, 'queued', ?, ?, ?)",
            (job_id, kind, json.dumps(list(argv)), time.time(), str(log_path)),
        )
        _dispatch(conn)
    return get(job_id)


def get(job_id: str) -> Job:
    with _database() as conn:
        _dispatch(conn)
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    if row is None:
        raise JobError(f"no job with id {job_id!r}; `neurorit jobs list` shows the known ones.")
    return _row_to_job(row)


def list_jobs(kind: str | None = None, limit: int = 50) -> list[Job]:
    with _database() as conn:
        _dispatch(conn)
        if kind:
            rows = conn.execute("SELECT * FROM jobs WHERE kind=? ORDER BY created DESC LIMIT ?", (kind, limit))
        else:
            rows = conn.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))
        return [_row_to_job(r) for r in rows.fetchall()]


def cancel(job_id: str) -> Job:
    """Cancel a queued job, or stop a running one (SIGTERM to its process group)."""
    job = get(job_id)
    if job.state in FINAL_STATES:
        return job
    with _database() as conn:
        conn.execute(
            "UPDATE jobs SET state='cancelled', finished=? WHERE id=? AND state IN ('queued', 'running')",
            (time.time(), job_id),
        )
    if job.state == "running" and job.pid:
        try:
            os.killpg(job.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    with _database() as conn:
        _dispatch(conn)
    return get(job_id)


def wait(job_id: str, timeout: float = 600.0, poll: float = 0.2) -> Job:
    """Block until the job reaches a final state (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(job_id)
        if job.state in FINAL_STATES:
            return job
        if time.monotonic() > deadline:
            raise JobError(f"job {job_id} still {job.state} after {timeout:.0f} s.")
        time.sleep(poll)


class JobReporter:
    """What a job process writes to its record: progress, artifacts, and how it ended."""

    def __init__(self, job_id: str, min_interval: float = 0.5) -> None:
        self.job_id = job_id
        self.min_interval = min_interval
        self._last = 0.0

    def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        with _database() as conn:
            conn.execute(sql, (*args, self.job_id))

    def cancelled(self) -> bool:
        return get(self.job_id).state == "cancelled"

    def progress(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.min_interval:
            return
        self._last = now
        self._update("UPDATE jobs SET done=?, total=?, message=? WHERE id=? AND state='running'", (done, total, message))

    def artifact(self, name: str, path: str | Path) -> None:
        with _database() as conn:
            conn.execute("BEGIN IMMEDIATE")  # read-modify-write: several processes may record artifacts
            try:
                row = conn.execute("SELECT artifacts FROM jobs WHERE id=?", (self.job_id,)).fetchone()
                artifacts = json.loads(row[0]) if row else {}
                artifacts[name] = str(path)
                conn.execute("UPDATE jobs SET artifacts=? WHERE id=?", (json.dumps(artifacts), self.job_id))
            finally:
                conn.execute("COMMIT")

    def finish(self, error: str = "") -> None:
        state = "failed" if error else "done"
        with _database() as conn:
            conn.execute(
                "UPDATE jobs SET state=?, finished=?, error=? WHERE id=? AND state='running'",
                (state, time.time(), error, self.job_id),
            )
            conn.execute("UPDATE jobs SET pid=NULL WHERE id=?", (self.job_id,))
            _dispatch(conn)
