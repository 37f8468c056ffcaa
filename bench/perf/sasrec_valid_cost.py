"""What validating SASRec on every validation user costs against the profile's subsample.

``train_sasrec`` validates after every epoch, on ``eval.max_valid_users`` users (the beauty
profile: a fixed seeded 1,000 of Beauty's 22,363), and early-stops on that figure (issue 33: the
subsample's sampling error is larger than most effects a study reports). This times one
validation pass of a trained checkpoint on the subsample and on every user (``--repeats`` passes
each, median), with the figure each gives and its per-user standard error, so the cost of
validating on all users can be set against one training epoch.

Usage: python bench/perf/sasrec_valid_cost.py [--checkpoint models/sasrec/model.pt]
       [--prepared data/prepared] [--max-valid-users 1000] [--repeats 3] [--threads 1]
       [--out experiments/perf/sasrec_valid_cost.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from sidrec_core.config import build, load_params
from sidrec_core.data.dataset import load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_json
from sidrec_core.models.sasrec import SASRecConfig, load_sasrec
from sidrec_core.perf import provenance, usage_errors
from sidrec_core.utils import set_threads

METRIC = "valid/ndcg@10"


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def time_pass(model: Any, split: Any, ev: EvalConfig, users: np.ndarray | None, repeats: int):
    """-> (median seconds of ``repeats`` validation passes, users, the figure, its per-user SE)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        res = evaluate(model, split, ev, "cpu", bootstrap=False, users=users, progress_every=1e9)
        seconds.append(time.perf_counter() - start)
    values = res.per_user["ndcg@10"] if "ndcg@10" in res.per_user else None
    n = len(split) if users is None else len(users)
    se = float(np.std(values, ddof=1) / np.sqrt(n)) if values is not None else None
    return {
        "users": n,
        "seconds": statistics.median(seconds),
        "seconds_each": seconds,
        METRIC: res.metrics[METRIC],
        f"{METRIC}_per_user_se": se,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default="models/sasrec/model.pt")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--max-valid-users", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="experiments/perf/sasrec_valid_cost.json")
    args = parser.parse_args()
    with usage_errors(parser):
        params = load_params(args.params)
        cfg = build(SASRecConfig, params.get("sasrec") or {}, "sasrec")
        ev = build(EvalConfig, {**(params.get("eval") or {}), "bootstrap": 0}, "eval")
    set_threads(args.threads)
    made = provenance(args.threads)
    loo = leave_one_out(load_prepared(args.prepared))
    model = load_sasrec(cfg, loo, args.checkpoint, "--checkpoint")
    valid = loo.split("valid", cfg.max_history)
    sample = subsample_rows(len(valid), args.max_valid_users)
    subsample = time_pass(model, valid, ev, sample, args.repeats)
    every = time_pass(model, valid, ev, None, args.repeats)
    out = {
        "provenance": made,
        "checkpoint": args.checkpoint,
        "checkpoint_sha256": sha256(args.checkpoint),
        "prepared_sha256": sha256(Path(args.prepared) / "dataset.npz"),
        "subsample": subsample,
        "all_users": every,
        "extra_seconds_per_validation": every["seconds"] - subsample["seconds"],
    }
    print(json.dumps({k: v for k, v in out.items() if k != "provenance"}, indent=1))
    write_json(args.out, out)


if __name__ == "__main__":
    main()
