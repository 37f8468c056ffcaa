"""The one tokenizer lookup: ``sid.method`` -> tokenizer class, for building an unfitted one
(:func:`make_tokenizer`) and rebuilding a saved one (:func:`load_tokenizer`). Each class builds
itself from the ``sid`` section with ``from_config`` and names its own config (``config_type``),
so adding a method is a class, its config in :mod:`sidrec_core.sid.config`, and one entry here."""

from __future__ import annotations

from pathlib import Path

import torch

from sidrec_core.config import ConfigError, build
from sidrec_core.io import reading
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.rqkmeans import RQKMeans, RQKMeansConstrained
from sidrec_core.sid.rqvae import RQVAE, RQKMeansPlus
from sidrec_core.sid.tokenizer import CHECKPOINT_NAME, SIDTokenizer

TOKENIZERS: dict[str, type[SIDTokenizer]] = {
    cls.method: cls for cls in (RQKMeans, RQKMeansConstrained, RQVAE, RQKMeansPlus)
}


def make_tokenizer(cfg: SIDConfig, dim: int, seed: int) -> SIDTokenizer:
    """An unfitted tokenizer for the ``sid`` section ``cfg`` on ``dim``-dimensional vectors."""
    if cfg.method not in TOKENIZERS:
        raise ValueError(
            f"sid.method: unknown tokenizer {cfg.method!r}; choose from {sorted(TOKENIZERS)}"
        )
    return TOKENIZERS[cfg.method].from_config(cfg, dim=dim, seed=seed)


def load_tokenizer(path: str | Path) -> SIDTokenizer:
    """Rebuild a saved tokenizer from a checkpoint file or the SID folder holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the build_sids stage first")
    with reading(path, "rebuild the SID table (dvc repro build_sids)"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        method = ckpt["method"]
    if method not in TOKENIZERS:
        raise ValueError(f"{path}: unknown tokenizer method {method!r}")
    cls = TOKENIZERS[method]
    kwargs = dict(ckpt["args"])
    if cls.config_type is not None:  # strict: a key the config lacks fails, naming it
        try:
            kwargs["cfg"] = build(cls.config_type, ckpt["config"], f"sid.{cls.config_key}")
        except ConfigError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    tokenizer = cls(**kwargs)
    tokenizer.load_state_dict(ckpt["state_dict"])
    tokenizer.eval()
    return tokenizer
