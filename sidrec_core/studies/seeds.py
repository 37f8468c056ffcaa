"""Seeds per study (issue 33, item 4c): :data:`CHEAP_SEEDS` where a trial costs at most
:data:`CHEAP_MINUTES` CPU-minutes (the median measured by ``bench/trial_costs.py`` into
``experiments/trial_costs.md``), else :data:`DEFAULT_SEEDS`; a synthetic launch is a pipeline
check with :data:`PIPELINE_CHECK_SEEDS`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.trial import TrialState

CHEAP_MINUTES = 10.0
CHEAP_SEEDS, DEFAULT_SEEDS = 5, 3
PIPELINE_CHECK_SEEDS = 3
COST_TABLE = "trial_costs.md"  # written by bench/trial_costs.py
ROUND_2 = "the rest run in round 2"

ROW = re.compile(
    r"^\| `(?P<study>[^`]+)` \| (?P<trials>\d+) \| (?P<minutes>[\d.]+|—) \| .*?\| "
    r"(?P<seeds>\d+|—) \|"
)


def read_cost_table(path: Path) -> dict[str, tuple[float | None, int | None]]:
    """``{study: (median trial minutes, seeds)}`` from the table ``bench/trial_costs.py`` wrote."""
    out = {}
    for line in path.read_text().splitlines():
        m = ROW.match(line)
        if m:
            minutes = None if m["minutes"] == "—" else float(m["minutes"])
            out[m["study"]] = (minutes, None if m["seeds"] == "—" else int(m["seeds"]))
    return out


def estimated_minutes(path: Path, study: str) -> float | None:
    """The table's median trial minutes for ``study`` (None: no table, row or figure)."""
    if not path.exists():
        return None
    return read_cost_table(path).get(study, (None, None))[0]


def seeds_for_minutes(minutes: float) -> int:
    """The seed count the rule gives a study whose trial costs ``minutes`` CPU-minutes."""
    return CHEAP_SEEDS if minutes <= CHEAP_MINUTES else DEFAULT_SEEDS


def seeds_held(trials: Iterable[optuna.trial.FrozenTrial], live_point) -> int:
    """Distinct seeds among the complete trials that count (``live_point(trial)`` not None)."""
    points = (live_point(t) for t in trials if t.state == TrialState.COMPLETE)
    return len({p[1] for p in points if p is not None})


def shortfall_text(held: int, declared: int) -> str | None:
    """``"3 of 5 declared seeds; the rest run in round 2"``, None when none is missing."""
    if held >= declared:
        return None
    return f"{held} of {declared} declared seeds; {ROUND_2}"
