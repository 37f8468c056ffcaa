"""Tuning mode: ``python bench/tune.py --model sasrec|sidlm [--profile beauty] [--n-trials 20]``.

Seeded TPE over the model's search space (studies.yaml, tunables), objective valid
NDCG@10 with per-epoch pruning, resumable storage experiments/tune/<model>/optuna.jsonl (an Optuna
journal), then the best configuration retrained over 3 seeds; report in experiments/tune/<model>/.
``--report-only`` rewrites the report from the storage (give the flags the search ran with).
"""

import json
import logging
import sys
from pathlib import Path

from sidrec_core.studies.budget import TimeBudget, stop_on_signal
from sidrec_core.studies.cli import EXPECTED_ERRORS, error_exit, parser
from sidrec_core.studies.spaces import TUNABLES
from sidrec_core.studies.tune_report import write_tune_report
from sidrec_core.studies.tuning import TuneOptions, open_report, run_tuning

TUNE = {
    "--model": {"choices": sorted(TUNABLES), "help": "required unless --to-mlflow (default all)"},
    "--n-trials": {"type": int, "default": 20, "help": "finished trials in all (budget)"},
    "--pruner": {"default": "median", "help": "median | hyperband | none"},
    "--retrain-seeds": {"type": int, "default": 3},
}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, TUNE, "beauty")
    args = p.parse_args(argv)
    if args.to_mlflow:
        from sidrec_core.studies import to_mlflow

        models = [args.model] if args.model else sorted(TUNABLES)
        sources = to_mlflow.tune_sources(Path(args.out), models, args.storage)
        return to_mlflow.main(sources, args.tracking_uri)
    if args.model is None:
        p.error("--model is required (or --to-mlflow)")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        opts = TuneOptions(
            profile=args.profile,
            storage=args.storage,
            new_storage=args.new_storage,
            max_trials=args.max_trials,
            budget=TimeBudget.minutes(args.time_budget),
            out_dir=args.out,
            params_file=args.params,
            sets=args.sets,
            n_trials=args.n_trials,
            pruner=args.pruner,
            retrain_seeds=args.retrain_seeds,
        )
        if args.report_only:
            paths = write_tune_report(*open_report(args.model, opts), opts)
            print(json.dumps({"model": args.model, "report": str(paths[0])}))
            return 0
        with stop_on_signal():  # kill -USR1 PID: end after the running trial
            summary = run_tuning(args.model, opts)
    except EXPECTED_ERRORS as exc:
        return error_exit(exc, args.storage, args.out)
    print(json.dumps(summary, indent=2, default=str))
    if why := summary.get("stopped_on_failures"):
        print(f"error: search {args.model}: {why}; search stopped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
