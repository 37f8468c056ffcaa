"""Similarity between a sequence state and item representations, for SASRec's scores.

``dot`` is SASRec's (Kang & McAuley, 2018) choice; ``cosine`` and ``scaled`` (dot / sqrt(D), as
in Transformer attention, Vaswani et al., 2017) bound or shrink the logits; ``bilinear`` is
x^T W y; ``adaptive`` learns a fusion ``temperature * (alpha*dot + beta*cosine + gamma*scaled)``
with initial weights 0.5 / 0.3 / 0.2 and temperature 1.0, so training can pick the mixture.

Every similarity scores a state ``h`` [P, D] against either one shared set of items ``e`` [C, D]
(-> [P, C], full ranking and in-batch negatives) or a per-row set ``e`` [P, C, D] (-> [P, C],
a positive plus sampled negatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SIMILARITIES = ("dot", "cosine", "scaled", "bilinear", "adaptive")
ADAPTIVE_INIT = {"alpha": 0.5, "beta": 0.3, "gamma": 0.2, "temperature": 1.0}


def _dot(h: Tensor, e: Tensor) -> Tensor:
    """h [P, D] x e [C, D] -> [P, C], or h [P, D] x e [P, C, D] -> [P, C]."""
    if e.dim() == 2:
        return h @ e.T
    return torch.einsum("pd,pcd->pc", h, e)


class Similarity(nn.Module):
    """One of :data:`SIMILARITIES`; parameters only for ``bilinear`` (W) and ``adaptive``."""

    def __init__(self, name: str, dim: int):
        super().__init__()
        if name not in SIMILARITIES:
            raise ValueError(
                f"sasrec.similarity: unknown {name!r}; valid choices: {', '.join(SIMILARITIES)}"
            )
        self.name = name
        self.dim = dim
        if name == "bilinear":
            # identity start = dot product, so bilinear begins where the baseline does
            self.weight = nn.Parameter(torch.eye(dim))
        if name == "adaptive":
            for key, value in ADAPTIVE_INIT.items():
                setattr(self, key, nn.Parameter(torch.tensor(float(value))))

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        """h [P, D], e [C, D] or [P, C, D] -> scores [P, C]."""
        if self.name == "dot":
            return _dot(h, e)
        if self.name == "scaled":
            return _dot(h, e) / math.sqrt(self.dim)
        if self.name == "cosine":
            return _dot(F.normalize(h, dim=-1), F.normalize(e, dim=-1))
        if self.name == "bilinear":
            return _dot(h @ self.weight, e)
        dot = _dot(h, e)
        cos = _dot(F.normalize(h, dim=-1), F.normalize(e, dim=-1))
        fused = self.alpha * dot + self.beta * cos + self.gamma * dot / math.sqrt(self.dim)
        return self.temperature * fused

    def weights(self) -> dict[str, float]:
        """The adaptive fusion weights and temperature (empty for the fixed similarities)."""
        if self.name != "adaptive":
            return {}
        return {f"similarity/{k}": float(getattr(self, k).detach()) for k in ADAPTIVE_INIT}
