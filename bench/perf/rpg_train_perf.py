"""Seconds per epoch of RPG training and per validation, by width, on one thread: which recipes
fit issue 35's limit of 60 training minutes.

The model is params.yaml's ``rpg`` section with ``--set`` overrides (``eval`` too: the validation
scores ``eval.max_valid_users`` users exactly, as ``train_rpg`` validates); each width of
``--dims`` replaces ``hidden_dim`` and runs in a fresh process. One epoch's batches are built as
``train_rpg`` builds them; ``--steps`` AdamW steps after ``--warmup`` are timed and extrapolated
over the epoch (batches are length-bucketed: an estimate), then one validation is timed. The
projected training minutes of each ``--epochs`` count are epochs x (epoch + validation), without
early stopping. ``--mhl-phases`` times each listed phase of Masked History Learning
(``rpg.mhl``, its granularity set with ``--set rpg.mhl.granularity=token``): ``random`` masks at
the start ratio, ``entropy`` adds the no-grad entropy pass, ``none`` is the next-item loss alone.
Writes JSON to ``--out``.

Usage: python bench/perf/rpg_train_perf.py [--prepared data/prepared] [--sids data/sids_rpg]
       [--dims 128 192 256] [--epochs 40 60] [--set eval.max_valid_users=1000 ...]
       [--steps 40] [--threads 1] [--mhl-phases none random entropy]
       [--out experiments/perf/rpg_train_perf.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
from typing import Any

from sidrec_core.config import apply_overrides, build, load_params, to_dict
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.dataset import load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig
from sidrec_core.io import write_json
from sidrec_core.perf import provenance, usage_errors
from sidrec_core.rpg.mhl import Curriculum
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.sid.table import SIDTable
from sidrec_core.utils import peak_rss_mb, seed_everything, set_threads


def configs(params: dict[str, Any], dim: int, sids: str) -> tuple[RPGConfig, EvalConfig]:
    """The ``rpg`` section at width ``dim`` reading the SID table ``sids``, and ``eval``."""
    rpg = params.get("rpg") or {}
    section = {**rpg, "hidden_dim": dim, "sid": {**(rpg.get("sid") or {}), "output_dir": sids}}
    return build(RPGConfig, section, "rpg"), build(EvalConfig, params.get("eval"), "eval")


def curriculum(cfg: RPGConfig, phase: str) -> Curriculum | None:
    """A curriculum held in MHL ``phase`` (its first epoch), or None for ``none``."""
    if phase == "none":
        return None
    if not cfg.mhl.on:
        raise ValueError(f"--mhl-phases {phase}: set rpg.mhl.granularity (token or item) too")
    cur = Curriculum(cfg.mhl, "valid/ndcg@10", seed=0)
    cur.epoch = 1 if phase == "random" else cfg.mhl.random_epochs + 1
    return cur


def measure(
    dim: int,
    params: dict,
    prepared: str,
    sids: str,
    steps: int,
    warmup: int,
    threads: int,
    phase: str,
) -> dict:
    """One width's training (in MHL ``phase``) and validation timing."""
    import torch

    from sidrec_core.stages.fit_ranker import validation

    set_threads(threads)
    seed_everything(0)
    cfg, ev = configs(params, dim, sids)
    loo = leave_one_out(load_prepared(prepared))
    table = SIDTable.load(cfg.sid.output_dir, num_items=loo.num_items)
    model = RPG(cfg, torch.as_tensor(table.codes), cfg.sid.codebook_size)
    model.curriculum = curriculum(cfg, phase)
    rows = TrainBatches(
        loo.train_sequences,
        cfg.max_history,
        cfg.train.batch_size,
        bucket_window=cfg.bucket_window,
        rows=cfg.train_rows,
    )
    batches = list(rows(1))
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
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
    per_epoch = (time.perf_counter() - start) / len(timed) * len(batches)
    valid = loo.split("valid", cfg.max_history)
    users = subsample_rows(len(valid), ev.max_valid_users)
    validate = validation(model.eval(), valid, ev, torch.device("cpu"), loo.num_items, users)
    start = time.perf_counter()
    validate()
    per_validation = time.perf_counter() - start
    return {
        "hidden_dim": dim,
        "mhl_phase": phase,
        "seconds_per_epoch": per_epoch,
        "seconds_per_validation": per_validation,
        "validation_users": len(valid) if users is None else len(users),
        "timed_steps": len(timed),
        "batches_per_epoch": len(batches),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "peak_rss_mb": peak_rss_mb(),
        "rpg": to_dict(cfg),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--sids", default="data/sids_rpg", help="build_rpg_sids' output folder")
    parser.add_argument("--dims", nargs="+", type=int, default=[128, 192, 256])
    parser.add_argument("--epochs", nargs="+", type=int, default=[40, 60])
    parser.add_argument("--steps", type=int, default=40, help="timed steps (0 = whole epoch)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--mhl-phases", nargs="+", default=["none"], choices=["none", "random", "entropy"]
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--out", default="experiments/perf/rpg_train_perf.json")
    args = parser.parse_args()
    with usage_errors(parser):
        params = apply_overrides(load_params(args.params), args.sets)
        for dim in args.dims:
            cfg = configs(params, dim, args.sids)[0]
            for phase in args.mhl_phases:
                curriculum(cfg, phase)
    made = provenance(args.threads)
    ctx = mp.get_context("spawn")
    results = []
    for dim, phase in [(d, p) for d in args.dims for p in args.mhl_phases]:
        with ctx.Pool(1) as pool:
            inputs = (params, args.prepared, args.sids, args.steps, args.warmup, args.threads)
            result = pool.apply(measure, (dim, *inputs, phase))
        epoch = result["seconds_per_epoch"] + result["seconds_per_validation"]
        result["training_minutes"] = {str(n): n * epoch / 60 for n in args.epochs}
        results.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "rpg"}))
    write_json(args.out, {"provenance": made, "results": results})


if __name__ == "__main__":
    main()
