"""Seconds per epoch and peak memory of SASRec training for each loss on a prepared dataset.

The model is params.yaml's ``sasrec`` section with ``--set sasrec.KEY=VALUE`` overrides (e.g.
``--set sasrec.train_rows=prefix``); each loss of ``--losses`` replaces its ``loss``. Each loss
runs in a fresh process (so its peak RSS is its own): the training batches of one epoch are built
once, ``--steps`` optimizer steps are timed after ``--warmup`` steps, and seconds per epoch are
extrapolated from the mean step time over all batches of the epoch (``--steps 0`` times the
whole epoch). Writes JSON to ``--out``.

Usage: python bench/perf/sasrec_perf.py [--prepared data/prepared] [--losses ce bce ...]
       [--set sasrec.train.batch_size=256 ...] [--steps 40] [--threads 1]
       [--out experiments/perf/sasrec_perf.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Any

from sidrec_core.config import apply_overrides, build, load_params, to_dict
from sidrec_core.data.dataset import load_prepared
from sidrec_core.data.split import leave_one_out
from sidrec_core.io import write_json
from sidrec_core.models.losses import LOSSES
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.perf import provenance, usage_errors
from sidrec_core.utils import peak_rss_mb, seed_everything, set_threads


def measure(
    loss: str,
    sasrec: dict[str, Any],
    prepared: str,
    steps: int,
    warmup: int,
    threads: int,
) -> dict:
    """One loss's timing; ``sasrec`` is the params section (overrides of the code defaults)."""
    import torch

    set_threads(threads)
    seed_everything(0)
    loo = leave_one_out(load_prepared(prepared))
    cfg = build(SASRecConfig, {**sasrec, "loss": loss}, "sasrec")
    model = build_sasrec(cfg, loo)
    batches = list(make_batches(cfg, loo, seed=0)(1))
    rss_before = peak_rss_mb()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    timed = batches[warmup : warmup + steps] if steps else batches
    for batch in batches[:warmup]:
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    start = time.perf_counter()
    for batch in timed:
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    seconds = time.perf_counter() - start
    # batches are length-bucketed, so a sample of steps is only an estimate of the epoch
    per_epoch = seconds / len(timed) * len(batches)
    return {
        "loss": loss,
        "seconds_per_epoch": per_epoch,
        "timed_steps": len(timed),
        "batches_per_epoch": len(batches),
        "positions_per_second": sum(int((b["targets"] > 0).sum()) for b in timed) / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_training_mb": rss_before,
        "sasrec": to_dict(cfg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--steps", type=int, default=40, help="timed steps (0 = whole epoch)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--out", default="experiments/perf/sasrec_perf.json")
    args = parser.parse_args()
    with usage_errors(parser):
        sasrec = apply_overrides(load_params(args.params), args.sets).get("sasrec") or {}
        for loss in args.losses:
            build(SASRecConfig, {**sasrec, "loss": loss}, "sasrec")
    made = provenance(args.threads)
    ctx = mp.get_context("spawn")
    results = []
    for loss in args.losses:
        with ctx.Pool(1) as pool:
            job = (loss, sasrec, args.prepared, args.steps, args.warmup, args.threads)
            results.append(pool.apply(measure, job))
        print(json.dumps(results[-1]))
    write_json(args.out, {"provenance": made, "results": results})


if __name__ == "__main__":
    main()
