"""Seeds per study (issue 33, item 4c): :data:`CHEAP_SEEDS` where a trial costs at most
:data:`CHEAP_MINUTES` CPU-minutes (the median measured by ``bench/trial_costs.py`` into
``experiments/trial_costs.md``), else :data:`DEFAULT_SEEDS`; a synthetic launch is a pipeline
check with :data:`PIPELINE_CHECK_SEEDS`."""

from __future__ import annotations

from collections.abc import Iterable

import optuna
from optuna.trial import TrialState

CHEAP_MINUTES = 10.0
CHEAP_SEEDS, DEFAULT_SEEDS = 5, 3
PIPELINE_CHECK_SEEDS = 3
COST_TABLE = "trial_costs.md"  # written by bench/trial_costs.py
ROUND_2 = "the rest run in round 2"


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
