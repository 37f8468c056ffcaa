"""``bench/ablate.py``: list, run, resume and report the ablation studies."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import sqlalchemy.exc

from sidrec_core.config import ConfigError
from sidrec_core.io import os_error_line
from sidrec_core.studies.budget import TimeBudget
from sidrec_core.studies.profiles import PROFILES_DIR, dvc_set_args, get_dotted
from sidrec_core.studies.registry import STUDIES, get_study
from sidrec_core.studies.runner import EXPERIMENTS_DIR, StudyOptions, base_params, run_study
from sidrec_core.studies.seeds import PIPELINE_CHECK_SEEDS
from sidrec_core.studies.storage import exists
from sidrec_core.studies.study import Study


def describe(study: Study) -> str:
    """One ``--list`` entry: name, factor, levels (default starred), stages, declared seeds."""
    levels = ", ".join(f"{lv}*" if lv == study.default else lv for lv in study.labels)
    reuse = f"; reuses {'+'.join(study.reuse)}" if study.reuse else ""
    return (
        f"{study.name:<16} {study.factor} [{', '.join(study.keys)}]\n"
        f"{'':<16} levels: {levels}\n{'':<16} runs {'+'.join(study.run)}{reuse}; "
        f"objective {study.objective}; {study.seeds} seeds declared"
    )


def declared_seeds(study: Study, opts: StudyOptions) -> int:
    """Seeds a launch without ``--n-seeds`` runs: the study's declared count on real data, the
    pipeline check's on synthetic data (no statistics there)."""
    synthetic = get_dotted(base_params(opts), "data.name", "") == "synthetic"
    return PIPELINE_CHECK_SEEDS if synthetic else study.seeds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--list", action="store_true", help="print every study, factor and levels")
    p.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="NAME",
        help="study to run (repeatable; 'all' = every study)",
    )
    profiles = " | ".join(sorted(f.stem for f in PROFILES_DIR.glob("*.yaml")))
    p.add_argument("--profile", default="dev", help=f"{profiles} (experiments/profiles)")
    p.add_argument(
        "--storage",
        default=None,
        help="an Optuna journal file or RDB URL (default: the study's own journal "
        "<out>/<study>/optuna.jsonl, kept in the repository; postgresql://USER@HOST/DB to "
        "share a study between machines)",
    )
    p.add_argument(
        "--new-storage",
        action="store_true",
        help="create --storage if missing (else an error: a typo never starts an empty study)",
    )
    p.add_argument(
        "--n-seeds",
        type=int,
        default=None,
        help="seeds per level (default: the study's declared seeds, 5 where a trial costs <= 10 "
        "CPU-minutes, else 3 (experiments/trial_costs.md); 3 on synthetic data)",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this study")
    p.add_argument(
        "--max-trials",
        type=int,
        default=None,
        help="stop each worker after this many trials (resume later)",
    )
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no trial expected (median of the finished ones) to end later than MINUTES "
        "after launch; resume later with the same command",
    )
    p.add_argument("--out", default=str(EXPERIMENTS_DIR), help="reports and trials")
    p.add_argument("--params", default="params.yaml", help="params file under the profile")
    p.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override on top of the profile (repeatable)",
    )
    p.add_argument(
        "--no-retry-failed",
        action="store_true",
        help="do not re-queue grid points whose trial failed",
    )
    p.add_argument("--report-only", action="store_true", help="rewrite reports, run nothing")
    p.add_argument(
        "--to-mlflow",
        action="store_true",
        help="rebuild MLflow (a parent run per study and profile, a nested run per trial) from "
        "the studies' committed storage; runs nothing, idempotent",
    )
    p.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store for --to-mlflow (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    p.add_argument(
        "--dvc-args",
        action="store_true",
        help="print the profile as -S flags: dvc exp run $(... --dvc-args)",
    )
    return p


def flag_conflict(args: argparse.Namespace) -> str | None:
    """The flags that would silently override one another, as one line; None if they agree.
    ``--list`` and ``--dvc-args`` print and exit, ``--report-only`` writes reports of
    ``--study``; each is its own mode."""
    modes = [f for f, on in (("--list", args.list), ("--dvc-args", args.dvc_args)) if on]
    if args.report_only:
        modes.append("--report-only")
    if len(modes) > 1:
        return f"{' and '.join(modes)} are separate modes; give one of them"
    if modes[:1] in (["--list"], ["--dvc-args"]) and args.study:
        what = "lists every study" if args.list else "prints the profile's -S flags"
        return f"{modes[0]} {what} and runs nothing; drop --study {' '.join(args.study)}"
    return None


# bad input, an unwritable or full --out, a full storage disk: one line, exit status 2
EXPECTED_ERRORS = (ConfigError, KeyError, ValueError, OSError, sqlalchemy.exc.OperationalError)


def error_exit(exc: BaseException, storage: str | None, out: str) -> int:
    """Print ``exc`` as the one ``error:`` line on stderr and return the exit status 2."""
    if isinstance(exc, sqlalchemy.exc.OperationalError):  # the SQLite storage's disk is full
        line = f"Optuna storage {storage or f'under {out}'}: {exc.orig}"
    elif isinstance(exc, OSError):  # --out read-only or full
        line = os_error_line(exc)
    else:
        line = str(exc)
    print(f"error: {line}", file=sys.stderr)
    return 2


def report_only(names: list[str], opts: StudyOptions) -> int:
    """Rewrite the reports of ``names`` from their storage, then the index once."""
    from sidrec_core.studies.index import write_index
    from sidrec_core.studies.report import write_study_report

    written = False
    for name in names:
        storage = opts.storage_url_for(name)
        if not exists(storage):  # a study never run has no report (none is invented)
            print(json.dumps({"study": name, "report": None, "trials": 0}))
            continue
        written = True
        paths = write_study_report(
            get_study(name), storage, Path(opts.out_dir), opts.storage_url_for
        )
        print(json.dumps({"study": name, "report": str(paths[0])}))
    if written:
        write_index(Path(opts.out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if conflict := flag_conflict(args):
        print(f"error: {conflict}", file=sys.stderr)
        return 2
    try:
        if args.dvc_args:
            print(" ".join(dvc_set_args(args.profile)))
            return 0
        if args.list:
            for study in STUDIES.values():
                print(describe(study))
            return 0
        if not args.study:
            print("error: give --study NAME (or --list)", file=sys.stderr)
            return 2
        names = list(STUDIES) if "all" in args.study else args.study
        for name in names:
            get_study(name)  # unknown names fail before any work
        if args.to_mlflow:
            from sidrec_core.studies import to_mlflow

            sources = to_mlflow.study_sources(Path(args.out), names, args.storage)
            return to_mlflow.main(sources, args.tracking_uri)
        opts = StudyOptions(
            profile=args.profile,
            storage=args.storage,
            new_storage=args.new_storage,
            n_seeds=PIPELINE_CHECK_SEEDS if args.n_seeds is None else args.n_seeds,
            workers=args.workers,
            max_trials=args.max_trials,
            budget=TimeBudget.minutes(args.time_budget),
            out_dir=args.out,
            params_file=args.params,
            sets=args.sets,
            retry_failed=not args.no_retry_failed,
        )
        if args.report_only:
            return report_only(names, opts)
        status = 0
        for name in names:
            seeds = declared_seeds(get_study(name), opts) if args.n_seeds is None else args.n_seeds
            summary = run_study(name, dataclasses.replace(opts, n_seeds=seeds))
            if summary.get("up_to_date"):
                print(
                    f"{name}: study complete: {summary['complete']} trials in "
                    f"{summary['storage']}, nothing to run (--report-only rewrites its report; "
                    f"--out DIR re-runs it in a fresh folder)"
                )
                continue
            print(json.dumps(summary, indent=2))
            stopped_early = args.max_trials is not None or args.time_budget is not None
            if summary["remaining_after"] and not stopped_early:
                status = 1  # some grid points failed: see the report's failed-trials list
        return status
    except EXPECTED_ERRORS as exc:
        return error_exit(exc, args.storage, args.out)
