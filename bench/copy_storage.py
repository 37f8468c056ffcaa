"""Copy every Optuna study of one storage into another: ``python bench/copy_storage.py SRC DST``.

SRC and DST are each an RDB URL (``sqlite:///PATH``, ``postgresql://USER@HOST/DB``) or the path
of an Optuna journal file; DST must not hold the studies yet. Every trial keeps its number,
state, params and distributions, values, intermediate values, datetimes and user and system
attributes, and the copy is checked field by field against the source. Used to turn the SQLite
files the studies were first stored in into journals, and to bring a study run on a PostgreSQL
server into the committed journal.

A tuning search's retrains, stored by earlier versions as the study attributes ``retrain`` and
``retrain_default`` (with their ``*_params`` and per-seed claims), become complete trials of
its ``<search>-retrain`` study, the form :func:`sidrec_core.studies.tuning.retrain` stores.
"""

import argparse
import sys

import optuna
from optuna.trial import TrialState, create_trial

from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.tuning import OBJECTIVE, RETRAINED, retrain_point

FIELDS = (
    "number",
    "state",
    "values",
    "params",
    "distributions",
    "intermediate_values",
    "user_attrs",
    "system_attrs",
    "datetime_start",
    "datetime_complete",
)


def is_retrain_attr(key: str) -> bool:
    return any(key == a or key.startswith(f"{a}_") for a in RETRAINED.values())


def copy_retrains(src: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """The retrains ``src`` holds as study attributes -> trials of ``<name>-retrain``."""
    rows = [
        (which, seed, src.user_attrs.get(f"{attr}_params") or {}, figures)
        for which, attr in RETRAINED.items()
        for seed, figures in (src.user_attrs.get(attr) or {}).items()
    ]
    if not rows:
        return 0
    dst = optuna.create_study(
        storage=storage, study_name=f"{src.study_name}-retrain", direction="maximize"
    )
    for which, seed, overrides, figures in rows:
        point = retrain_point(which, int(seed), overrides)
        dst.add_trial(
            create_trial(
                state=TrialState.COMPLETE,
                value=figures[OBJECTIVE],
                user_attrs={**point, "metrics": figures},
                system_attrs={"fixed_params": point},
            )
        )
    return len(rows)


def copy_study(name: str, src_storage, dst_storage) -> str:
    src = optuna.load_study(study_name=name, storage=src_storage)
    dst = optuna.create_study(storage=dst_storage, study_name=name, directions=src.directions)
    for key, value in src.user_attrs.items():
        if not (name.startswith("tune-") and is_retrain_attr(key)):
            dst.set_user_attr(key, value)
    dst.add_trials(src.get_trials(deepcopy=False))
    for a, b in zip(src.get_trials(deepcopy=False), dst.get_trials(deepcopy=False), strict=True):
        for field in FIELDS:
            if getattr(a, field) != getattr(b, field):
                raise SystemExit(f"{name} trial {a.number}: {field} differs after the copy")
    retrains = copy_retrains(src, dst_storage) if name.startswith("tune-") else 0
    return f"{name}: {len(dst.trials)} trials" + (f", {retrains} retrains" if retrains else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", help="storage to copy from")
    p.add_argument("dst", help="storage to copy into (created when missing)")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        src = make_storage(args.src, flag="SRC")
        dst = make_storage(args.dst, create=True, flag="DST")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for summary in optuna.get_all_study_summaries(src):
        print(copy_study(summary.study_name, src, dst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
