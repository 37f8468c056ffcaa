"""The ``train_sasrec`` pipeline stage: fit SASRec with the shared loop, early-stopped on
``train.monitor`` (valid/ndcg@10), then evaluate the best checkpoint on valid and test with the
shared evaluator (Kang & McAuley, 2018; leave-one-out over all items as in S3-Rec/P5/TIGER).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import LeaveOneOut, leave_one_out
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_json
from sidrec_core.models.negatives import NegativeSampler
from sidrec_core.models.sasrec import SASRec, SASRecConfig, load_sid_features
from sidrec_core.tracking import start_run
from sidrec_core.train import fit
from sidrec_core.utils import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)
STAGE = "train_sasrec"
DEFAULT_SID_DIR = "data/sids"  # the build_sids stage's default sid.output_dir


def sid_dir_from(params: dict[str, Any]) -> str:
    """``sid.output_dir`` (owned by the SID stage's config) or its default."""
    return str((params.get("sid") or {}).get("output_dir", DEFAULT_SID_DIR))


def make_batches(cfg: SASRecConfig, loo: LeaveOneOut, seed: int) -> TrainBatches:
    """Training batches with the negatives ``cfg.loss`` needs (none for ce and infonce)."""
    k = cfg.negatives_per_step
    sampler = None
    if k and cfg.loss == "bce_shared":
        # draws with replacement (NegativeSampler.draw), so k may exceed the catalogue
        sampler = NegativeSampler(
            "popular",
            loo.train_item_counts(),
            loo.train_sequences,
            alpha=cfg.bce_shared_alpha,
            seed=seed,
        )
    elif k:
        sampler = NegativeSampler(
            cfg.negatives,
            loo.train_item_counts(),
            loo.train_sequences,
            num_negatives=k,
            alpha=cfg.popularity_alpha,
            popular_ratio=cfg.popular_ratio,
            seed=seed,
        )
    modes = {"bce": "per_position", "sampled_softmax": "shared", "bce_shared": "shared_unfiltered"}
    mode = modes.get(cfg.loss, "none") if k else "none"
    return TrainBatches(
        loo.train_sequences,
        cfg.max_history,
        cfg.train.batch_size,
        seed=seed,
        sampler=sampler,
        negatives_mode=mode,
        num_negatives=k,
        bucket_window=cfg.bucket_window,
    )


def build_sasrec(
    cfg: SASRecConfig, loo: LeaveOneOut, sid_dir: str | Path = DEFAULT_SID_DIR
) -> SASRec:
    """An untrained SASRec for ``loo``'s catalogue, with SID features when configured and found."""
    return SASRec(cfg, loo.num_items, load_sid_features(cfg, sid_dir, loo.num_items))


def run_train_sasrec(params: dict[str, Any]) -> dict[str, Any]:
    """Train, early-stop, evaluate -> ``<metrics_dir>/train_sasrec.json`` (+ per-epoch curves)."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    ev = build(EvalConfig, params.get("eval"), "eval")
    cfg = build(SASRecConfig, params.get("sasrec"), "sasrec")
    seed_everything(base.seed)
    set_threads(base.num_threads)
    device = resolve_device(base.device)
    cfgs = {
        "base": to_dict(base),
        "data": to_dict(data),
        "eval": to_dict(ev),
        "sasrec": to_dict(cfg),
    }
    loo = leave_one_out(load_prepared(data.prepared_dir))
    model = build_sasrec(cfg, loo, sid_dir_from(params)).to(device)
    batches = make_batches(cfg, loo, base.seed)
    valid_split, test_split = (
        loo.split("valid", cfg.max_history),
        loo.split("test", cfg.max_history),
    )
    valid_rows = None
    if ev.max_valid_users and ev.max_valid_users < len(valid_split):
        rng = np.random.default_rng(base.seed)
        valid_rows = np.sort(rng.choice(len(valid_split), ev.max_valid_users, replace=False))

    def validate() -> dict[str, float]:
        res = evaluate(
            model,
            valid_split,
            ev,
            device,
            num_items=loo.num_items,
            bootstrap=False,
            users=valid_rows,
        )
        return {k: v for k, v in res.metrics.items() if "@" in k}

    tags = {
        "model": "sasrec",
        "loss": cfg.loss,
        "similarity": cfg.similarity,
        "negatives": cfg.negatives,
        "sid_features": model.sid_mode,
    }
    with start_run(
        STAGE,
        cfgs,
        dataset=data.name,
        profile=base.profile,
        device=device,
        metrics_dir=base.metrics_dir,
        tags=tags,
    ) as run:
        log.info(
            "train_sasrec: %d users with targets, %d positions, %d batches/epoch, loss=%s "
            "similarity=%s negatives=%s",
            len(batches.users),
            batches.num_positions,
            len(batches),
            cfg.loss,
            cfg.similarity,
            cfg.negatives,
        )
        result = fit(
            model,
            batches,
            validate,
            cfg.train,
            device=device,
            run=run,
            steps_per_epoch=len(batches),
            checkpoint=cfg.checkpoint,
            epoch_metrics=model.epoch_metrics,
        )
        metrics: dict[str, float] = {}
        for split in (valid_split, test_split):
            metrics.update(evaluate(model, split, ev, device, num_items=loo.num_items).metrics)
        run.log_metrics(metrics)
        run.record(
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            steps=result.steps,
            seconds_per_epoch=result.seconds_per_epoch,
            num_parameters=sum(p.numel() for p in model.parameters()),
            **model.epoch_metrics(),
        )
        curves = [
            {k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history
        ]
        write_json(Path(base.metrics_dir) / f"{STAGE}_curves.json", curves)
        return dict(run.metrics, **run.extra)
