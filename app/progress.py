"""An `st.progress` adapter for the library's `on_progress(done, total, message)` callbacks.

Owns: drawing one progress bar with the message, the count and an ETA; splitting one bar over
several stages (e.g. IG on the relevant view, then the irrelevant view); the button that cancels
a background job; reading the job table with its error and, when the table is corrupt, the button
that repairs it (app.jobs_client.repair_table). Must not: compute anything itself. The user stops long work with Streamlit's Stop button: the next progress call
then ends the script run.
"""

from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import streamlit as st

from app.views import format_seconds
from neurorit.types import ProgressFn

T = TypeVar("T")
_REPAIRED = "neurorit.jobs.repaired"  # the last repair's summary, shown once after the rerun


class StreamlitProgress:
    """Callable as on_progress; `stage(i, n, name)` gives the callback of stage i of n."""

    def __init__(self, label: str, container: Any | None = None) -> None:
        self.label = label
        self.start = time.perf_counter()
        self._slot = (container or st).empty()
        self._bar = self._slot.progress(0.0, text=f"{label}: starting…")
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))
        fraction = min(1.0, max(0.0, done / total)) if total else 0.0
        elapsed = time.perf_counter() - self.start
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else None
        text = f"{self.label}: {message} · {fraction:.0%} · {format_seconds(elapsed)} elapsed"
        if eta is not None and fraction < 1:
            text += f" · ETA {format_seconds(eta)}"
        self._bar.progress(fraction, text=text)

    def stage(self, index: int, n_stages: int, name: str) -> ProgressFn:
        """A callback mapping one stage's progress onto its slice [index/n, (index+1)/n] of the bar."""

        def report(done: int, total: int, message: str) -> None:
            part = done / total if total else 0.0
            self(int(round((index + part) * 1000)), n_stages * 1000, f"{name}: {message}")

        return report

    def clear(self) -> None:
        self._slot.empty()


def cancel_button(job_id: str, *, label: str, key: str, container: Any | None = None) -> None:
    """A button that cancels the background job (an error message if that fails), then reruns."""
    if (container or st).button(label, key=key):
        from neurorit import jobs
        from neurorit.errors import NeuroritError

        try:
            jobs.cancel(job_id)
        except (NeuroritError, OSError) as exc:
            st.error(f"Cannot cancel job {job_id}: {exc}")
        st.rerun()


def read_job_table(read: Callable[[], T], *, key: str) -> T | None:
    """`read()` (a call into the job table), or None after showing why it failed; a corrupt table
    gets a button that runs the same repair as `neurorit jobs repair`, then reruns the page."""
    from neurorit.errors import NeuroritError
    from neurorit.jobs import JobTableCorruptError

    repaired = st.session_state.pop(_REPAIRED, None)
    if repaired:
        st.success(repaired)
    try:
        return read()
    except (NeuroritError, OSError) as exc:
        st.error(f"Cannot read the job table: {exc}")
        if isinstance(exc, JobTableCorruptError) and st.button(
                "Repair the job table", key=key, help="Keeps the corrupt file aside as jobs.sqlite.corrupt-<time> "
                "and rebuilds the table from the job logs and run folders on disk (`neurorit jobs repair`)."):
            from app import jobs_client

            try:
                st.session_state[_REPAIRED] = jobs_client.repair_table().summary()
            except (NeuroritError, OSError) as failed:
                st.error(f"Could not repair the job table: {failed}")
                return None
            st.rerun()
        return None
