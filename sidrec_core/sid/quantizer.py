"""Residual vector quantiser whose techniques are the flags of one frozen
:class:`~sidrec_core.sid.config.QuantizerConfig` (``sid.rqvae.quantizer.*``; after lucidrains'
vector-quantize-pytorch ``VectorQuantize`` / ``ResidualVQ``). Every piece of state is a registered
buffer (or the codebook parameter), so ``state_dict`` round-trips the quantiser exactly.

- ``ema`` (VQ-VAE-2, Razavi et al. 2019, appendix): codebooks follow exponential moving averages of
  cluster sizes and member sums, with Laplace smoothing; no codebook gradient.
- ``restart_unused`` (Jukebox, Dhariwal et al. 2020): codes whose EMA cluster size drops below a
  threshold are replaced by randomly drawn, slightly noised residuals of the current batch.
- ``sinkhorn`` (balanced assignment as in SwAV, Caron et al. 2020, used for SIDs by
  TIGER-style tokenizers, e.g. ETEGRec/LETTER): in training, standardised distances go through
  Sinkhorn-Knopp iterations and the argmax of the balanced plan is the code; at inference the
  plain nearest code.
- k-means initialisation (:meth:`init_from_data`, TIGER, arXiv:2305.05065): residual k-means
  (faiss) sets every level's codebook before training.

Shapes: z [B, E], codebooks [M, K, E], codes [B, M].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec_core.sid.config import QuantizerConfig
from sidrec_core.sid.kmeans import residual_kmeans

# restarted codes: a picked residual + this fraction of the batch's residual spread as noise
RESTART_NOISE = 0.01
# Laplace smoothing of the EMA cluster sizes: an empty code never divides by zero
LAPLACE_EPS = 1e-5


def sinkhorn_codes(dist: Tensor, epsilon: float, iters: int) -> Tensor:
    """Balanced assignment: distances [B, K] -> codes [B] (argmax of the Sinkhorn plan whose
    rows sum to 1/B and columns to 1/K)."""
    d = (dist - dist.mean()) / (dist.std() + 1e-8)
    log_q = -d / epsilon
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True)  # equal mass per code
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # one unit per item
    return log_q.argmax(dim=1)


class ResidualQuantizer(nn.Module):
    """M levels of K codes over E-dimensional latents, techniques set by ``cfg``."""

    def __init__(
        self,
        num_levels: int,
        codebook_size: int,
        dim: int,
        cfg: QuantizerConfig = QuantizerConfig(),
    ) -> None:
        super().__init__()
        self.num_levels, self.codebook_size, self.dim = num_levels, codebook_size, dim
        self.cfg = cfg
        init = torch.empty(num_levels, codebook_size, dim)
        nn.init.kaiming_uniform_(init)
        if cfg.ema:  # moved by moving averages only: a buffer, invisible to the optimiser
            self.register_buffer("codebooks", init)
        else:
            self.codebooks = nn.Parameter(init)
        # usage EMA: drives dead-code restarts (and the EMA codebook update)
        self.register_buffer("cluster_size", torch.ones(num_levels, codebook_size))
        self.register_buffer("embed_sum", init.clone())
        self._residuals: list[Tensor] = []

    @torch.no_grad()
    def init_from_data(
        self, z: np.ndarray, batch_size: int, seed: int = 0, niter: int = 20
    ) -> np.ndarray:
        """Residual k-means on latents ``z`` [N, E]; sets codebooks and usage -> codes [N, M]."""
        _, codebooks, codes = residual_kmeans(
            z, self.num_levels, self.codebook_size, seed=seed, niter=niter
        )
        self.set_codebooks(torch.from_numpy(codebooks), torch.from_numpy(codes), batch_size)
        return codes

    @torch.no_grad()
    def set_codebooks(
        self, codebooks: Tensor, codes: Tensor | None = None, batch_size: int = 1
    ) -> None:
        """Install codebooks [M, K, E]; ``codes`` [N, M] (if given) seed the usage statistics
        at the scale of a ``batch_size`` batch."""
        self.codebooks.data.copy_(codebooks.to(self.codebooks))
        if codes is not None:
            counts = torch.stack(
                [
                    torch.bincount(codes[:, m], minlength=self.codebook_size)
                    for m in range(self.num_levels)
                ]
            ).to(self.cluster_size)
            # per-batch scale: the EMA tracks members per batch, not per dataset
            self.cluster_size.copy_(counts / counts.sum(1, keepdim=True) * batch_size)
        self.embed_sum.copy_(self.codebooks.data * self.cluster_size[..., None])

    def distances(self, residual: Tensor, level: int) -> Tensor:
        """Squared L2 of residual [B, E] to level ``level``'s codes -> [B, K]."""
        return torch.cdist(residual, self.codebooks[level].detach()).pow(2)

    def forward(self, z: Tensor, beta: float = 0.25):
        """Quantise ``z`` [B, E] -> (z_q [B, E] with straight-through gradient, codes [B, M],
        VQ loss: commitment ``beta`` + codebook loss (gradient codebooks only, weighted by
        ``cfg.codebook_weight``, 1 when unset))."""
        cfg = self.cfg
        codebook_weight = 1.0 if cfg.codebook_weight is None else cfg.codebook_weight
        residual, z_q = z, torch.zeros_like(z)
        codes, loss = [], z.new_zeros(())
        self._residuals = []
        for level in range(self.num_levels):
            with torch.no_grad():
                dist = self.distances(residual, level)
                if self.training and cfg.sinkhorn:
                    code = sinkhorn_codes(dist, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters)
                else:
                    code = dist.argmin(dim=1)
            q = self.codebooks[level][code]
            loss = loss + beta * F.mse_loss(residual, q.detach())
            if not cfg.ema:
                loss = loss + codebook_weight * F.mse_loss(q, residual.detach())
            if self.training:
                self._track(level, residual.detach(), code)
            codes.append(code)
            z_q = z_q + q
            residual = residual - q.detach()
        z_q = z + (z_q - z).detach()  # straight-through: decoder gradient reaches the encoder
        return z_q, torch.stack(codes, dim=1), loss

    @torch.no_grad()
    def _track(self, level: int, residual: Tensor, code: Tensor) -> None:
        """Update usage EMA (and the EMA codebook); remember residuals for restarts."""
        onehot = F.one_hot(code, self.codebook_size).to(residual.dtype)
        decay = self.cfg.ema_decay
        self.cluster_size[level].mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        self._residuals.append(residual)
        if self.cfg.ema:
            self.embed_sum[level].mul_(decay).add_(onehot.T @ residual, alpha=1 - decay)
            n = self.cluster_size[level].sum()
            eps = LAPLACE_EPS
            smoothed = (self.cluster_size[level] + eps) / (n + self.codebook_size * eps) * n
            self.codebooks[level].copy_(self.embed_sum[level] / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, generator: torch.Generator | None = None) -> int:
        """Replace codes used less than ``cfg.restart_threshold`` (EMA members per batch) by
        noised residuals of the last training batch; returns how many codes were restarted."""
        if not self.cfg.restart_unused or not self._residuals:
            return 0
        threshold, restarted = self.cfg.restart_threshold, 0
        for level, residual in enumerate(self._residuals):
            dead = torch.nonzero(self.cluster_size[level] < threshold).flatten()
            if len(dead) == 0:
                continue
            pick = torch.randint(
                len(residual), (len(dead),), generator=generator, device=residual.device
            )
            noise = torch.randn(len(dead), self.dim, generator=generator, device=residual.device)
            new = residual[pick] + RESTART_NOISE * residual.std() * noise
            self.codebooks.data[level, dead] = new
            # a grace period: twice the threshold decays below it only after ~70 empty steps
            self.cluster_size[level, dead] = 2.0 * threshold
            self.embed_sum[level, dead] = new * 2.0 * threshold
            restarted += len(dead)
        self._residuals = []
        return restarted

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Nearest code per level (no Sinkhorn): z [B, E] -> codes [B, M]."""
        residual, codes = z, []
        for level in range(self.num_levels):
            code = self.distances(residual, level).argmin(dim=1)
            codes.append(code)
            residual = residual - self.codebooks[level][code]
        return torch.stack(codes, dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Sum of the chosen codes: codes [B, M] -> z_q [B, E]."""
        return sum(self.codebooks[m][codes[:, m]] for m in range(self.num_levels))
