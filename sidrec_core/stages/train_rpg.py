"""DVC stage ``train_rpg``: fit RPG (:mod:`sidrec_core.rpg.model`) on the OPQ SID table of
``build_rpg_sids`` with the shared loop, early-stopped on ``train.monitor`` (valid/ndcg@10, exact
scoring of a fixed validation subsample), then score the best checkpoint on valid and test over
all items with ``rpg.decoding`` (leave-one-out as in P5/TIGER). Metric keys are
``train_sasrec``'s; the final valid figures are over every user."""

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
from sidrec_core.rpg.decoding import GraphDecodingConfig
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.context import stage_context
from sidrec_core.stages.fit_ranker import fit_ranker, record_fit, score, validation

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
        # validation during training ranks exactly (the graph would be rebuilt every epoch)
        model.decoding = GraphDecodingConfig(strategy="exact")
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
        valid, test = loo.split("valid", cfg.max_history), loo.split("test", cfg.max_history)
        valid_rows = subsample_rows(len(valid), ev.max_valid_users)

        validate = validation(model, valid, ev, device, loo.num_items, valid_rows)

        ctx.run.set_tags(
            {"model": "rpg", "decoding": cfg.decoding.strategy, "rotation": cfg.sid.rotation}
        )
        log.info(
            "train_rpg: %d rows, %d targets, %d batches/epoch, M=%d, hidden %d",
            len(batches.users),
            batches.num_positions,
            len(batches),
            table.num_levels,
            cfg.hidden_dim,
        )
        start = time.perf_counter()
        result = fit_ranker(
            ctx, model, batches, cfg.train, validate, cfg.checkpoint, table.fingerprint()
        )
        fit_seconds = time.perf_counter() - start
        model.decoding = cfg.decoding
        metrics, res = score(model, (valid, test), ev, device, loo.num_items)
        ctx.run.log_metrics(metrics)
        ctx.record_sha256(
            read={
                "prepared": Path(data.prepared_dir) / "dataset.npz",
                "rpg_sids": Path(cfg.sid.output_dir) / "codes.npy",
            },
            wrote={"rpg": cfg.checkpoint},
        )
        # fit_seconds: wall time of training with its validations
        record_fit(ctx, result, model, res, fit_seconds=fit_seconds)
        return ctx.result()
