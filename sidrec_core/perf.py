"""How a benchmark's figures were made: command, commit, versions, and how busy the machine was.

A timing taken while other jobs hold the cores measures the contention as much as the code. The
machine's 1-minute load average just before the benchmark starts counts the other jobs' runnable
threads; ``idle`` is False from half a busy core on, and such figures are no performance figures
(re-measure on idle cores). The load average lags by about a minute, so a job that ended just
before the start still counts: the flag errs on the side of "not idle".
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import shlex
import sys
from typing import Any

from sidrec_core.tracking import git, git_commit

IDLE_LOAD = 0.5  # other jobs' runnable threads (1-minute load average) below which cores are idle


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
