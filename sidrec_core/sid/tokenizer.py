"""The SID tokenizer contract shared by RQ-KMeans, RQ-KMeans-constrained, RQ-VAE and RQ-KMeans+.

A tokenizer is an ``nn.Module`` whose whole state lives in registered buffers/parameters, built
from plain arguments (sizes, seed, k-means iterations) plus, for most methods, one frozen config
dataclass defined next to its class. A checkpoint is ``{"method", "args", "config",
"state_dict"}`` (the config as a plain dict, loadable with ``weights_only=True``) and
:func:`~sidrec_core.sid.registry.load_tokenizer` rebuilds it exactly. Its numpy-facing API:

- ``fit(x [N, D]) -> codes int64 [N, M]``: learn the codebooks, return the training items' codes
  (for the constrained method these are the balanced assignments);
- ``encode(x [N, D]) -> codes int64 [N, M]``: greedy nearest code per level, for new items too;
- ``decode(codes [N, M]) -> x_hat float32 [N, D]``;
- ``last_level_distances(x [N, D], codes [N, M]) -> float32 [N, K]``: each item's distance to
  every last-level code given its own prefix (what ``knn`` collision resolution moves by).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from sidrec_core.io import save_torch
from sidrec_core.sid.config import SIDConfig

CHECKPOINT_NAME = "tokenizer.pt"


class SIDTokenizer(nn.Module):
    """Base class: M levels of K codes over D-dimensional vectors. Subclasses with a config
    dataclass name it in ``config_type`` (its ``sid`` sub-section in ``config_key``), keep it
    in ``self.cfg`` and take it as the ``cfg`` constructor argument."""

    method: ClassVar[str] = ""
    config_type: ClassVar[type | None] = None
    config_key: ClassVar[str] = ""

    def __init__(
        self, dim: int, num_levels: int, codebook_size: int, seed: int, niter: int
    ) -> None:
        if num_levels < 1:
            raise ValueError(f"sid.num_levels must be >= 1, got {num_levels}")
        if codebook_size < 2:
            raise ValueError(f"sid.codebook_size must be >= 2, got {codebook_size}")
        if niter < 1:
            raise ValueError(f"sid.kmeans_iters must be >= 1, got {niter}")
        super().__init__()
        self.dim, self.num_levels, self.codebook_size = dim, num_levels, codebook_size
        self.seed, self.niter = seed, niter
        self.cfg: Any = None

    @classmethod
    def from_config(cls, cfg: SIDConfig, dim: int, seed: int) -> SIDTokenizer:
        """An unfitted tokenizer for the ``sid`` section ``cfg`` on ``dim``-dim vectors."""
        raise TypeError(f"{cls.__name__} must implement from_config")  # pragma: no cover

    def args(self) -> dict[str, Any]:
        """The plain constructor arguments besides ``cfg`` (a subclass adds its own)."""
        return dict(
            dim=self.dim,
            num_levels=self.num_levels,
            codebook_size=self.codebook_size,
            seed=self.seed,
            niter=self.niter,
        )

    def fit(self, x: np.ndarray, **context: Any) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement fit")

    def encode(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement encode")

    def decode(self, codes: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement decode")

    def last_level_distances(
        self, x: np.ndarray, codes: np.ndarray
    ) -> np.ndarray:  # pragma: no cover - abstract
        raise TypeError(f"{type(self).__name__} must implement last_level_distances")

    def reconstruction_mse(self, x: np.ndarray, codes: np.ndarray) -> float:
        """Mean squared error per element between ``x`` [N, D] and ``decode(codes)``."""
        return float(np.mean((np.asarray(x, dtype=np.float32) - self.decode(codes)) ** 2))

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/tokenizer.pt`` atomically; returns its path."""
        path = Path(directory) / CHECKPOINT_NAME
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        config = dataclasses.asdict(self.cfg) if self.cfg is not None else None
        save_torch(
            path,
            {"method": self.method, "args": self.args(), "config": config, "state_dict": state},
        )
        return path
