"""Helpers of the tests that run studies on the smoke profile (imported by the test modules;
pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from sidrec_core.studies.runner import StudyOptions
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import trial_level, trial_seed

ROOT = Path(__file__).resolve().parent.parent


def opts(tmp_path: Path, **kw) -> StudyOptions:
    kw.setdefault("n_seeds", 2)
    return StudyOptions(
        profile="smoke", out_dir=str(tmp_path / "exp"), params_file=str(ROOT / "params.yaml"), **kw
    )


def trials_of(o: StudyOptions, name: str) -> list[optuna.trial.FrozenTrial]:
    storage = make_storage(o.storage_url_for(name))
    return optuna.load_study(study_name=f"{name}-smoke", storage=storage).get_trials()


def complete_points(trials) -> list[tuple[str, int]]:
    return sorted((trial_level(t), trial_seed(t)) for t in trials if t.state == TrialState.COMPLETE)
