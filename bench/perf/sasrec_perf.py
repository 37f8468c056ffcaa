"""Seconds per epoch and peak memory of SASRec training for each loss on a prepared dataset.

Each loss runs in a fresh process (so its peak RSS is its own): the training batches of one
epoch are built once, ``--steps`` optimizer steps are timed after ``--warmup`` steps, and seconds
per epoch are extrapolated from the mean step time over all batches of the epoch
(``--steps 0`` times the whole epoch). Writes JSON to ``--out``.

Usage: python bench/perf/sasrec_perf.py [--prepared data/prepared] [--losses ce bce ...]
       [--steps 40] [--threads 1] [--out experiments/perf/sasrec_perf.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

from sidrec_core.data.dataset import load_prepared
from sidrec_core.data.split import leave_one_out
from sidrec_core.io import write_json
from sidrec_core.models.losses import LOSSES
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.perf import provenance
from sidrec_core.train import TrainConfig
from sidrec_core.utils import peak_rss_mb, seed_everything, set_threads


def measure(
    loss: str,
    prepared: str,
    steps: int,
    warmup: int,
    threads: int,
    batch_size: int,
    ce_chunk: int,
    num_negatives: int = 0,
) -> dict:
    import torch

    set_threads(threads)
    seed_everything(0)
    loo = leave_one_out(load_prepared(prepared))
    cfg = SASRecConfig(
        loss=loss,
        ce_chunk=ce_chunk,
        num_negatives=num_negatives,
        train=TrainConfig(batch_size=batch_size),
    )
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
        "batch_size": batch_size,
        "positions_per_second": sum(int((b["targets"] > 0).sum()) for b in timed) / seconds,
        "peak_rss_mb": peak_rss_mb(),
        "rss_before_training_mb": rss_before,
        "ce_chunk": ce_chunk,
        "threads": threads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    parser.add_argument("--steps", type=int, default=40, help="timed steps (0 = whole epoch)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ce-chunk", type=int, default=0)
    parser.add_argument("--num-negatives", type=int, default=0, help="0 = the loss's default")
    parser.add_argument("--out", default="experiments/perf/sasrec_perf.json")
    args = parser.parse_args()
    made = provenance(args.threads)
    ctx = mp.get_context("spawn")
    results = []
    for loss in args.losses:
        with ctx.Pool(1) as pool:
            results.append(
                pool.apply(
                    measure,
                    (
                        loss,
                        args.prepared,
                        args.steps,
                        args.warmup,
                        args.threads,
                        args.batch_size,
                        args.ce_chunk,
                        args.num_negatives,
                    ),
                )
            )
        print(json.dumps(results[-1]))
    write_json(
        args.out,
        {"provenance": made, "results": results},
    )


if __name__ == "__main__":
    main()
