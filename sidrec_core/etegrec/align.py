"""Code distributions with a gradient path to the codebooks, and the two alignment losses.

- ``P(k | v_l) = softmax_k(-||v_l - e^l_k||^2)`` on the residual ``v_l`` of level l, with the
  codebooks *not* detached (the quantiser's own ``distances`` detaches them for assignment).
- SIA: symmetric KL between two inputs' code distributions, summed over levels.
- PSA: symmetric in-batch InfoNCE over cosine similarities (the two directions summed).

Shapes: z [B, E] latents, codebooks [M, K, E], log-probabilities [B, K] per level.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec_core.sid.config import QUANTIZER_KEY, QuantizerConfig
from sidrec_core.sid.quantizer import ResidualQuantizer
from sidrec_core.sid.rqvae import mlp


def check_gradient_quantizer(cfg: QuantizerConfig, prefix: str = QUANTIZER_KEY) -> None:
    """End-to-end training needs codebooks moved by gradients only: EMA updates bypass the
    alignment gradients and dead-code restarts jump codes mid-phase."""
    bad = [f"{prefix}.{k}=true" for k in ("ema", "restart_unused") if getattr(cfg, k)]
    if bad:
        raise ValueError(
            f"etegrec needs gradient-learned codebooks without restarts; set "
            f"{' and '.join(b.replace('=true', '=false') for b in bad)} (got {', '.join(bad)})"
        )


def code_log_probs(quantizer: ResidualQuantizer, z: Tensor) -> list[Tensor]:
    """Per-level log P(k | v_l) for latents ``z`` [B, E] -> M tensors [B, K].

    The residual walks down the levels by the nearest code (an index, no gradient) while the
    subtracted code vectors and the distances keep their gradient to the codebooks and to ``z``.
    """
    books = quantizer.codebooks
    residual, out = z, []
    for level in range(quantizer.num_levels):
        d = (residual[:, None, :] - books[level][None]).pow(2).sum(-1)  # [B, K]
        out.append(F.log_softmax(-d, dim=1))
        code = d.detach().argmin(dim=1)
        residual = residual - books[level][code]
    return out


def sia_loss(log_p: list[Tensor], log_q: list[Tensor]) -> Tensor:
    """Symmetric KL ``KL(p||q) + KL(q||p)`` per level, summed over levels, mean over the batch."""
    total = log_p[0].new_zeros(())
    for lp, lq in zip(log_p, log_q, strict=True):
        kl_pq = (lp.exp() * (lp - lq)).sum(1)
        kl_qp = (lq.exp() * (lq - lp)).sum(1)
        total = total + (kl_pq + kl_qp).mean()
    return total


def psa_loss(a: Tensor, b: Tensor, temperature: float = 0.07) -> Tensor:
    """In-batch InfoNCE of ``a`` [B, D] against ``b`` [B, D] (row i pairs with row i), cosine
    similarities over ``temperature``, the a->b and b->a cross-entropies summed."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    labels = torch.arange(len(a), device=a.device)
    return F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)


class AlignHeads(nn.Module):
    """The recommender-side projections of the state that predicts a target's first code:
    ``sia`` into the tokenizer's latent space (where its code distribution lives, as the
    public code's encoder adapter does) and ``psa`` into the item-embedding space (against the
    tokenizer's reconstruction)."""

    def __init__(self, hidden: int, latent: int, item_dim: int) -> None:
        super().__init__()
        self.sia = mlp([hidden, hidden, latent])
        self.psa = mlp([hidden, hidden, item_dim])
