"""Tuning mode: ``python bench/tune.py --model sasrec|sidlm [--profile beauty] [--n-trials 20]``.

Seeded TPE over the model's search space (studies.yaml, tunables), objective valid
NDCG@10 with per-epoch pruning, resumable storage experiments/tune/<model>/optuna.jsonl (an Optuna
journal), then the best configuration retrained over 3 seeds; report in experiments/tune/<model>/.
``--report-only`` rewrites the report from the storage (give the flags the search ran with).
"""

import argparse
import json
import logging
import sys

from sidrec_core.studies.budget import TimeBudget
from sidrec_core.studies.cli import EXPECTED_ERRORS, error_exit
from sidrec_core.studies.runner import EXPERIMENTS_DIR
from sidrec_core.studies.spaces import TUNABLES
from sidrec_core.studies.tune_report import write_tune_report
from sidrec_core.studies.tuning import TuneOptions, open_report, run_tuning


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", choices=sorted(TUNABLES), help="required unless --to-mlflow")
    p.add_argument("--profile", default="beauty", help="smoke | dev | beauty | full")
    p.add_argument("--n-trials", type=int, default=20, help="finished trials in all (budget)")
    p.add_argument("--max-trials", type=int, default=None, help="stop after this many (resume)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        metavar="MINUTES",
        help="start no trial or retrain expected to end later than MINUTES after launch",
    )
    p.add_argument("--pruner", default="median", help="median | hyperband | none")
    p.add_argument("--retrain-seeds", type=int, default=3)
    p.add_argument(
        "--storage",
        default=None,
        help="an Optuna journal file or RDB URL (default: the model's own journal "
        "<out>/tune/<model>/optuna.jsonl; postgresql://USER@HOST/DB for several machines)",
    )
    p.add_argument(
        "--new-storage", action="store_true", help="create --storage when it does not exist"
    )
    p.add_argument("--report-only", action="store_true", help="rewrite the report, run nothing")
    p.add_argument("--out", default=str(EXPERIMENTS_DIR))
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--to-mlflow",
        action="store_true",
        help="rebuild MLflow from the searches' committed storage (--model's, default every "
        "model's); runs nothing, idempotent",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow store for --to-mlflow")
    args = p.parse_args(argv)
    if args.to_mlflow:
        from pathlib import Path

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
        summary = run_tuning(args.model, opts)
    except EXPECTED_ERRORS as exc:
        return error_exit(exc, args.storage, args.out)
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
