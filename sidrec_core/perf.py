"""How a result was made: the code (git commit, dirty tree, package versions) and, for a
benchmark, its command and how busy the machine was.

A timing taken while other jobs hold the cores measures the contention as much as the code. The
machine's 1-minute load average just before the benchmark starts counts the other jobs' runnable
threads; ``idle`` is False from half a busy core on, and such figures are no performance figures
(re-measure on idle cores). The load average lags by about a minute, so a job that ended just
before the start still counts: the flag errs on the side of "not idle".
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent

IDLE_LOAD = 0.5  # other jobs' runnable threads (1-minute load average) below which cores are idle


def git(*args: str) -> str | None:
    """``git ARGS`` in the project root -> its stdout (None when git fails or is missing)."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    return (git("rev-parse", "--short", "HEAD") or "").strip() or "unknown"


def worktree_dirty() -> bool | None:
    """Whether tracked files differ from the commit (None when git cannot tell)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


PACKAGES = ("torch", "transformers", "numpy", "faiss-cpu", "optuna", "scikit-learn", "dvc")


@functools.cache
def code_state() -> dict[str, Any]:
    """Which code made a result: commit, dirty flag, Python and the key packages' versions, read
    once per process (on its first call), as close as git can tell to the code the process
    loaded: a commit made while a worker runs does not change what the worker runs."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "commit": git_commit(),
        "worktree_dirty": worktree_dirty(),
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "packages": packages,
    }


def provenance(threads: int, device: str = "cpu") -> dict[str, Any]:
    """Call before the timed work starts -> the fields every ``bench/perf`` JSON carries."""
    import torch

    load_1m = os.getloadavg()[0]
    return {
        "command": shlex.join(["python", *sys.argv]),
        "commit": git_commit(),
        "worktree_dirty": worktree_dirty(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": device,
        "load_1m_before": round(load_1m, 2),
        "idle": load_1m < IDLE_LOAD,
    }


@contextlib.contextmanager
def usage_errors(parser: argparse.ArgumentParser) -> Iterator[None]:
    """Bad input read inside the block (a missing params file, an unknown key, a value out of
    range: ``FileNotFoundError`` or ``ValueError``, ``ConfigError`` included) ends a bench with
    argparse's usage and a one-line error, exit status 2, before any timing."""
    try:
        yield
    except (ValueError, FileNotFoundError) as exc:
        parser.error(str(exc))
