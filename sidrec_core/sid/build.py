"""Item embeddings -> tokenizer fit -> collision resolution -> SID table + quality metrics.

``SIDConfig`` is the ``sid`` params section: what every method shares at top level, each
method's own config nested under its key (next to its class), so an ablation still overrides
one dotted key: ``sid.constrained.*`` (:class:`~sidrec_core.sid.rqkmeans.ConstrainedConfig`),
``sid.rqvae.*`` for RQ-VAE and RQ-KMeans+ (:class:`~sidrec_core.sid.rqvae.RQVAEConfig`) with
the quantiser's technique flags in ``sid.rqvae.quantizer.*``
(:class:`~sidrec_core.sid.quantizer.QuantizerConfig`). The stage itself is
:mod:`sidrec_core.stages.build_sids`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Literal, NamedTuple

import numpy as np

from sidrec_core.sid.collisions import resolve
from sidrec_core.sid.kmeans import check_vectors
from sidrec_core.sid.quality import sid_quality
from sidrec_core.sid.registry import make_tokenizer
from sidrec_core.sid.rqkmeans import ConstrainedConfig
from sidrec_core.sid.rqvae import RQVAEConfig
from sidrec_core.sid.table import SIDTable


@dataclasses.dataclass(frozen=True)
class SIDConfig:
    """``sid`` section: tokenizer method, sizes, collision handling; each method's own knobs
    nested under its key."""

    method: Literal["rqvae", "rqkmeans", "rqkmeans_plus", "rqkmeans_constrained"] = "rqkmeans"
    num_levels: int = 3
    codebook_size: int = 256
    collision: Literal["suffix", "knn", "random"] = "knn"
    max_per_bucket: int = 1
    embeddings: str = "data/embeddings.npy"
    output_dir: str = "data/sids"
    # faiss k-means (every method uses it: RQ-KMeans, constrained seeds, k-means init)
    kmeans_iters: int = 20
    normalize_residuals: bool = True  # RQ-KMeans(-constrained): cluster residual directions
    constrained: ConstrainedConfig = dataclasses.field(default_factory=ConstrainedConfig)
    rqvae: RQVAEConfig = dataclasses.field(default_factory=RQVAEConfig)  # and RQ-KMeans+

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ValueError(f"sid.num_levels must be >= 1, got {self.num_levels}")
        if self.codebook_size < 2:
            raise ValueError(f"sid.codebook_size must be >= 2, got {self.codebook_size}")
        if self.max_per_bucket < 1:
            raise ValueError(f"sid.max_per_bucket must be >= 1, got {self.max_per_bucket}")
        if self.kmeans_iters < 1:
            raise ValueError(f"sid.kmeans_iters must be >= 1, got {self.kmeans_iters}")


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
