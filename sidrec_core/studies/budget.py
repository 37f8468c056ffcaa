"""When a worker stops early. ``--time-budget MINUTES``: it starts a trial only when it is
expected (median of the given durations, :func:`expected_seconds`) to end inside the budget, so
a launch stops between trials and resumes later. :class:`FailureStreak`: it stops after
``FAILS_IN_A_ROW`` of its trials failed in a row, since a broken environment (a virtualenv gone,
a full disk) fails every queued trial within seconds and each would be recorded as failed.
:func:`stop_on_signal`: ``kill -USR1 PID`` asks a launch to end after the trials it is running."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from sidrec_core.studies import dvc_run
from sidrec_core.studies.study import is_shared, trial_level, trial_seed
from sidrec_core.studies.trial_resume import RESUMED_SECONDS

if TYPE_CHECKING:
    from sidrec_core.studies.elsewhere import Elsewhere

log = logging.getLogger(__name__)
FAILS_IN_A_ROW = 3
STOP = threading.Event()  # set by STOP_SIGNAL: no worker of this process starts another trial
STOP_SIGNAL = signal.SIGUSR1


@contextlib.contextmanager
def stop_on_signal() -> Iterator[None]:
    """While open, :data:`STOP_SIGNAL` (``kill -USR1 PID``) sets :data:`STOP`, passed on to the
    worker processes this one spawned: each ends after its current trial, and a later study of
    the launch starts none; the same command resumes. Main thread only."""

    def handler(_signum: int, _frame: object) -> None:
        log.info("stop signal: no trial starts after the running ones; rerun to resume")
        STOP.set()
        for child in multiprocessing.active_children():
            os.kill(child.pid, STOP_SIGNAL)

    STOP.clear()
    previous = signal.signal(STOP_SIGNAL, handler)
    try:
        yield
    finally:
        signal.signal(STOP_SIGNAL, previous)
        STOP.clear()


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """``deadline``: epoch seconds (shared by spawned workers); None: no budget."""

    deadline: float | None = None

    @classmethod
    def minutes(cls, minutes: float | None) -> TimeBudget:
        if minutes is not None and minutes <= 0:
            raise ValueError(f"--time-budget must be > 0 minutes, got {minutes}")
        return cls(None if minutes is None else time.time() + 60.0 * minutes)

    def fits(self, durations: list[float]) -> bool:
        """Whether a trial of median(``durations``) seconds ends before the deadline."""
        if self.deadline is None:
            return True
        left = self.deadline - time.time()
        return statistics.median(durations) <= left if durations else left > 0

    def allows(self, durations: list[float], what: str = "trial") -> bool:
        """:meth:`fits`, saying why not in the log."""
        if self.fits(durations):
            return True
        if durations:  # (without any, no time is left)
            left = max(float(self.deadline or 0.0) - time.time(), 0.0)
            log.info(
                "time budget: %.0f min left, a %s takes ~%.0f min (median of %d); stopping here, "
                "rerun the same command to resume",
                *(left / 60, what, statistics.median(durations) / 60, len(durations)),
            )
        return False


@dataclasses.dataclass
class FailureStreak:
    """The failures in a row among the trials one worker finished (a pruned one neither breaks
    nor extends the streak); an Optuna callback."""

    limit: int = FAILS_IN_A_ROW
    count: int = 0
    last_error: str = ""

    def __call__(self, _study: object, trial: FrozenTrial) -> None:
        if trial.state == TrialState.FAIL:
            self.count += 1
            self.last_error = str(trial.user_attrs.get("error", "no error recorded"))
        elif trial.state == TrialState.COMPLETE:
            self.count = 0

    @property
    def tripped(self) -> bool:
        return self.count >= self.limit

    def reason(self) -> str | None:
        """Why the worker stopped (one line), or None while the streak is short of the limit."""
        if not self.tripped:
            return None
        first = self.last_error.splitlines()[0] if self.last_error else ""
        return f"{self.count} trials in a row failed, the last with: {first[:300]}"


def ran_here(ostudy: optuna.Study) -> list[FrozenTrial]:
    """The complete trials that ran here (not taken from another study)."""
    done = ostudy.get_trials(False, states=(TrialState.COMPLETE,))
    return [t for t in done if not is_shared(t)]


def expected_seconds(
    ostudy: optuna.Study, level: str, seed: int | None = None, other: Elsewhere | None = None
) -> list[float]:
    """What a time budget expects the next trial of ``level`` (at ``seed``) to take: its level's
    trials here, each at its own cost (:func:`own_seconds`) plus the upstream cost the seed pays
    on this machine (:func:`upstream_seconds`). Before one finished here: the level's trials on
    ``other`` datasets, scaled to this one (``encoder_decoder`` costs 6x ``decoder``), else the
    slowest trial here (an RPG level with twice the codebooks took three times the study's
    median); before any trial finished here, ``other``'s reused stages are added once."""
    done = ran_here(ostudy)
    mine = [own_seconds(t) for t in done if trial_level(t) == level]
    if not done and other is not None:
        return [other.level(level) + other.per_seed]
    if not mine and other is not None and level in other.levels:
        mine = [other.levels[level]]
    own = mine or ([max(map(own_seconds, done))] if done else [])
    extra = upstream_seconds(done, seed)
    return [x + extra for x in own]


