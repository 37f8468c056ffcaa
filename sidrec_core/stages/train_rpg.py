"""DVC stage ``train_rpg``: fit RPG (:mod:`sidrec_core.rpg.model`) on the OPQ SID table of
``build_rpg_sids`` with the shared loop, early-stopped on ``train.monitor`` (valid/ndcg@10, exact
scoring of a fixed validation subsample), and save the best checkpoint to ``rpg.checkpoint``.
``eval_rpg`` scores it: a change of ``rpg_decoding`` re-runs that stage alone."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig
from sidrec_core.io import write_json
from sidrec_core.rpg.mhl import Curriculum
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.context import StageContext, stage_context
from sidrec_core.stages.fit_ranker import fit_ranker, validation
from sidrec_core.train import FitResult

log = logging.getLogger(__name__)
STAGE = "train_rpg"


def load_rpg_table(cfg: RPGConfig, num_items: int) -> SIDTable:
    """The table ``build_rpg_sids`` wrote, checked against ``rpg.sid``."""
    table = SIDTable.load(cfg.sid.output_dir, num_items=num_items)
    want = (cfg.sid.codebook_size,) * cfg.sid.num_codebooks
    if table.codebook_sizes != want:
        raise ValueError(
            f"{cfg.sid.output_dir} has {table.num_levels} digits of "
            f"{table.codebook_sizes[0]} codes, rpg.sid asks for {cfg.sid.num_codebooks} x "
            f"{cfg.sid.codebook_size}: re-run build_rpg_sids"
        )
    return table


def record_training(ctx: StageContext, result: FitResult, model: RPG, **extra: Any) -> None:
    """``fit_ranker.record_fit`` without a test pass (``eval_rpg`` scores): the training figures,
    ``extra`` and the parameter count; the per-epoch records to ``train_rpg_curves.json``."""
    ctx.run.record(
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        steps=result.steps,
        seconds_per_epoch=result.seconds_per_epoch,
        num_parameters=sum(p.numel() for p in model.parameters()),
        **extra,
    )
    numeric = (int, float)
    curves = [{k: v for k, v in r.items() if isinstance(v, numeric)} for r in result.history]
    write_json(Path(ctx.metrics_dir) / f"{STAGE}_curves.json", curves)


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``rpg.checkpoint``, ``metrics/train_rpg.json`` and per-epoch curves."""
    with stage_context(
        STAGE,
        params,
        output_key="rpg.checkpoint",
        trains="rpg.train",
        data=DataConfig,
        eval=EvalConfig,
        rpg=RPGConfig,
    ) as ctx:
        data, ev, cfg, device = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["rpg"], ctx.device
        loo = leave_one_out(load_prepared(data.prepared_dir))
        ev.check_catalogue(loo.num_items)
        table = load_rpg_table(cfg, loo.num_items)
        model = RPG(cfg, torch.as_tensor(table.codes), cfg.sid.codebook_size).to(device)
        # validation ranks exactly (model.decoding's default): the graph would change every epoch
        batches = TrainBatches(
            loo.train_sequences,
            cfg.max_history,
            cfg.train.batch_size,
            seed=ctx.base.seed,
            bucket_window=cfg.bucket_window,
            rows=cfg.train_rows,
        )
        if cfg.loss_normalization == "tokens":
            model.loss_tokens = cfg.train.batch_size * batches.num_positions / len(batches.users)
        valid = loo.split("valid", cfg.max_history)
        valid_rows = subsample_rows(len(valid), ev.max_valid_users)
        validate = validation(model, valid, ev, device, loo.num_items, valid_rows)
        ctx.run.set_tags({"model": "rpg", "rotation": cfg.sid.rotation})
        log.info(
            "train_rpg: %d rows, %d targets, %d batches/epoch, M=%d, hidden %d",
            len(batches.users),
            batches.num_positions,
            len(batches),
            table.num_levels,
            cfg.hidden_dim,
        )
        # rpg.mhl: the model's loss masks history while its curriculum (advanced by the loop's
        # hooks, saved with a resume) says so
        mhl = [Curriculum(cfg.mhl, cfg.train.monitor, ctx.base.seed)] if cfg.mhl.on else []
        model.curriculum = mhl[0] if mhl else None
        start = time.perf_counter()
        result = fit_ranker(
            ctx,
            model,
            batches,
            cfg.train,
            validate,
            cfg.checkpoint,
            table.fingerprint(),
            stateful=mhl,
            callbacks=mhl,
        )
        fit_seconds = time.perf_counter() - start
        ctx.record_sha256(
            read={
                "prepared": Path(data.prepared_dir) / "dataset.npz",
                "rpg_sids": Path(cfg.sid.output_dir) / "codes.npy",
            },
            wrote={"rpg": cfg.checkpoint},
        )
        # fit_seconds: wall time of training with its validations; best_valid/<metric>: the
        # monitor's best on the validation subsample (eval_rpg scores every user)
        record_training(
            ctx,
            result,
            model,
            fit_seconds=fit_seconds,
            **{f"best_{cfg.train.monitor}": result.best_metric},
        )
        return ctx.result()
