"""DVC stage ``train_etegrec``: pre-train the RQ-VAE tokenizer on ``sid.embeddings`` (as
``build_sids`` does), then train it end to end with the SID LM (:mod:`sidrec_core.etegrec`).
Writes the final SID table + tokenizer to ``etegrec.sid_dir`` (the layout of ``build_sids``'
output) and the SID LM to ``etegrec.output_dir`` (the layout of ``train_sidlm``'s), so
``eval_etegrec``, ``eval_sidlm`` (``--set sidlm.sid_dir=... sidlm.output_dir=...``) and decoding
read them unchanged."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.embeddings import load_embeddings
from sidrec_core.data.sid_examples import training_rows
from sidrec_core.data.split import leave_one_out
from sidrec_core.etegrec.align import AlignHeads
from sidrec_core.etegrec.config import ETEGRecConfig
from sidrec_core.etegrec.model import ETEGRecLM, check_lm_config
from sidrec_core.etegrec.trainer import ETEGRecTrainer, check_sid_config, encode_table
from sidrec_core.io import save_dir_atomic
from sidrec_core.models.sidlm import SIDLMConfig
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.kmeans import set_faiss_threads
from sidrec_core.sid.registry import make_tokenizer
from sidrec_core.stages.context import stage_context
from sidrec_core.utils import peak_rss_mb

log = logging.getLogger(__name__)


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``etegrec.sid_dir``, ``etegrec.output_dir``, ``metrics/train_etegrec.json``."""
    with stage_context(
        "train_etegrec",
        params,
        output_key="etegrec.output_dir",
        data=DataConfig,
        sid=SIDConfig,
        sidlm=SIDLMConfig,
        etegrec=ETEGRecConfig,
    ) as ctx:
        data, sid, lm_cfg, cfg = (ctx.cfg[k] for k in ("data", "sid", "sidlm", "etegrec"))
        check_sid_config(sid)
        check_lm_config(lm_cfg)
        set_faiss_threads(ctx.base.num_threads)
        ds = load_prepared(data.prepared_dir)
        loo = leave_one_out(ds)
        x = load_embeddings(sid.embeddings, ds.num_items)
        if Path(cfg.output_dir).exists():  # a killed run must not leave a stale model behind
            shutil.rmtree(cfg.output_dir)
        seed, device = ctx.base.seed, ctx.device
        tok = make_tokenizer(sid, dim=x.shape[1], seed=seed)
        tok.fit(x, train_sequences=loo.train_sequences, device=str(device))
        table, raw = encode_table(tok, x, sid, seed)
        pre_recon = tok.reconstruction_mse(x, raw)
        books = (lambda: tok.quantizer.codebooks) if cfg.tie_codebooks else None
        model = ETEGRecLM.build(lm_cfg, table, data.max_history, books).to(device)
        heads = AlignHeads(lm_cfg.hidden_size, tok.quantizer.dim, x.shape[1]).to(device)
        trainer = ETEGRecTrainer(
            tok,
            model,
            heads,
            x,
            list(training_rows(loo, "pretrain", data.max_history)),
            cfg,
            sid,
            seed=seed,
            device=device,
            log_metrics=lambda m, step: ctx.run.log_metrics(m, step=step),
        )
        figures = trainer.train()
        model.table.save(cfg.sid_dir)
        tok.save(cfg.sid_dir)
        save_dir_atomic(model, cfg.output_dir)
        log.info(
            "etegrec (%s): %d recommender / %d tokenizer steps, recon %.4f -> %.4f, %.0fs",
            cfg.mode,
            figures["rec_steps"],
            figures["tok_steps"],
            pre_recon,
            figures["recon_mse"],
            figures["train_seconds"],
        )
        ctx.run.set_tags({"model": "etegrec", "mode": cfg.mode})
        ctx.run.record(
            **figures,
            pretrain_recon_mse=pre_recon,
            num_parameters=sum(p.numel() for p in model.parameters()),
            train_peak_rss_mb=peak_rss_mb(),
        )
        return ctx.result()
