"""The one markdown writer of the reports and the index: tables and the shared figure formats."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import optuna
from optuna.trial import TrialState

ALPHA = 0.05  # every test's significance level, after Holm's correction
COST_MARKERS = ("per_second", "seconds", "peak_rss_mb", "peak_cuda_mb", "_mb")


def row(cells: Iterable[object]) -> str:
    """``| a | b |`` (an empty cell is ``|  |``)."""
    return "|" + "".join(f" {c} |" for c in cells)


def table(header: Iterable[str], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    header = list(header)
    return [row(header), "|" + "---|" * len(header), *map(row, rows)]


def is_cost(col: str) -> bool:
    """Throughput, time and memory: skewed by shared cores, shown as median [min, max]."""
    return any(m in col for m in COST_MARKERS)


def fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def pm(mean: float | None, half_width: float, f: Callable[[float], str] = fmt) -> str:
    """``mean ± half_width``; the mean alone when the half-width is nan (one seed)."""
    return f(mean) if math.isnan(half_width) else f"{f(mean)} ± {f(half_width)}"


def interval(bounds: tuple[float, float] | None) -> str:
    return "not recorded" if bounds is None else f"[{fmt(bounds[0])}, {fmt(bounds[1])}]"


def significant(adjusted_p: float | None) -> str:
    return "n/a" if adjusted_p is None else ("yes" if adjusted_p < ALPHA else "no")


def assignments(items: Iterable[tuple[str, object]]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in items)


def state_counts(trials: list[optuna.trial.FrozenTrial]) -> str:
    """``17 complete, 6 pruned``: the trials by state, the empty ones left out."""
    counts = ((s.name.lower(), sum(t.state == s for t in trials)) for s in TrialState)
    return ", ".join(f"{n} {name}" for name, n in counts if n)
