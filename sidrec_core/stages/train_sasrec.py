"""DVC stage ``train_sasrec``: fit SASRec (Kang & McAuley, 2018) with the shared loop,
early-stopped on ``train.monitor`` (valid/ndcg@10), then score the best checkpoint on valid and
test over all items (leave-one-out as in S3-Rec/P5/TIGER). Test is also scored with the user's
history items removed from the ranking (``test_unseen/*``), the protocol of the eSASRec benchmark
(blondered/transformer_benchmark, ``filter_viewed=True``), so its published rows have a
like-for-like figure (experiments/sasrec_ss_recipe.md)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from sidrec_core.callbacks import EpochMetrics
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec, training_batches
from sidrec_core.stages.context import stage_context
from sidrec_core.stages.fit_ranker import fit_ranker, record_fit, score, validation

log = logging.getLogger(__name__)
STAGE = "train_sasrec"


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``sasrec.checkpoint``, ``metrics/train_sasrec.json`` and per-epoch curves."""
    with stage_context(
        STAGE,
        params,
        output_key="sasrec.checkpoint",
        trains="sasrec.train",
        data=DataConfig,
        eval=EvalConfig,
        sasrec=SASRecConfig,
    ) as ctx:
        data, ev, cfg, device = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sasrec"], ctx.device
        loo = leave_one_out(load_prepared(data.prepared_dir))
        ev.check_catalogue(loo.num_items)  # before training, not at the first validation
        model = build_sasrec(cfg, loo).to(device)
        batches = training_batches(cfg, loo, ctx.base.seed)
        valid, test = loo.split("valid", cfg.max_history), loo.split("test", cfg.max_history)
        valid_rows = subsample_rows(len(valid), ev.max_valid_users)

        validate = validation(model, valid, ev, device, loo.num_items, valid_rows)

        ctx.run.set_tags(
            {
                "model": "sasrec",
                "loss": cfg.loss,
                "similarity": cfg.similarity,
                "negatives": cfg.negatives_label,
                "sid_features": model.sid_mode,
            }
        )
        log.info(
            "train_sasrec: %d users with targets, %d positions, %d batches/epoch, loss=%s "
            "similarity=%s negatives=%s",
            len(batches.users),
            batches.num_positions,
            len(batches),
            cfg.loss,
            cfg.similarity,
            cfg.negatives_label,
        )
        result = fit_ranker(
            ctx,
            model,
            batches,
            cfg.train,
            validate,
            cfg.checkpoint,
            model.sid_fingerprint,
            stateful=[batches],
            callbacks=[EpochMetrics(model.epoch_metrics)],
        )
        metrics, res = score(model, (valid, test), ev, device, loo.num_items)
        if not ev.exclude_seen:
            seen_out = dataclasses.replace(ev, exclude_seen=True)
            unseen = evaluate(model, test, seen_out, device, num_items=loo.num_items).metrics
            metrics.update({f"test_unseen/{k.split('/', 1)[1]}": v for k, v in unseen.items()})
        ctx.run.log_metrics(metrics)
        ctx.record_sha256(
            read={"prepared": Path(data.prepared_dir) / "dataset.npz"},
            wrote={"sasrec": cfg.checkpoint},
        )
        record_fit(ctx, result, model, res, **model.epoch_metrics())
        return ctx.result()
