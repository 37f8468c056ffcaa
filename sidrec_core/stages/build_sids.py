"""DVC stage ``build_sids``: item embeddings -> tokenizer fit -> collision resolution -> SID
table + tokenizer checkpoint in ``sid.output_dir``, SID quality in ``metrics/build_sids.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.embeddings import load_embeddings
from sidrec_core.data.split import leave_one_out
from sidrec_core.sid.build import build_sids
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.kmeans import set_faiss_threads
from sidrec_core.stages.context import stage_context
from sidrec_core.utils import peak_rss_mb

log = logging.getLogger(__name__)


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``sid.embeddings`` and ``data.prepared_dir``, write ``sid.output_dir``."""
    with stage_context(
        "build_sids", params, output_key="sid.output_dir", data=DataConfig, sid=SIDConfig
    ) as ctx:
        data, cfg = ctx.cfg["data"], ctx.cfg["sid"]
        set_faiss_threads(ctx.base.num_threads)
        ds = load_prepared(data.prepared_dir)
        x = load_embeddings(cfg.embeddings, ds.num_items)
        # CLIP pairs come from the training part only: never valid/test targets
        train_sequences = leave_one_out(ds).train_sequences if cfg.rqvae.clip else None
        table, tokenizer, metrics, _ = build_sids(
            x, cfg, seed=ctx.base.seed, train_sequences=train_sequences, device=str(ctx.device)
        )
        out = Path(cfg.output_dir)
        table.save(out)
        tokenizer.save(out)
        log.info(
            "SIDs for %d items -> %s (%s, %s): collisions %.4f -> %.4f, fit %.1fs",
            table.num_items,
            out,
            cfg.method,
            cfg.collision,
            metrics["collision_rate_before"],
            metrics["collision_rate_after"],
            metrics["fit_seconds"],
        )
        ctx.run.record(
            **metrics,
            fit_peak_rss_mb=peak_rss_mb(),
        )
        ctx.record_sha256(read={"embeddings": cfg.embeddings}, wrote={"sids": out / "codes.npy"})
        ctx.run.log_artifact(out / "meta.json", artifact_path="sids")
        return ctx.result()
