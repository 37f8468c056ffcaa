"""The ``prepare`` and ``embed`` pipeline stages."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.data.dataset import (
    DataConfig,
    load_dataset,
    load_prepared,
    prepared_texts,
    save_prepared,
)
from sidrec_core.data.embeddings import EmbedConfig, encode_texts, load_precomputed
from sidrec_core.io import save_npy
from sidrec_core.tracking import start_run
from sidrec_core.utils import resolve_device, seed_everything

log = logging.getLogger(__name__)


def run_prepare(params: dict[str, Any]) -> dict[str, Any]:
    """Load and validate the dataset, write ``data.prepared_dir`` and ``metrics/prepare.json``."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    seed_everything(base.seed)
    with start_run(
        "prepare",
        {"base": to_dict(base), "data": to_dict(data)},
        dataset=data.name,
        profile=base.profile,
        metrics_dir=base.metrics_dir,
    ) as run:
        ds = load_dataset(data, seed=base.seed)
        save_prepared(ds, data.prepared_dir)
        run.record(**ds.counts(), **{f"dropped_{k}": v for k, v in ds.dropped.items()})
        return dict(run.metrics, **run.extra)


def run_embed(params: dict[str, Any]) -> dict[str, Any]:
    """Embed every prepared item's text (or load ``embed.precomputed``) -> ``embed.output``."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    cfg = build(EmbedConfig, params.get("embed"), "embed")
    seed_everything(base.seed)
    device = resolve_device(base.device)
    with start_run(
        "embed",
        {"base": to_dict(base), "data": to_dict(data), "embed": to_dict(cfg)},
        dataset=data.name,
        profile=base.profile,
        metrics_dir=base.metrics_dir,
        device=device,
    ) as run:
        texts = prepared_texts(data.prepared_dir)
        start = time.perf_counter()
        if cfg.precomputed:
            vectors = load_precomputed(cfg.precomputed, len(texts))
        elif data.name == "synthetic" and cfg.model == "synthetic":
            from sidrec_core.data.synthetic import synthetic_embeddings

            vectors = synthetic_embeddings(load_prepared(data.prepared_dir), seed=base.seed)
        else:
            vectors = encode_texts(texts, cfg, device=str(device))
        seconds = time.perf_counter() - start
        save_npy(Path(cfg.output), vectors)
        log.info("embedded %d items -> %s in %.1fs", len(vectors), cfg.output, seconds)
        run.record(
            num_items=int(vectors.shape[0]),
            dim=int(vectors.shape[1]),
            embed_seconds=seconds,
            items_per_second=len(vectors) / max(seconds, 1e-9),
        )
        return dict(run.metrics, **run.extra)
