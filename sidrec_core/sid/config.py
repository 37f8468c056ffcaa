"""The ``sid`` params section's configs, in one module that imports no tokenizer: the top-level
:class:`SIDConfig` (what every method shares) with each method's own knobs nested under its key,
so an ablation still overrides one dotted key: ``sid.constrained.*`` (:class:`ConstrainedConfig`,
RQ-KMeans-constrained), ``sid.rqvae.*`` for RQ-VAE and RQ-KMeans+ (:class:`RQVAEConfig`) with the
quantiser's technique flags in ``sid.rqvae.quantizer.*`` (:class:`QuantizerConfig`). The classes
they configure: :mod:`~sidrec_core.sid.rqkmeans`, :mod:`~sidrec_core.sid.rqvae`,
:mod:`~sidrec_core.sid.quantizer`; the tokenizers import this module, never the reverse.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

# the dotted params keys that error messages name
QUANTIZER_KEY = "sid.rqvae.quantizer"
CONSTRAINED_KEY = "sid.constrained"
RQVAE_KEY = "sid.rqvae"


@dataclasses.dataclass(frozen=True)
class QuantizerConfig:
    """``sid.rqvae.quantizer``: the quantiser's technique flags and their knobs."""

    ema: bool = True
    ema_decay: float = 0.99
    restart_unused: bool = True
    restart_threshold: float = 1.0  # EMA members per batch below which a code is dead
    sinkhorn: bool = False
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 5
    kmeans_init: bool = True  # residual k-means on the initial latents sets the codebooks
    codebook_weight: float | None = None  # codebook-loss weight; gradient codebooks only

    def __post_init__(self) -> None:
        """Reject nonsensical technique settings, naming the dotted key."""
        if self.ema and self.codebook_weight is not None:
            raise ValueError(
                f"{QUANTIZER_KEY}.codebook_weight applies to gradient-learned codebooks only; "
                f"with {QUANTIZER_KEY}.ema=true the codebook follows exponential moving averages: "
                "unset one"
            )
        if self.codebook_weight is not None and self.codebook_weight < 0:
            raise ValueError(
                f"{QUANTIZER_KEY}.codebook_weight must be >= 0, got {self.codebook_weight}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"{QUANTIZER_KEY}.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.sinkhorn and (self.sinkhorn_epsilon <= 0 or self.sinkhorn_iters < 1):
            raise ValueError(
                f"{QUANTIZER_KEY}.sinkhorn_epsilon must be > 0 and "
                f"{QUANTIZER_KEY}.sinkhorn_iters >= 1, got "
                f"{self.sinkhorn_epsilon}, {self.sinkhorn_iters}"
            )
        if self.restart_unused and self.restart_threshold <= 0:
            raise ValueError(
                f"{QUANTIZER_KEY}.restart_threshold must be > 0, got {self.restart_threshold}"
            )


@dataclasses.dataclass(frozen=True)
class ConstrainedConfig:
    """``sid.constrained``: cluster sizes in [N/K (1 - band), N/K (1 + band)] unless
    ``size_min`` / ``size_max`` are given; ``max_iter`` constrained k-means iterations."""

    size_band: float = 0.5
    size_min: int | None = None
    size_max: int | None = None
    max_iter: int = 10

    def __post_init__(self) -> None:
        if self.size_band < 0.0:
            raise ValueError(f"{CONSTRAINED_KEY}.size_band must be >= 0, got {self.size_band}")
        if self.max_iter < 1:
            raise ValueError(f"{CONSTRAINED_KEY}.max_iter must be >= 1, got {self.max_iter}")


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
    """``sid.rqvae``: sizes, training and CLIP of the RQ-VAE (and RQ-KMeans+, whose latent
    space is the input space), with the quantiser's technique flags nested in ``quantizer``."""

    hidden_dims: tuple[int, ...] = (512, 256, 128)
    latent_dim: int = 32
    beta: float = 0.25  # commitment weight
    epochs: int = 150
    batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 0.0
    clip: bool = False
    clip_weight: float = 0.1
    clip_window: int = 3  # co-purchase pairs: items fewer than this many positions apart
    clip_temperature: float = 0.07
    quantizer: QuantizerConfig = dataclasses.field(default_factory=QuantizerConfig)

    def __post_init__(self) -> None:
        """Reject nonsensical settings, naming the dotted key."""
        for name in ("latent_dim", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{RQVAE_KEY}.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"{RQVAE_KEY}.lr must be > 0, got {self.lr}")
        if self.clip and (self.clip_weight <= 0 or self.clip_temperature <= 0):
            raise ValueError(
                f"{RQVAE_KEY}.clip=true needs {RQVAE_KEY}.clip_weight > 0 and "
                f"{RQVAE_KEY}.clip_temperature > 0, got {self.clip_weight}, {self.clip_temperature}"
            )
        if self.clip and self.clip_window < 2:
            raise ValueError(
                f"{RQVAE_KEY}.clip_window must be >= 2 (pairs need two positions), "
                f"got {self.clip_window}"
            )


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
