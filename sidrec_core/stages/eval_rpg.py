"""DVC stage ``eval_rpg``: score the RPG checkpoint of ``train_rpg`` on every validation and test
user over all items (leave-one-out as in P5/TIGER), ranking by ``rpg.decoding``:
``exact`` full-catalogue scoring, or RPG's graph-constrained beam (its item graph built once,
timed as ``graph_seconds``). Metric keys are ``train_sasrec``'s, so the studies and the report
read RPG as they read SASRec."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out
from sidrec_core.evaluate import EvalConfig
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.stages.context import stage_context
from sidrec_core.stages.fit_ranker import score
from sidrec_core.stages.train_rpg import load_rpg_table

STAGE = "eval_rpg"


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``metrics/eval_rpg.json`` (beside ``train_rpg``'s)."""
    with stage_context(
        STAGE,
        params,
        output_key="rpg.checkpoint",
        data=DataConfig,
        eval=EvalConfig,
        rpg=RPGConfig,
    ) as ctx:
        data, ev, cfg = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["rpg"]
        decoding = cfg.decoding
        loo = leave_one_out(load_prepared(data.prepared_dir))
        ev.check_catalogue(loo.num_items)
        table = load_rpg_table(cfg, loo.num_items)
        model = RPG.load(cfg, torch.as_tensor(table.codes)).to(ctx.device)
        model.decoding = decoding
        start = time.perf_counter()
        if decoding.strategy == "graph":
            model.graph()
        graph_seconds = time.perf_counter() - start
        splits = (loo.split("valid", cfg.max_history), loo.split("test", cfg.max_history))
        metrics, test = score(model, splits, ev, ctx.device, loo.num_items)
        ctx.run.set_tags({"model": "rpg", "decoding": decoding.strategy})
        ctx.run.log_metrics(metrics)
        ctx.record_sha256(
            read={"rpg": cfg.checkpoint, "rpg_sids": Path(cfg.sid.output_dir) / "codes.npy"}
        )
        ctx.run.record(
            decoding=decoding.strategy,
            graph_seconds=graph_seconds,
            **{"test/ranks": test.ranks_record()},
        )
        return ctx.result()
