"""RQ-VAE semantic-ID tokenizer (TIGER, arXiv:2305.05065; RQ-VAE, Lee et al., CVPR 2022) and
RQ-KMeans+ (GPR, Tencent 2025: RQ-KMeans codebooks as a warm start for an encoder wrapped in a
residual connection with a zero-initialised last layer, then trained like the RQ-VAE).

MLP encoder -> :class:`~sidrec_core.sid.quantizer.ResidualQuantizer` (M levels x K codes) -> MLP
decoder, trained with reconstruction + commitment loss and straight-through gradients through
the shared training loop (:func:`sidrec_core.train.fit`). Everything is set by one frozen
:class:`~sidrec_core.sid.config.RQVAEConfig` (``sid.rqvae.*``): ``clip`` (co-purchase InfoNCE on
the latents, see clip.py) and, nested in ``quantizer``, ``sinkhorn``, ``restart_unused``, ``ema``,
``kmeans_init`` (see quantizer.py).

Shapes: x [N, D] item embeddings, z [B, E] latents, codes [N, M].
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec_core.sid.clip import copurchase_pairs, info_nce
from sidrec_core.sid.config import RQVAE_KEY, RQVAEConfig, SIDConfig
from sidrec_core.sid.kmeans import all_distances, check_vectors
from sidrec_core.sid.quantizer import ResidualQuantizer
from sidrec_core.sid.tokenizer import SIDTokenizer
from sidrec_core.train import TrainConfig, fit
from sidrec_core.utils import no_grad_eval


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ResidualMLP(nn.Module):
    """``x + mlp(x)`` with the last layer zero-initialised: the identity at initialisation, so
    codebooks fitted on the inputs are exact for the latents at step 0 (RQ-KMeans+)."""

    def __init__(self, dim: int, hidden_dims: list[int]) -> None:
        super().__init__()
        self.mlp = mlp([dim, *hidden_dims, dim])
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(x)


class RQVAE(SIDTokenizer):
    """RQ-VAE tokenizer; ``fit`` trains it and returns the items' nearest-code SIDs."""

    method = "rqvae"
    config_type = RQVAEConfig
    config_key = "rqvae"

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        *,
        seed: int = 0,
        niter: int = 20,
        cfg: RQVAEConfig = RQVAEConfig(),
    ) -> None:
        super().__init__(dim, num_levels, codebook_size, seed=seed, niter=niter)
        self.cfg = cfg
        torch.manual_seed(seed)  # the same seed builds the same initial weights
        hidden = list(cfg.hidden_dims)
        self.encoder, self.decoder, latent = self._build_coders(dim, hidden, cfg.latent_dim)
        self.quantizer = ResidualQuantizer(num_levels, codebook_size, latent, cfg.quantizer)
        self._generator: torch.Generator | None = None

    @classmethod
    def from_config(cls, cfg: SIDConfig, dim: int, seed: int) -> RQVAE:
        return cls(
            dim, cfg.num_levels, cfg.codebook_size, seed=seed, niter=cfg.kmeans_iters, cfg=cfg.rqvae
        )

    def _build_coders(
        self, dim: int, hidden_dims: list[int], latent_dim: int
    ) -> tuple[nn.Module, nn.Module, int]:
        return (
            mlp([dim, *hidden_dims, latent_dim]),
            mlp([latent_dim, *reversed(hidden_dims), dim]),
            latent_dim,
        )

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _tensor(self, x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

    def latents(self, x: np.ndarray, batch_size: int = 8192) -> Tensor:
        """Encoder outputs for ``x`` [N, D] -> [N, E] (eval mode, no grad)."""
        with no_grad_eval(self):
            xt = self._tensor(x)
            return torch.cat(
                [self.encoder(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
            )

    def loss_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Reconstruction, VQ (+ CLIP) losses of one batch ``{"x": [B, D]}`` (``"a"``, ``"b"``
        [P, D] paired items when CLIP is on)."""
        cfg = self.cfg
        z = self.encoder(batch["x"])
        z_q, _, vq = self.quantizer(z, beta=cfg.beta)
        terms = {"recon": F.mse_loss(self.decoder(z_q), batch["x"]), "vq": vq}
        if cfg.clip and "a" in batch:
            terms["clip"] = cfg.clip_weight * info_nce(
                self.encoder(batch["a"]), self.encoder(batch["b"]), cfg.clip_temperature
            )
        return terms

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        # restart after the previous optimiser step, from the previous batch's residuals
        self.quantizer.restart_dead(self._generator)
        return sum(self.loss_terms(batch).values())

    def fit(
        self,
        x: np.ndarray,
        *,
        train_sequences: list[np.ndarray] | None = None,
        device: str = "cpu",
        **context: Any,
    ) -> np.ndarray:
        """Train on ``x`` [N, D] (CLIP pairs from ``train_sequences``) -> codes int64 [N, M]."""
        cfg = self.cfg
        x = check_vectors(x, self.codebook_size)
        self.to(device)
        pairs = None
        if cfg.clip:
            if train_sequences is None:
                raise ValueError(
                    f"{RQVAE_KEY}.clip=true needs the training sequences for co-purchases"
                )
            pairs = torch.as_tensor(copurchase_pairs(train_sequences, cfg.clip_window) - 1)
            if len(pairs) == 0:
                raise ValueError(f"{RQVAE_KEY}.clip=true but the training sequences hold no pairs")
        batch_size = min(cfg.batch_size, len(x))
        if cfg.quantizer.kmeans_init:
            self.quantizer.init_from_data(
                self.latents(x).cpu().numpy(), batch_size, seed=self.seed, niter=self.niter
            )
        xt = self._tensor(x)
        self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        shuffle = torch.Generator().manual_seed(self.seed)

        def batches(epoch: int):
            order = torch.randperm(len(xt), generator=shuffle)
            # drop the ragged tail: a tiny last batch would skew the usage EMA
            for i in range(0, len(xt) - batch_size + 1, batch_size):
                batch = {"x": xt[order[i : i + batch_size]]}
                if pairs is not None:
                    pick = pairs[torch.randint(len(pairs), (batch_size,), generator=shuffle)]
                    batch["a"], batch["b"] = xt[pick[:, 0]], xt[pick[:, 1]]
                yield batch

        def validate() -> dict[str, float]:
            codes = self.encode(x)
            return {"valid/neg_recon_mse": -self.reconstruction_mse(x, codes)}

        train = TrainConfig(
            epochs=cfg.epochs,
            batch_size=batch_size,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            eval_every=cfg.epochs,
            patience=0,
            monitor="valid/neg_recon_mse",
        )
        fit(
            self,
            batches,
            validate,
            train,
            device=self.device,
            steps_per_epoch=len(xt) // batch_size,
        )
        self.quantizer._residuals = []
        return self.encode(x)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest code per level of the encoder output: ``x`` [N, D] -> int64 [N, M]."""
        z = self.latents(check_vectors(x, 2))
        return self.quantizer.encode(z).cpu().numpy().astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """codes [N, M] -> reconstructed embeddings float32 [N, D]."""
        with no_grad_eval(self):
            z_q = self.quantizer.lookup(torch.as_tensor(codes, device=self.device))
            return self.decoder(z_q).cpu().numpy().astype(np.float32)

    def last_level_distances(self, x: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Latent residual after M - 1 levels to every last-level code -> float32 [N, K]."""
        z = self.latents(x)
        with torch.no_grad():
            c = torch.as_tensor(codes, device=self.device)
            books = self.quantizer.codebooks.detach()
            residual = z - sum(
                (books[m][c[:, m]] for m in range(self.num_levels - 1)), torch.zeros_like(z)
            )
        return all_distances(residual.cpu().numpy(), books[-1].cpu().numpy())


class RQKMeansPlus(RQVAE):
    """RQ-KMeans+: identity-initialised residual encoder/decoder in the input space (E = D),
    codebooks warm-started by residual k-means on the inputs (``kmeans_init`` is the method)."""

    method = "rqkmeans_plus"

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        *,
        seed: int = 0,
        niter: int = 20,
        cfg: RQVAEConfig = RQVAEConfig(),
    ) -> None:
        if not cfg.quantizer.kmeans_init:
            raise ValueError(
                f"{RQVAE_KEY}.quantizer.kmeans_init=false contradicts sid.method=rqkmeans_plus, "
                "whose codebooks are warm-started from RQ-KMeans"
            )
        cfg = dataclasses.replace(cfg, latent_dim=dim)  # the residual encoder keeps the input space
        super().__init__(dim, num_levels, codebook_size, seed=seed, niter=niter, cfg=cfg)

    def _build_coders(
        self, dim: int, hidden_dims: list[int], latent_dim: int
    ) -> tuple[nn.Module, nn.Module, int]:
        return ResidualMLP(dim, hidden_dims), ResidualMLP(dim, hidden_dims), dim
