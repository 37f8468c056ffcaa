"""How many seeds a study runs, and what a trial of it costs (issue 33, item 4c).

A study whose trial costs at most :data:`CHEAP_MINUTES` CPU-minutes runs :data:`CHEAP_SEEDS`
seeds, any other :data:`DEFAULT_SEEDS`; ``studies.yaml`` declares the count per study
(:attr:`~sidrec_core.studies.study.Study.seeds`). The cost is measured, not guessed: the median
``wall_seconds`` of the study's complete real-data trials (the stages a trial re-runs, on one
thread; the upstream stages a new seed needs are built once per seed and not counted), written by
``python bench/trial_costs.py`` into ``experiments/trial_costs.md``. A study with no real-data
trial takes its basis from the studies that run the same stages.

A synthetic (smoke) launch is a pipeline check with no statistics: it keeps
:data:`PIPELINE_CHECK_SEEDS` whatever the study declares.
"""

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
