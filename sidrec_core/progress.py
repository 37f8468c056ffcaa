"""Progress lines for long loops over users (evaluation, beam decoding): done / total, rate and
ETA, logged at most every ``every_seconds`` so a 7-minute decode is not silent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """``update(n)`` after each batch; logs ``label: done/total users (pct), rate users/s, ETA``
    when ``every_seconds`` have passed since the last line (``every_seconds <= 0``: never)."""

    def __init__(
        self,
        total: int,
        label: str,
        every_seconds: float = 30.0,
        unit: str = "users",
        clock: Callable[[], float] = time.perf_counter,
        logger: logging.Logger = log,
    ):
        self.total, self.label, self.every, self.unit = total, label, every_seconds, unit
        self.clock, self.logger = clock, logger
        self.done = 0
        self.start = self.last = clock()

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.every <= 0 or now - self.last < self.every or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        self.logger.info(
            "%s: %d/%d %s (%.0f%%), %.1f %s/s, ETA %s",
            self.label,
            self.done,
            self.total,
            self.unit,
            100.0 * self.done / max(self.total, 1),
            rate,
            self.unit,
            format_seconds((self.total - self.done) / max(rate, 1e-9)),
        )
