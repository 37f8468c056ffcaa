"""The one tokenizer lookup: ``sid.method`` -> tokenizer class. Each class builds itself from
the ``sid`` section with ``from_config`` and names its own config (``config_type``), so adding a
method is a class, its config next to it, and one entry here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidrec_core.sid.rqkmeans import RQKMeans, RQKMeansConstrained
from sidrec_core.sid.rqvae import RQVAE, RQKMeansPlus
from sidrec_core.sid.tokenizer import SIDTokenizer

if TYPE_CHECKING:
    from sidrec_core.sid.build import SIDConfig

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
