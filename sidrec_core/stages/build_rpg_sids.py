"""DVC stage ``build_rpg_sids``: item embeddings -> OPQ tokenizer (RPG's long unordered SIDs,
:mod:`sidrec_core.rpg.tokenizer`) -> ``rpg.sid.output_dir`` (``codes.npy`` [N + 1, M],
``meta.json``, the tokenizer ``opq.npz``), per-digit quality in ``metrics/build_rpg_sids.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.embeddings import load_embeddings
from sidrec_core.data.split import leave_one_out
from sidrec_core.rpg.model import RPGConfig
from sidrec_core.rpg.tokenizer import build_opq_table, save_table
from sidrec_core.sid.kmeans import set_faiss_threads
from sidrec_core.stages.context import stage_context

log = logging.getLogger(__name__)
STAGE = "build_rpg_sids"


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``rpg.sid.embeddings`` and ``data.prepared_dir``, write ``rpg.sid.output_dir``."""
    with stage_context(
        STAGE, params, output_key="rpg.sid.output_dir", data=DataConfig, rpg=RPGConfig
    ) as ctx:
        data, cfg = ctx.cfg["data"], ctx.cfg["rpg"].sid
        set_faiss_threads(ctx.base.num_threads)
        ds = load_prepared(data.prepared_dir)
        x = load_embeddings(cfg.embeddings, ds.num_items)
        fit_rows = None
        if cfg.train_on == "train_items":
            # item ids seen in training sequences (row i - 1 of x is item i), as RPG fits OPQ
            seen = np.unique(np.concatenate(leave_one_out(ds).train_sequences))
            fit_rows = seen[seen > 0] - 1
        codes, tok, metrics = build_opq_table(x, cfg, ctx.base.seed, fit_rows)
        out = Path(cfg.output_dir)
        save_table(out, codes, cfg)
        tok.save(out)
        log.info(
            "RPG SIDs for %d items -> %s (%s, M=%d, K=%d): duplicates %.4f -> %.4f, "
            "utilisation min %.3f, perplexity min %.1f, recon %.4f, fit %.1fs",
            len(codes) - 1,
            out,
            cfg.rotation,
            cfg.num_codebooks,
            cfg.codebook_size,
            metrics["collision_rate_before"],
            metrics["collision_rate_after"],
            metrics["utilization_min"],
            metrics["perplexity_min"],
            metrics["recon_mse"],
            metrics["fit_seconds"],
        )
        ctx.run.set_tags({"model": "rpg", "rotation": cfg.rotation})
        ctx.run.record(**metrics)
        ctx.record_sha256(
            read={"embeddings": cfg.embeddings}, wrote={"rpg_sids": out / "codes.npy"}
        )
        return ctx.result()
