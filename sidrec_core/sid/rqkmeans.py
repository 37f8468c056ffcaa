"""RQ-KMeans (residual k-means with faiss; OneRec, arXiv:2502.18965) and its balanced variant
RQ-KMeans-constrained (every level's cluster sizes held within a band around N/K with
``k-means-constrained``, min-cost-flow assignment; Bradley et al. 2000), seeded from the faiss
centroids with ``n_init=1`` because the library default of 10 restarts is needlessly slow.

``normalize_residuals`` clusters residual directions (see :func:`residual_kmeans`); the constrained
method's band is its :class:`ConstrainedConfig` (``sid.constrained.*``).
Shapes: x [N, D], centroids / codebooks [M, K, D], codes [N, M].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from sidrec_core.sid.config import CONSTRAINED_KEY, ConstrainedConfig, SIDConfig
from sidrec_core.sid.kmeans import (
    all_distances,
    check_vectors,
    kmeans,
    member_means,
    nearest,
    residual_kmeans,
    unit_rows,
)
from sidrec_core.sid.tokenizer import SIDTokenizer


class RQKMeans(SIDTokenizer):
    """Residual k-means tokenizer. State (buffers): ``centroids`` [M, K, D] pick the code,
    ``codebooks`` [M, K, D] reconstruct (identical unless ``normalize_residuals``)."""

    method = "rqkmeans"

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        *,
        seed: int = 0,
        niter: int = 20,
        normalize_residuals: bool = True,
    ) -> None:
        super().__init__(dim, num_levels, codebook_size, seed=seed, niter=niter)
        self.normalize = normalize_residuals
        self.register_buffer("centroids", torch.zeros(num_levels, codebook_size, dim))
        self.register_buffer("codebooks", torch.zeros(num_levels, codebook_size, dim))

    @classmethod
    def from_config(cls, cfg: SIDConfig, dim: int, seed: int) -> RQKMeans:
        return cls(
            dim,
            cfg.num_levels,
            cfg.codebook_size,
            seed=seed,
            niter=cfg.kmeans_iters,
            normalize_residuals=cfg.normalize_residuals,
        )

    def args(self) -> dict[str, object]:
        return dict(super().args(), normalize_residuals=self.normalize)

    def _space(self, residual: np.ndarray) -> np.ndarray:
        """Where codes are chosen: residual directions or raw residuals."""
        return unit_rows(residual) if self.normalize else residual

    def _store(self, centroids: np.ndarray, codebooks: np.ndarray) -> None:
        self.centroids.copy_(torch.from_numpy(np.asarray(centroids, dtype=np.float32)))
        self.codebooks.copy_(torch.from_numpy(np.asarray(codebooks, dtype=np.float32)))

    def fit(self, x: np.ndarray, **context: object) -> np.ndarray:
        """Fit every level on ``x`` [N, D] -> codes int64 [N, M]."""
        x = check_vectors(x, self.codebook_size)
        centroids, codebooks, codes = residual_kmeans(
            x,
            self.num_levels,
            self.codebook_size,
            seed=self.seed,
            niter=self.niter,
            normalize=self.normalize,
        )
        self._store(centroids, codebooks)
        return codes

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Greedy residual nearest-centroid codes: ``x`` [N, D] -> int64 [N, M]."""
        residual = check_vectors(x, 2).copy()
        centroids = self.centroids.detach().cpu().numpy()
        codebooks = self.codebooks.detach().cpu().numpy()
        codes = np.zeros((len(residual), self.num_levels), dtype=np.int64)
        for level in range(self.num_levels):
            codes[:, level], _ = nearest(self._space(residual), centroids[level])
            residual -= codebooks[level][codes[:, level]]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen codebook vectors: codes [N, M] -> float32 [N, D]."""
        codebooks = self.codebooks.detach().cpu().numpy()
        return sum(codebooks[m][codes[:, m]] for m in range(self.num_levels)).astype(np.float32)

    def last_level_distances(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Distance of each item's last residual to every last-level code -> float32 [N, K]."""
        codebooks = self.codebooks.detach().cpu().numpy()
        residual = np.asarray(x, dtype=np.float32).copy()
        for level in range(self.num_levels - 1):
            residual -= codebooks[level][codes[:, level]]
        return all_distances(self._space(residual), self.centroids[-1].detach().cpu().numpy())


