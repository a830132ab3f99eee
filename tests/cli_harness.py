"""Driving the CLI in-process for tests: run a command, require success, or require a clean refusal
(exit 2, one line on stderr, no traceback); and a snapshot of a folder tree, to show that a refused
command changed nothing on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from neurorit.cli import main


def run(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """`neurorit <argv>` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys: pytest.CaptureFixture, *argv: object) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def reason(capsys: pytest.CaptureFixture, *argv: object) -> str:
    """Run a command that must fail on its input: exit 2 and ONE stderr line (progress bars aside)."""
    code, out, err = run(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err
    # transformers draws a "Loading weights" bar with carriage returns; everything else is the reason
    lines = [line for line in err.splitlines() if line.strip() and "\r" not in line and "it/s]" not in line]
    if any(line.startswith("usage:") for line in lines):  # argparse's own usage error
        assert lines[-1].startswith("neurorit") and ": error:" in lines[-1], err
        return lines[-1]
    assert len(lines) == 1, err
    assert lines[0].startswith("neurorit: error: "), err
    return lines[0]


def tree_snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256 of its bytes); {} when `root` is absent."""
    if not root.exists():
        return {}
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*")) if path.is_file()
    }
