"""Which grid points DVC's run-cache restores whole on this machine rather than trains: a point
whose stages and params (:func:`~.elsewhere.point_key`, the seed aside) a complete trial of some
study's section on the same profile ran at the seed, its outs and its upstream's in this
machine's DVC cache (:func:`~.dvc_run.restorable`). ``beam_width``'s default is ``decoding``'s
``constrained``, ``similarity``'s ``dot`` is ``sasrec_loss``'s ``ce``. A plan counts such a point
once (:mod:`~.plan`); a worker's time budget prices it at :data:`RESTORE_SECONDS`, not at its
level's training (:func:`~.runner.next_trial_check`). The key leaves the code out: where a
stage's code changed since the complete trial ran, DVC trains the point after all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from sidrec_core.studies.budget import ran_here
from sidrec_core.studies.defaults import effective_defaults, optuna_name
from sidrec_core.studies.dvc_run import restorable
from sidrec_core.studies.elsewhere import point_key
from sidrec_core.studies.registry import load_studies
from sidrec_core.studies.storage import exists, make_storage
from sidrec_core.studies.study import Study, live_point

# a budget's price of a restored trial; measured: `beam_width`'s default on Sports at seed 0,
# restored from `decoding`'s `constrained`, took 5 s (two cores, both busy)
RESTORE_SECONDS = 60.0


def complete_points(study: Study, ostudy: optuna.Study, params: dict[str, Any]) -> set:
    """``(point_key, seed)`` of ``ostudy``'s live complete trials that ran here (none taken from
    another study) and that DVC would restore on this machine; none for a study with a set-up
    hook (its inputs, a local checkpoint, are part of its key)."""
    if study.setup:
        return set()
    points = {live_point(study, t) for t in ran_here(ostudy) if restorable(t)}
    return {(point_key(study, lv, params), seed) for lv, seed in filter(None, points)}


def restorable_points(
    params: dict[str, Any], profile: str, location_for: Callable[[str], str]
) -> set[tuple[str, int]]:
    """:func:`complete_points` of every registered study's section on ``profile`` at its
    today's defaults (``location_for(name)``: the study's storage; ``params``: the launch's,
    before any set-up hook)."""
    found: set[tuple[str, int]] = set()
    for name, study in load_studies().items():
        url = location_for(name)
        if study.setup or not exists(url):
            continue
        storage = make_storage(url)
        section = optuna_name(storage, name, profile, effective_defaults(study, params))
        if section in optuna.get_all_study_names(storage):
            ostudy = optuna.load_study(study_name=section, storage=storage)
            found |= complete_points(study, ostudy, params)
    return found