def size_bounds(
    num_items: int, codebook_size: int, band: float, size_min: int | None, size_max: int | None
) -> tuple[int, int]:
    """Cluster size bounds: explicit ``size_min``/``size_max`` or ``N/K * (1 -/+ band)``.

    Raises naming the parameter when no assignment can satisfy them (K * min > N or
    K * max < N).
    """
    mean = num_items / codebook_size
    lo = size_min if size_min is not None else max(1, math.floor(mean * (1.0 - band)))
    hi = size_max if size_max is not None else math.ceil(mean * (1.0 + band))
    if lo < 0 or hi < 1 or lo > hi:
        raise ValueError(
            f"{CONSTRAINED_KEY}.size_min/{CONSTRAINED_KEY}.size_max: invalid band [{lo}, {hi}]"
        )
    if lo * codebook_size > num_items or hi * codebook_size < num_items:
        raise ValueError(
            f"{CONSTRAINED_KEY}.size_min/{CONSTRAINED_KEY}.size_max/{CONSTRAINED_KEY}.size_band: "
            "infeasible cluster-size "
            f"band [{lo}, {hi}] for {num_items} items in {codebook_size} codes "
            f"(needs {lo} * {codebook_size} <= {num_items} <= {hi} * {codebook_size})"
        )
    return lo, hi


class RQKMeansConstrained(RQKMeans):
    """Balanced residual k-means. ``fit`` returns the balanced (size-constrained) assignments;
    ``encode`` of new items is the plain nearest centroid (the band constrains a whole set, not
    one item)."""

    method = "rqkmeans_constrained"
    config_type = ConstrainedConfig
    config_key = "constrained"

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        *,
        seed: int = 0,
        niter: int = 20,
        normalize_residuals: bool = True,
        cfg: ConstrainedConfig = ConstrainedConfig(),
    ) -> None:
        super().__init__(
            dim,
            num_levels,
            codebook_size,
            seed=seed,
            niter=niter,
            normalize_residuals=normalize_residuals,
        )
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: SIDConfig, dim: int, seed: int) -> RQKMeansConstrained:
        return cls(
            dim,
            cfg.num_levels,
            cfg.codebook_size,
            seed=seed,
            niter=cfg.kmeans_iters,
            normalize_residuals=cfg.normalize_residuals,
            cfg=cfg.constrained,
        )

    def fit(self, x: np.ndarray, **context: object) -> np.ndarray:
        from k_means_constrained import KMeansConstrained

        x = check_vectors(x, self.codebook_size)
        c = self.cfg
        lo, hi = size_bounds(len(x), self.codebook_size, c.size_band, c.size_min, c.size_max)
        residual = x.copy()
        codes = np.zeros((len(x), self.num_levels), dtype=np.int64)
        shape = (self.num_levels, self.codebook_size, x.shape[1])
        centroids, codebooks = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        for level in range(self.num_levels):
            space = self._space(residual)
            init = kmeans(
                space,
                self.codebook_size,
                seed=self.seed + level,
                niter=self.niter,
                spherical=self.normalize,
            )
            model = KMeansConstrained(
                n_clusters=self.codebook_size,
                size_min=lo,
                size_max=hi,
                init=init,
                n_init=1,
                max_iter=c.max_iter,
                random_state=self.seed + level,
                n_jobs=1,
            )
            model.fit(space.astype(np.float64))
            codes[:, level] = np.asarray(model.labels_, dtype=np.int64)
            centroids[level] = np.asarray(model.cluster_centers_, dtype=np.float32)
            codebooks[level] = member_means(residual, codes[:, level], self.codebook_size)
            residual -= codebooks[level][codes[:, level]]
        self._store(centroids, codebooks)
        return codes
