"""Ablation bench: ``python bench/ablate.py --list`` / ``--study NAME [--profile smoke|dev|full]``:
list, run, resume and report the ablation studies (experiments/README.md)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

from sidrec_core.studies.budget import STOP, TimeBudget, stop_on_signal
from sidrec_core.studies.cli import EXPECTED_ERRORS, LIST, STORE, error_exit, parser
from sidrec_core.studies.plan import left_to_run, remaining_table
from sidrec_core.studies.profiles import dvc_set_args, get_dotted
from sidrec_core.studies.registry import STUDIES, get_study
from sidrec_core.studies.runner import StudyOptions, base_params, run_study
from sidrec_core.studies.seeds import PIPELINE_CHECK_SEEDS
from sidrec_core.studies.storage import exists
from sidrec_core.studies.study import Study

FRESH = "--out DIR re-runs it in a fresh folder"

ABLATE = {
    "--list": {**STORE, "help": "print every study, factor and levels"},
    "--study": {**LIST, "metavar": "NAME", "help": "study to run (repeatable; all = every study)"},
    "--n-seeds": {"type": int, "help": "seeds per level (default: declared; 3 on synthetic data)"},
    "--workers": {"type": int, "default": 1, "help": "worker processes on this study"},
    "--no-retry-failed": {**STORE, "help": "do not re-queue grid points whose trial failed"},
    "--rerun-unpaired": {
        **STORE,
        "help": "re-run (once) each trial that read other upstream inputs than its seed's newest",
    },
    "--replication-only": {
        **STORE,
        "help": "on a dataset other than beauty, run only the levels a replication owes: the "
        "default and those significant on beauty, every level of a study issue 38 names where "
        "none is, none of a study that owes none; the other levels stay queued",
    },
    "--dvc-args": {**STORE, "help": "print the profile as -S flags: dvc exp run $(...)"},
    "--remaining": {
        **STORE,
        "help": "print what each --study (default: all) has left on --profile and its CPU-hours",
    },
}


def describe(study: Study) -> str:
    """One ``--list`` entry: name, factor, levels (default starred), stages, declared seeds."""
    levels = ", ".join(f"{lv}*" if lv == study.default else lv for lv in study.labels)
    reuse = f"; reuses {'+'.join(study.reuse)}" if study.reuse else ""
    return (
        f"{study.name:<16} {study.factor} [{', '.join(study.keys)}]\n"
        f"{'':<16} levels: {levels}\n{'':<16} runs {'+'.join(study.run)}{reuse}; "
        f"objective {study.objective}; {study.seeds} seeds declared"
    )


def seed_count(study: Study, opts: StudyOptions, n_seeds: int | None) -> int:
    """Seeds a launch runs: ``--n-seeds``, else the study's declared count on real data and the
    pipeline check's on synthetic data (no statistics there)."""
    if n_seeds is not None:
        return n_seeds
    synthetic = get_dotted(base_params(opts), "data.name", "") == "synthetic"
    return PIPELINE_CHECK_SEEDS if synthetic else study.seeds


def flag_conflict(a: argparse.Namespace) -> str | None:
    """Flags that would silently override one another, or no ``--study``: one line (else None)."""
    given = (("--list", a.list), ("--dvc-args", a.dvc_args), ("--report-only", a.report_only))
    given += (("--remaining", a.remaining),)
    modes = [flag for flag, on in given if on]
    if len(modes) > 1:
        return f"{' and '.join(modes)} are separate modes; give one of them"
    if modes[:1] in (["--list"], ["--dvc-args"]) and a.study:
        what = "lists every study" if a.list else "prints the profile's -S flags"
        return f"{modes[0]} {what} and runs nothing; drop --study {' '.join(a.study)}"
    listing = a.list or a.dvc_args or a.remaining
    return None if a.study or listing else "give --study NAME (or --list, --remaining)"


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


def launch(
    names: list[str], opts: StudyOptions, counts: dict[str, int], args: argparse.Namespace
) -> int:
    """Run each study in turn, printing its summary -> the exit status: 1 where a study's trials
    failed (those left undone with no budget, trial cap, replication or stop signal to explain
    them; a failure streak stops the launch), else 0."""
    status = 0
    for name in names:
        summary = run_study(name, dataclasses.replace(opts, n_seeds=counts[name]))
        if summary.get("up_to_date"):
            done = f"{name}: study complete: {summary['complete']} trials in {summary['storage']}"
            print(f"{done}, nothing to run (--report-only rewrites its report; {FRESH})")
        elif summary.get("no_trial_started"):
            left = f"no trial started ({summary['remaining_after']} grid points left)"
            print(f"{name}: {left}; report unchanged (--report-only rewrites it)")
        else:
            print(json.dumps(summary, indent=2))
            if why := summary.get("stopped_on_failures"):  # likely the environment: stop
                left = names[names.index(name) + 1 :]
                skipped = f"; not started: {', '.join(left)}" if left else ""
                print(
                    f"error: study {name}: {why}; launch stopped{skipped} (the same command "
                    "re-queues them once the cause is fixed)",
                    file=sys.stderr,
                )
                return 1
            stopped = args.max_trials is not None or args.time_budget is not None
            stopped = stopped or args.replication_only or STOP.is_set()
            if summary["remaining_after"] and not stopped:  # failed: see the report
                status = 1
    return status


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
        every = "all" in args.study or not args.study  # no --study: --remaining reads every one
        names = [get_study(n).name for n in (STUDIES if every else args.study)]
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
            rerun_unpaired=args.rerun_unpaired,
            replication_only=args.replication_only,
        )
        if args.report_only:
            return report_only(names, opts)
        counts = {n: seed_count(get_study(n), opts, args.n_seeds) for n in names}
        if args.remaining:
            rows = [left_to_run(get_study(n), opts, counts[n]) for n in names]
            print("\n".join(remaining_table(rows, args.profile)))
            return 0
        with stop_on_signal():  # kill -USR1 PID: end after the running trials
            return launch(names, opts, counts, args)
    except EXPECTED_ERRORS as exc:
        return error_exit(exc, args.storage, args.out)


if __name__ == "__main__":
    sys.exit(main())
