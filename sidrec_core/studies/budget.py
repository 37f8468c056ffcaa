"""``--time-budget MINUTES``: a worker starts a trial only when it is expected (median of the
given durations) to end inside the budget, so a launch stops between trials and resumes later."""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TimeBudget:
    """``deadline``: epoch seconds (shared by spawned workers); None: no budget."""

    deadline: float | None = None

    @classmethod
    def minutes(cls, minutes: float | None) -> TimeBudget:
        if minutes is not None and minutes <= 0:
            raise ValueError(f"--time-budget must be > 0 minutes, got {minutes}")
        return cls(None if minutes is None else time.time() + 60.0 * minutes)

    def allows(self, durations: list[float], what: str = "trial") -> bool:
        """Whether a ``what`` of median(``durations``) seconds ends before the deadline."""
        if self.deadline is None:
            return True
        left = self.deadline - time.time()
        if not durations:
            return left > 0
        expected = statistics.median(durations)
        if expected > left:
            log.info(
                "time budget: %.0f min left, a %s takes ~%.0f min (median of %d); stopping here, "
                "rerun the same command to resume",
                *(max(left, 0.0) / 60, what, expected / 60, len(durations)),
            )
        return expected <= left
