"""DVC stage ``embed``: item text -> ``embed.output`` vectors [N, D] (row i - 1 = item i)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import (
    DataConfig,
    load_prepared,
    prepared_texts,
    resolve_dataset_dir,
)
from sidrec_core.data.embeddings import EmbedConfig, encode_texts, load_precomputed, load_shipped
from sidrec_core.io import save_npy
from sidrec_core.stages.context import stage_context

log = logging.getLogger(__name__)


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Embed every prepared item's text, or take the dataset's shipped table of the same texts
    (``embed.shipped``), or load ``embed.precomputed``; ``source`` in the metrics says which."""
    with stage_context(
        "embed", params, output_key="embed.output", data=DataConfig, embed=EmbedConfig
    ) as ctx:
        data, cfg = ctx.cfg["data"], ctx.cfg["embed"]
        texts = prepared_texts(data.prepared_dir)
        start = time.perf_counter()
        vectors, source = None, "computed"
        if cfg.precomputed:
            vectors, source = load_precomputed(cfg.precomputed, len(texts)), "precomputed"
        elif data.name == "synthetic" and cfg.model == "synthetic":
            from sidrec_core.data.synthetic import synthetic_embeddings

            vectors = synthetic_embeddings(load_prepared(data.prepared_dir), seed=ctx.base.seed)
        elif cfg.shipped and data.name != "synthetic":
            vectors = load_shipped(resolve_dataset_dir(data.name), cfg.model, texts)
            source = "shipped" if vectors is not None else source
        if vectors is None:
            vectors = encode_texts(texts, cfg, device=str(ctx.device))
        seconds = time.perf_counter() - start
        save_npy(Path(cfg.output), vectors)
        log.info(
            "embeddings (%s) of %d items -> %s in %.1fs", source, len(vectors), cfg.output, seconds
        )
        ctx.run.record(
            source=source,
            num_items=int(vectors.shape[0]),
            dim=int(vectors.shape[1]),
            embed_seconds=seconds,
            items_per_second=len(vectors) / max(seconds, 1e-9),
        )
        ctx.record_sha256(wrote={"embeddings": cfg.output})
        return ctx.result()
