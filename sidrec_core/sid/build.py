"""Item embeddings -> tokenizer fit -> collision resolution -> SID table + quality metrics,
configured by the ``sid`` section (:class:`~sidrec_core.sid.config.SIDConfig`). The stage itself
is :mod:`sidrec_core.stages.build_sids`.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np

from sidrec_core.sid.collisions import resolve
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.kmeans import check_vectors
from sidrec_core.sid.quality import sid_quality
from sidrec_core.sid.registry import make_tokenizer
from sidrec_core.sid.table import SIDTable


class SIDBuild(NamedTuple):
    """``table`` [N + 1, M'] after collision resolution, the fitted ``tokenizer``, quality
    ``metrics`` and the tokenizer's ``raw`` codes [N, M] before resolution."""

    table: SIDTable
    tokenizer: Any
    metrics: dict[str, Any]
    raw: np.ndarray


def build_sids(
    x: np.ndarray,
    cfg: SIDConfig,
    *,
    seed: int,
    train_sequences: list[np.ndarray] | None = None,
    device: str = "cpu",
) -> SIDBuild:
    """Fit the tokenizer on ``x`` [N, D] (row i - 1 = item i), resolve collisions."""
    x = check_vectors(x, cfg.codebook_size)
    tokenizer = make_tokenizer(cfg, dim=x.shape[1], seed=seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    raw = tokenizer.fit(x, train_sequences=train_sequences, device=device)
    fit_seconds = time.perf_counter() - start
    fit_cpu_seconds = time.process_time() - cpu_start  # wall time waits for shared cores
    distances = tokenizer.last_level_distances(x, raw) if cfg.collision == "knn" else None
    final = resolve(
        raw, cfg.collision, cfg.codebook_size, cfg.max_per_bucket, distances=distances, seed=seed
    )
    sizes = [cfg.codebook_size] * cfg.num_levels
    if final.shape[1] > raw.shape[1]:  # the suffix level's vocabulary is its largest code + 1
        sizes.append(int(final[:, -1].max()) + 1)
    codes = np.concatenate([np.full((1, final.shape[1]), -1, dtype=np.int64), final])
    table = SIDTable(codes, tuple(sizes))
    metrics = sid_quality(raw, final, cfg.codebook_size, sizes)
    metrics["recon_mse"] = tokenizer.reconstruction_mse(x, raw)
    metrics["fit_seconds"] = fit_seconds
    metrics["fit_cpu_seconds"] = fit_cpu_seconds
    metrics["unique"] = bool(table.is_unique())
    return SIDBuild(table, tokenizer, metrics, raw)
