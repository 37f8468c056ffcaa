"""Trials two studies share. A level of one study can be, setting for setting, a level of another:
the RQ-VAE default of ``restart`` is the ``rqvae`` level of ``tokenizer``, whose ``rqkmeans``
level is the default of ``collision`` and ``lm_head_slicing``. Every trial records its
:func:`~sidrec_core.studies.execute.trial_key` (the cache keys of the stages it ran: settings,
code, data, upstream); before running a grid point, the runner looks for a complete trial with
the same key in the same profile of any study's storage and takes its figures instead of
measuring them again. Storages are committed, so this holds across machines and sessions, and a
code change (a new key) is never matched with figures of the old code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.stages import resolve_params
from sidrec_core.studies.execute import stage_keys, trial_key
from sidrec_core.studies.pipeline import load_pipeline
from sidrec_core.studies.storage import read_storage
from sidrec_core.studies.study import Study

SHARED_FROM = "shared_from"  # the trial's figures are those of study#number


def is_shared(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial's figures were taken from another study's trial (it ran nothing)."""
    return SHARED_FROM in (trial.user_attrs.get("metrics") or {})


def find_shared(
    key: str, profile: str, storages: Iterable[tuple[str, str]]
) -> tuple[str, optuna.trial.FrozenTrial] | None:
    """The first complete trial recording ``trial_key == key`` in profile ``profile`` of the
    given storages -> (its study, the trial); None if there is none."""
    for name, url in storages:
        try:
            ostudy = optuna.load_study(study_name=f"{name}-{profile}", storage=read_storage(url))
        except KeyError:  # the study was never run in this profile
            continue
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (t.user_attrs.get("metrics") or {}).get("trial_key") == key:
                return name, t
    return None


def shared_metrics(
    study: Study,
    params_up: dict[str, Any],
    params_trial: dict[str, Any],
    profile: str,
    storages: Iterable[tuple[str, str]],
) -> dict[str, Any] | None:
    """The figures of a complete trial (of any study) that ran exactly this trial's stages, with
    ``shared_from`` naming it and ``spent_seconds`` 0; None when this trial has to run."""
    keys = stage_keys(
        study.run,
        study.reuse,
        resolve_params(params_up),
        resolve_params(params_trial),
        load_pipeline(),
    )
    found = find_shared(trial_key(study.run, keys), profile, storages)
    if found is None:
        return None
    name, trial = found
    return {
        **trial.user_attrs["metrics"],
        SHARED_FROM: f"{name}#{trial.number}",
        "spent_seconds": 0.0,  # spent by the trial it is taken from
    }
