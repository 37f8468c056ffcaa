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
from sidrec_core.io import write_json
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec, training_batches
from sidrec_core.stages.context import stage_context
from sidrec_core.train import Resume, fit

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

        def validate() -> dict[str, float]:
            res = evaluate(
                model, valid, ev, device, num_items=loo.num_items, bootstrap=False, users=valid_rows
            )
            return {k: v for k, v in res.metrics.items() if "@" in k}

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
        result = fit(
            model,
            batches,
            validate,
            cfg.train,
            device=device,
            steps_per_epoch=len(batches),
            checkpoint=cfg.checkpoint,
            # beside the model folder, not inside it: DVC deletes a stage's outs before a run
            resume=Resume(
                Path(cfg.checkpoint).parent.parent / ".resume" / f"{STAGE}.pt",
                fingerprint=ctx.fingerprint(sid_table=model.sid_fingerprint),
                stateful=[batches],
            ),
            callbacks=[EpochMetrics(model.epoch_metrics), *ctx.callbacks],
        )
        metrics: dict[str, float] = {}
        for split in (valid, test):
            res = evaluate(model, split, ev, device, num_items=loo.num_items)
            metrics.update(res.metrics)
        if not ev.exclude_seen:
            seen_out = dataclasses.replace(ev, exclude_seen=True)
            unseen = evaluate(model, test, seen_out, device, num_items=loo.num_items).metrics
            metrics.update({f"test_unseen/{k.split('/', 1)[1]}": v for k, v in unseen.items()})
        ctx.run.log_metrics(metrics)
        ctx.record_sha256(
            read={"prepared": Path(data.prepared_dir) / "dataset.npz"},
            wrote={"sasrec": cfg.checkpoint},
        )
        ctx.run.record(
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            steps=result.steps,
            seconds_per_epoch=result.seconds_per_epoch,
            num_parameters=sum(p.numel() for p in model.parameters()),
            **model.epoch_metrics(),
            **{"test/ranks": res.ranks_record()},
        )
        curves = [
            {k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history
        ]
        write_json(Path(ctx.metrics_dir) / f"{STAGE}_curves.json", curves)
        return ctx.result()