def points_seconds(
    done: list[FrozenTrial], points: list[tuple[str, int]], other: Elsewhere | None = None
) -> float:
    """A best guess at what grid ``points`` cost here (an ETA, a plan; a budget takes
    :func:`expected_seconds`' cautious one): each at its level's median own cost, a level with no
    trial yet at its cost on ``other`` datasets, else the median over all of ``done`` (not empty),
    plus once per seed the upstream its first trial on this machine trains
    (:func:`upstream_seconds`)."""
    own = sum(level_seconds(done, level, other) for level, _ in points)
    return own + sum(upstream_seconds(done, seed) for seed in {s for _, s in points})


def level_seconds(done: list[FrozenTrial], level: str, other: Elsewhere | None = None) -> float:
    """A trial of ``level``'s own cost here: the median of its trials in ``done``; with none, its
    cost on ``other`` datasets, else the median over all of ``done`` (not empty)."""
    mine = [own_seconds(t) for t in done if trial_level(t) == level]
    if not mine and other is not None and level in other.levels:
        return other.levels[level]
    return statistics.median(mine or [own_seconds(t) for t in done])


def own_seconds(t: FrozenTrial) -> float:
    """A trial's cost less the upstream stages it ran (a seed's first trial trains the SID LM or
    SASRec that the seed's other levels reuse)."""
    return trial_seconds(t) - float(
        t.user_attrs.get("metrics", {}).get(dvc_run.UPSTREAM_SPENT) or 0.0
    )


def upstream_seconds(done: list[FrozenTrial], seed: int | None) -> float:
    """The upstream cost ``seed``'s next trial pays here: none when a trial of the seed recorded
    its upstream outs and this machine's DVC cache holds them all (else a fresh machine trains
    them again), nor when no trial recorded any (older trials: their durations hold it); else
    the median of the upstream costs recorded."""
    recorded = [t for t in done if t.user_attrs.get(dvc_run.UPSTREAM_OUTS) is not None]
    same = [t for t in recorded if trial_seed(t) == seed]
    if not recorded or any(dvc_run.cached(t.user_attrs[dvc_run.UPSTREAM_OUTS]) for t in same):
        return 0.0
    return float(
        statistics.median([t.user_attrs["metrics"].get(dvc_run.UPSTREAM, 0.0) for t in recorded])
    )


def trial_seconds(t: FrozenTrial) -> float:
    """What a finished trial cost: its wall time, or its stages' when DVC restored them, plus the
    training of earlier attempts it resumed (:mod:`~.trial_resume`)."""
    took = max((t.datetime_complete - t.datetime_start).total_seconds(), stage_seconds(t))
    return took + float(t.user_attrs.get("metrics", {}).get(RESUMED_SECONDS) or 0.0)


def stage_seconds(t: FrozenTrial) -> float:
    """The wall seconds the trial's stages recorded (0 where it recorded none)."""
    wall = t.user_attrs.get("wall_seconds", t.user_attrs.get("metrics", {}).get("wall_seconds"))
    return float(wall) if isinstance(wall, int | float) else 0.0
