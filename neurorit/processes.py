"""Processes: whether one is alive, and whether a lock's holder (pid + host) is a live process here.

Owns: `is_alive(pid)` and `holds(holder)`, used by the job table (jobs.py), run-folder locks
(training/checkpoints.py) and recovery (job_recovery.py). Must not: know jobs or runs.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping


def is_alive(pid: int | None) -> bool:
    """Whether a process is running (reaps our own finished children; a zombie is not alive)."""
    if not pid:
        return False
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)  # reap our own finished children
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def holds(holder: Mapping[str, Any] | None) -> bool:
    """Whether a lock holder record ({"pid", "host", ...}) is a live process on this machine."""
    if not holder:
        return False
    try:
        pid = int(holder.get("pid") or 0)
    except (TypeError, ValueError):
        return False
    return holder.get("host") == socket.gethostname() and is_alive(pid)
