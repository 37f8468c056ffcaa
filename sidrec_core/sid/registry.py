"""Tokenizer registry: ``sid.method`` -> tokenizer class (a plain dict), and the factory that
turns a :class:`~sidrec_core.sid.build.SIDConfig` into constructor kwargs."""

from __future__ import annotations

from typing import Any

from sidrec_core.sid.rqkmeans import RQKMeans, RQKMeansConstrained
from sidrec_core.sid.rqvae import RQVAE, RQKMeansPlus
from sidrec_core.sid.tokenizer import SIDTokenizer

TOKENIZERS: dict[str, type[SIDTokenizer]] = {
    "rqkmeans": RQKMeans,
    "rqkmeans_constrained": RQKMeansConstrained,
    "rqvae": RQVAE,
    "rqkmeans_plus": RQKMeansPlus,
}


def make_tokenizer(cfg: Any, dim: int, seed: int) -> SIDTokenizer:
    """Build an unfitted tokenizer for ``cfg`` (a SIDConfig) on ``dim``-dimensional vectors."""
    common = dict(
        dim=dim,
        num_levels=cfg.num_levels,
        codebook_size=cfg.codebook_size,
        niter=cfg.kmeans_iters,
        seed=seed,
    )
    if cfg.method == "rqkmeans":
        return RQKMeans(**common, normalize_residuals=cfg.normalize_residuals)
    if cfg.method == "rqkmeans_constrained":
        return RQKMeansConstrained(
            **common,
            normalize_residuals=cfg.normalize_residuals,
            size_band=cfg.size_band,
            size_min=cfg.size_min,
            size_max=cfg.size_max,
            max_iter=cfg.constrained_max_iter,
        )
    train = dict(
        hidden_dims=list(cfg.hidden_dims),
        latent_dim=cfg.latent_dim,
        beta=cfg.beta,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        **cfg.rqvae_flags(),
    )
    if cfg.method == "rqvae":
        return RQVAE(**common, **train)
    if cfg.method == "rqkmeans_plus":
        return RQKMeansPlus(**common, **train)
    raise ValueError(
        f"sid.method: unknown tokenizer {cfg.method!r}; choose from {sorted(TOKENIZERS)}"
    )
