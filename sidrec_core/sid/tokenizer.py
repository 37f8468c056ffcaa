"""The SID tokenizer contract shared by RQ-KMeans, RQ-KMeans-constrained, RQ-VAE and RQ-KMeans+.

A tokenizer is an ``nn.Module`` whose whole state lives in registered buffers/parameters, so a
checkpoint is ``{"method", "kwargs", "state_dict"}`` and :func:`load_tokenizer` rebuilds it
exactly. Its numpy-facing API:

- ``fit(x [N, D]) -> codes int64 [N, M]``: learn the codebooks, return the training items' codes
  (for the constrained method these are the balanced assignments);
- ``encode(x [N, D]) -> codes int64 [N, M]``: greedy nearest code per level, for new items too;
- ``decode(codes [N, M]) -> x_hat float32 [N, D]``;
- ``last_level_distances(x [N, D], codes [N, M]) -> float32 [N, K]``: each item's distance to
  every last-level code given its own prefix (what ``knn`` collision resolution moves by).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec_core.io import save_torch

CHECKPOINT_NAME = "tokenizer.pt"


class SIDTokenizer(nn.Module):
    """Base class: remembers its constructor kwargs so a checkpoint can rebuild it."""

    method: str = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.init_kwargs = dict(kwargs)

    @property
    def num_levels(self) -> int:
        return int(self.init_kwargs["num_levels"])

    @property
    def codebook_size(self) -> int:
        return int(self.init_kwargs["codebook_size"])

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
        save_torch(path, {"method": self.method, "kwargs": self.init_kwargs, "state_dict": state})
        return path


def load_tokenizer(path: str | Path) -> SIDTokenizer:
    """Rebuild a saved tokenizer from a checkpoint file or the SID folder holding one."""
    from sidrec_core.sid.registry import TOKENIZERS

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the build_sids stage first")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    method = ckpt["method"]
    if method not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer method {method!r}")
    tokenizer = TOKENIZERS[method](**ckpt["kwargs"])
    tokenizer.load_state_dict(ckpt["state_dict"])
    tokenizer.eval()
    return tokenizer
