"""``bench/ablate.py``: list, run, resume and report the ablation studies; the options it shares
with ``bench/tune.py``."""

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

FRESH = "--out DIR re-runs it in a fresh folder"
# bad input, an unwritable or full --out, a full storage disk: one line, exit status 2
EXPECTED_ERRORS = (ConfigError, KeyError, ValueError, OSError, sqlalchemy.exc.OperationalError)


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


PROFILES = " | ".join(sorted(f.stem for f in PROFILES_DIR.glob("*.yaml")))
STORE, OPTIONAL_INT = {"action": "store_true"}, {"type": int, "default": None}
SHARED = {  # the options of bench/ablate.py and bench/tune.py: flag -> argparse keywords
    "--storage": {"help": "an Optuna journal or RDB URL, e.g. postgresql://USER@HOST/DB"},
    "--new-storage": {**STORE, "help": "create --storage if missing (else a typo is an error)"},
    "--max-trials": {**OPTIONAL_INT, "help": "stop each worker after this many trials (resume)"},
    "--time-budget": {
        "type": float,
        "metavar": "MINUTES",
        "help": "start nothing expected to end "
        "later than MINUTES after launch (median duration); resume later",
    },
    "--out": {"default": str(EXPERIMENTS_DIR), "help": "reports and trials"},
    "--params": {"default": "params.yaml", "help": "params file under the profile"},
    "--set": {"dest": "sets", "action": "append", "default": [], "metavar": "KEY=VALUE"},
    "--report-only": {**STORE, "help": "rewrite the reports from the storage, run nothing"},
    "--to-mlflow": {**STORE, "help": "rebuild MLflow from the committed storage; runs nothing"},
    "--tracking-uri": {"help": "MLflow store (default MLFLOW_TRACKING_URI, sqlite:///mlflow.db)"},
}
ABLATE = {
    "--list": {**STORE, "help": "print every study, factor and levels"},
    "--study": {"action": "append", "default": [], "metavar": "NAME", "help": "all = every study"},
    "--n-seeds": {**OPTIONAL_INT, "help": "seeds per level (default: the study's declared seeds)"},
    "--workers": {"type": int, "default": 1, "help": "worker processes on this study"},
    "--no-retry-failed": {**STORE, "help": "do not re-queue grid points whose trial failed"},
    "--dvc-args": {**STORE, "help": "print the profile as -S flags: dvc exp run $(...)"},
}


def parser(doc: str, options: dict[str, dict], profile: str) -> argparse.ArgumentParser:
    """``options`` and :data:`SHARED` (``--profile`` defaulting to ``profile``)."""
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--profile", default=profile, help=f"{PROFILES} (experiments/profiles)")
    for flag, keywords in {**options, **SHARED}.items():
        p.add_argument(flag, **keywords)
    return p


def flag_conflict(a: argparse.Namespace) -> str | None:
    """Flags that would silently override one another, or no ``--study``: one line (else None)."""
    given = (("--list", a.list), ("--dvc-args", a.dvc_args), ("--report-only", a.report_only))
    modes = [flag for flag, on in given if on]
    if len(modes) > 1:
        return f"{' and '.join(modes)} are separate modes; give one of them"
    if modes[:1] in (["--list"], ["--dvc-args"]) and a.study:
        what = "lists every study" if a.list else "prints the profile's -S flags"
        return f"{modes[0]} {what} and runs nothing; drop --study {' '.join(a.study)}"
    return None if a.study or a.list or a.dvc_args else "give --study NAME (or --list)"


def error_exit(exc: BaseException, storage: str | None, out: str) -> int:
    """Print ``exc`` as the one ``error:`` line on stderr and return the exit status 2."""
    line = os_error_line(exc) if isinstance(exc, OSError) else str(exc)  # --out read-only, full
    if isinstance(exc, sqlalchemy.exc.OperationalError):  # the SQLite storage's disk is full
        line = f"Optuna storage {storage or f'under {out}'}: {exc.orig}"
    print(f"error: {line}", file=sys.stderr)
    return 2


def report_only(names: list[str], opts: StudyOptions) -> int:
    """Rewrite the reports of ``names`` from their storage (a study never run gets none), then
    the index once."""
    from sidrec_core.studies.index import write_index
    from sidrec_core.studies.report import write_study_report

    stored = [n for n in names if exists(opts.storage_url_for(n))]
    for name in names:
        if name not in stored:
            print(json.dumps({"study": name, "report": None, "trials": 0}))
            continue
        paths = write_study_report(
            get_study(name), opts.storage_url_for(name), Path(opts.out_dir), opts.storage_url_for
        )
        print(json.dumps({"study": name, "report": str(paths[0])}))
    if stored:
        write_index(Path(opts.out_dir))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__, ABLATE, "dev").parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if conflict := flag_conflict(args):
        print(f"error: {conflict}", file=sys.stderr)
        return 2
    try:
        if args.dvc_args or args.list:
            print(
                " ".join(dvc_set_args(args.profile))
                if args.dvc_args
                else "\n".join(map(describe, STUDIES.values()))
            )
            return 0
        names = [get_study(n).name for n in (STUDIES if "all" in args.study else args.study)]
        if args.to_mlflow:
            from sidrec_core.studies import to_mlflow

            return to_mlflow.main(
                to_mlflow.study_sources(Path(args.out), names, args.storage), args.tracking_uri
            )
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
                done = (
                    f"{name}: study complete: {summary['complete']} trials in {summary['storage']}"
                )
                print(f"{done}, nothing to run (--report-only rewrites its report; {FRESH})")
            else:
                print(json.dumps(summary, indent=2))
                stopped = args.max_trials is not None or args.time_budget is not None
                if summary["remaining_after"] and not stopped:  # failed: see the report
                    status = 1
        return status
    except EXPECTED_ERRORS as exc:
        return error_exit(exc, args.storage, args.out)
