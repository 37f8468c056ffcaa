"""Helpers of the tests that run studies on the smoke profile (imported by the test modules;
pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from sidrec_core.studies.runner import StudyOptions
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import trial_level, trial_seed

ROOT = Path(__file__).resolve().parent.parent


def opts(tmp_path: Path, **kw) -> StudyOptions:
    kw = {"n_seeds": 2, "profile": "smoke", **kw}
    return StudyOptions(out_dir=str(tmp_path / "exp"), params_file=str(ROOT / "params.yaml"), **kw)


def trials_of(o: StudyOptions, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = make_storage(o.storage_url_for(name))
    return optuna.load_study(study_name=f"{name}-smoke", storage=storage).get_trials()


def complete_points(trials) -> list[tuple[str, int]]:
    return sorted((trial_level(t), trial_seed(t)) for t in trials if t.state == TrialState.COMPLETE)


def complete_trial(
    secs: float, params: dict | None = None, user_attrs: dict | None = None, epochs: int = 0
) -> optuna.trial.FrozenTrial:
    """A complete trial of ``params`` that took ``secs`` seconds and reported ``epochs``
    validations (a study's ``add_trial`` numbers it)."""
    start, params = dt.datetime(2026, 1, 1), params or {}
    return optuna.trial.FrozenTrial(
        number=0,
        state=TrialState.COMPLETE,
        value=0.1,
        datetime_start=start,
        datetime_complete=start + dt.timedelta(seconds=secs),
        params=params,
        distributions={k: CategoricalDistribution([v]) for k, v in params.items()},
        user_attrs=user_attrs or {},
        system_attrs={},
        intermediate_values=dict.fromkeys(range(1, epochs + 1), 0.1),
        trial_id=0,
    )
