"""RQ-VAE semantic-ID tokenizer (TIGER, arXiv:2305.05065; RQ-VAE, Lee et al., CVPR 2022) and
RQ-KMeans+ (GPR, Tencent 2025: RQ-KMeans codebooks as a warm start for an encoder wrapped in a
residual connection with a zero-initialised last layer, then trained like the RQ-VAE).

MLP encoder -> :class:`~sidrec_core.sid.quantizer.ResidualQuantizer` (M levels x K codes) -> MLP
decoder, trained with reconstruction + commitment loss and straight-through gradients through
the shared training loop (:func:`sidrec_core.train.fit`). Techniques are constructor flags:
``sinkhorn``, ``restart_unused``, ``ema``, ``kmeans_init`` (see quantizer.py) and ``clip``
(co-purchase InfoNCE on the latents, see clip.py).

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
from sidrec_core.sid.kmeans import all_distances, check_vectors
from sidrec_core.sid.quantizer import ResidualQuantizer
from sidrec_core.sid.tokenizer import SIDTokenizer
from sidrec_core.train import TrainConfig, fit
from sidrec_core.utils import no_grad_eval


@dataclasses.dataclass(frozen=True)
class RQVAEFlags:
    """The RQ-VAE technique flags and their knobs (``sid.*``), validated together."""

    sinkhorn: bool = False
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 5
    restart_unused: bool = True
    restart_threshold: float = 1.0
    ema: bool = True
    ema_decay: float = 0.99
    codebook_weight: float | None = None
    kmeans_init: bool = True
    clip: bool = False
    clip_weight: float = 0.1
    clip_temperature: float = 0.07

    def __post_init__(self) -> None:
        """Reject nonsensical technique settings, naming the parameter."""
        if self.ema and self.codebook_weight is not None:
            raise ValueError(
                "sid.codebook_weight applies to gradient-learned codebooks only; with sid.ema=true "
                "the codebook follows exponential moving averages: unset one of them"
            )
        if self.codebook_weight is not None and self.codebook_weight < 0:
            raise ValueError(f"sid.codebook_weight must be >= 0, got {self.codebook_weight}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"sid.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.sinkhorn and (self.sinkhorn_epsilon <= 0 or self.sinkhorn_iters < 1):
            raise ValueError(
                f"sid.sinkhorn_epsilon must be > 0 and sid.sinkhorn_iters >= 1, got "
                f"{self.sinkhorn_epsilon}, {self.sinkhorn_iters}"
            )
        if self.restart_unused and self.restart_threshold <= 0:
            raise ValueError(f"sid.restart_threshold must be > 0, got {self.restart_threshold}")
        if self.clip and (self.clip_weight <= 0 or self.clip_temperature <= 0):
            raise ValueError(
                f"sid.clip=true needs sid.clip_weight > 0 and sid.clip_temperature > 0, got "
                f"{self.clip_weight}, {self.clip_temperature}"
            )


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

    def __init__(
        self,
        dim: int,
        num_levels: int = 3,
        codebook_size: int = 256,
        niter: int = 20,
        seed: int = 0,
        hidden_dims: list[int] | None = None,
        latent_dim: int = 32,
        beta: float = 0.25,
        epochs: int = 150,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        **flags: Any,
    ) -> None:
        f = RQVAEFlags(**flags)  # a technique name the flags lack fails here, naming it
        if num_levels < 1 or codebook_size < 2:
            raise ValueError(
                f"sid.num_levels must be >= 1 and sid.codebook_size >= 2, got {num_levels}, "
                f"{codebook_size}"
            )
        hidden_dims = list(hidden_dims if hidden_dims is not None else [512, 256, 128])
        super().__init__(
            dim=dim,
            num_levels=num_levels,
            codebook_size=codebook_size,
            niter=niter,
            seed=seed,
            hidden_dims=hidden_dims,
            latent_dim=latent_dim,
            beta=beta,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            **dataclasses.asdict(f),
        )
        torch.manual_seed(seed)  # the same seed builds the same initial weights
        self.encoder, self.decoder, latent = self._build_coders(dim, hidden_dims, latent_dim)
        self.quantizer = ResidualQuantizer(
            num_levels,
            codebook_size,
            latent,
            ema=f.ema,
            ema_decay=f.ema_decay,
            restart_unused=f.restart_unused,
            restart_threshold=f.restart_threshold,
            sinkhorn=f.sinkhorn,
            sinkhorn_epsilon=f.sinkhorn_epsilon,
            sinkhorn_iters=f.sinkhorn_iters,
        )
        self._generator: torch.Generator | None = None

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
        kw = self.init_kwargs
        z = self.encoder(batch["x"])
        weight = 1.0 if kw["codebook_weight"] is None else kw["codebook_weight"]
        z_q, _, vq = self.quantizer(z, beta=kw["beta"], codebook_weight=weight)
        terms = {"recon": F.mse_loss(self.decoder(z_q), batch["x"]), "vq": vq}
        if kw["clip"] and "a" in batch:
            terms["clip"] = kw["clip_weight"] * info_nce(
                self.encoder(batch["a"]), self.encoder(batch["b"]), kw["clip_temperature"]
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
        clip_window: int = 3,
        device: str = "cpu",
        **context: Any,
    ) -> np.ndarray:
        """Train on ``x`` [N, D] (CLIP pairs from ``train_sequences``) -> codes int64 [N, M]."""
        kw = self.init_kwargs
        x = check_vectors(x, self.codebook_size)
        self.to(device)
        pairs = None
        if kw["clip"]:
            if train_sequences is None:
                raise ValueError("sid.clip=true needs the training sequences for co-purchases")
            pairs = torch.as_tensor(copurchase_pairs(train_sequences, clip_window) - 1)
            if len(pairs) == 0:
                raise ValueError("sid.clip=true but the training sequences hold no pairs")
        batch_size = min(kw["batch_size"], len(x))
        if kw["kmeans_init"]:
            self.quantizer.init_from_data(
                self.latents(x).cpu().numpy(), batch_size, seed=kw["seed"], niter=kw["niter"]
            )
        xt = self._tensor(x)
        self._generator = torch.Generator(device=self.device).manual_seed(kw["seed"])
        shuffle = torch.Generator().manual_seed(kw["seed"])

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
            epochs=kw["epochs"],
            batch_size=batch_size,
            lr=kw["lr"],
            weight_decay=kw["weight_decay"],
            eval_every=kw["epochs"],
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

    def __init__(self, dim: int, kmeans_init: bool = True, **kwargs: Any) -> None:
        if not kmeans_init:
            raise ValueError(
                "sid.kmeans_init=false contradicts sid.method=rqkmeans_plus, whose codebooks "
                "are warm-started from RQ-KMeans"
            )
        kwargs["latent_dim"] = dim  # the residual encoder keeps the input space
        super().__init__(dim, kmeans_init=True, **kwargs)

    def _build_coders(
        self, dim: int, hidden_dims: list[int], latent_dim: int
    ) -> tuple[nn.Module, nn.Module, int]:
        return ResidualMLP(dim, hidden_dims), ResidualMLP(dim, hidden_dims), dim
