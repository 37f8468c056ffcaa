"""A launch's wall-clock budget (``--time-budget MINUTES``): a worker starts a trial only when the
trial is expected to end inside the budget, so a batch job or a work session ends between trials
instead of killing one part-way (the stopped study resumes with the same command).

The expected length of the next trial is the median duration of the trials that already ran
(stored in the study, so it carries over launches and machines), those of the next trial's level
when some of them ran (the caller picks the durations); before any trial has run it is unknown
and the trial starts.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """``deadline``: wall-clock epoch seconds (``time.time()``) by which work should end; None
    means no budget. An absolute time, so spawned workers share their launch's deadline."""

    deadline: float | None = None

    @classmethod
    def minutes(cls, minutes: float | None) -> TimeBudget:
        """A budget of ``minutes`` from now (None: unlimited)."""
        if minutes is None:
            return cls()
        if minutes <= 0:
            raise ValueError(f"--time-budget must be > 0 minutes, got {minutes}")
        return cls(time.time() + 60.0 * minutes)

    def allows(self, durations: list[float], what: str = "trial") -> bool:
        """True when a ``what`` expected to last median(``durations``) seconds ends before the
        deadline (always with no budget or no duration yet); logs why when it does not."""
        if self.deadline is None:
            return True
        left = self.deadline - time.time()
        if not durations:
            return left > 0
        expected = statistics.median(durations)
        if expected <= left:
            return True
        log.info(
            "time budget: %.0f min left, a %s takes ~%.0f min (median of %d); stopping here, "
            "rerun the same command to resume",
            max(left, 0.0) / 60,
            what,
            expected / 60,
            len(durations),
        )
        return False
