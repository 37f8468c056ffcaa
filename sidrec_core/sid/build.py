"""The ``build_sids`` stage: item embeddings -> tokenizer fit -> collision resolution -> SID table,
tokenizer checkpoint and SID quality metrics (``metrics/build_sids.json``).

``SIDConfig`` is the ``sid`` params section. Technique flags are flat keys (``sid.sinkhorn``,
``sid.ema``...) so an ablation overrides one key; they only apply to the learned methods
(``rqvae``, ``rqkmeans_plus``) and are validated together by
:class:`~sidrec_core.sid.rqvae.RQVAEFlags`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.embeddings import load_embeddings
from sidrec_core.data.split import leave_one_out
from sidrec_core.sid.collisions import resolve
from sidrec_core.sid.kmeans import check_vectors, set_faiss_threads
from sidrec_core.sid.quality import sid_quality
from sidrec_core.sid.registry import make_tokenizer
from sidrec_core.sid.rqvae import RQVAEFlags
from sidrec_core.sid.table import SIDTable
from sidrec_core.tracking import start_run
from sidrec_core.utils import peak_rss_mb, resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)
LEARNED = ("rqvae", "rqkmeans_plus")


@dataclasses.dataclass(frozen=True)
class SIDConfig:
    """``sid`` section: tokenizer method, sizes, collision handling, technique flags."""

    method: Literal["rqvae", "rqkmeans", "rqkmeans_plus", "rqkmeans_constrained"] = "rqkmeans"
    num_levels: int = 3
    codebook_size: int = 256
    collision: Literal["suffix", "knn", "random"] = "knn"
    max_per_bucket: int = 1
    embeddings: str = "data/embeddings.npy"
    output_dir: str = "data/sids"
    # faiss k-means (every method uses it: RQ-KMeans, constrained seeds, k-means init)
    kmeans_iters: int = 20
    normalize_residuals: bool = True  # cluster residual directions (fewer collisions)
    # rqkmeans_constrained: cluster sizes in [N/K (1 - band), N/K (1 + band)] unless given
    size_band: float = 0.5
    size_min: int | None = None
    size_max: int | None = None
    constrained_max_iter: int = 10
    # RQ-VAE / RQ-KMeans+ technique flags (see rqvae.py for the papers)
    sinkhorn: bool = False
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 5
    restart_unused: bool = True
    restart_threshold: float = 1.0
    ema: bool = True
    ema_decay: float = 0.99
    codebook_weight: float | None = None  # codebook-loss weight; gradient codebooks only
    kmeans_init: bool = True
    clip: bool = False
    clip_weight: float = 0.1
    clip_window: int = 3
    clip_temperature: float = 0.07
    # RQ-VAE sizes and training
    hidden_dims: tuple[int, ...] = (512, 256, 128)
    latent_dim: int = 32
    beta: float = 0.25  # commitment weight
    epochs: int = 150
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {self.num_levels}")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if self.max_per_bucket < 1:
            raise ValueError(f"max_per_bucket must be >= 1, got {self.max_per_bucket}")
        for name in ("kmeans_iters", "constrained_max_iter", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.size_band < 0:
            raise ValueError(f"size_band must be >= 0, got {self.size_band}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.method in LEARNED:
            RQVAEFlags(**self.rqvae_flags())

    def rqvae_flags(self) -> dict[str, Any]:
        """The technique flags and their knobs, as RQVAE constructor kwargs."""
        names = [f.name for f in dataclasses.fields(RQVAEFlags)]
        return {n: getattr(self, n) for n in names}


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
    raw = tokenizer.fit(
        x, train_sequences=train_sequences, clip_window=cfg.clip_window, device=device
    )
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


def run_build_sids(params: dict[str, Any]) -> dict[str, Any]:
    """Stage: read ``sid.embeddings`` and ``data.prepared_dir``, write ``sid.output_dir``
    (SID table + tokenizer checkpoint) and ``metrics/build_sids.json``."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    cfg = build(SIDConfig, params.get("sid"), "sid")
    seed_everything(base.seed)
    device = resolve_device(base.device)
    set_threads(base.num_threads)
    set_faiss_threads(base.num_threads)
    with start_run(
        "build_sids",
        {"base": to_dict(base), "data": to_dict(data), "sid": to_dict(cfg)},
        dataset=data.name,
        profile=base.profile,
        metrics_dir=base.metrics_dir,
        device=device,
    ) as run:
        ds = load_prepared(data.prepared_dir)
        x = load_embeddings(cfg.embeddings, ds.num_items)
        # CLIP pairs come from the training part only: never valid/test targets
        train_sequences = leave_one_out(ds).train_sequences if cfg.clip else None
        table, tokenizer, metrics, _ = build_sids(
            x, cfg, seed=base.seed, train_sequences=train_sequences, device=str(device)
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
        run.record(**metrics, fit_peak_rss_mb=peak_rss_mb())
        run.log_artifact(out / "meta.json", artifact_path="sids")
        return dict(run.metrics, **run.extra)
