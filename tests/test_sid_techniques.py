"""Each RQ-VAE technique flag changes behaviour the way it claims, on tiny data (quantizer.py,
rqvae.py, clip.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sidrec_core.sid.clip import copurchase_pairs, info_nce
from sidrec_core.sid.config import QuantizerConfig, RQVAEConfig
from sidrec_core.sid.quantizer import ResidualQuantizer, sinkhorn_codes
from sidrec_core.sid.rqvae import RQVAE

SIZES = dict(num_levels=2, codebook_size=8)
TINY = RQVAEConfig(hidden_dims=(32,), latent_dim=8, batch_size=64)


def _rqvae(**cfg) -> RQVAE:
    """A tiny RQ-VAE (seed 0) with ``cfg`` overriding TINY."""
    return RQVAE(8, **SIZES, seed=0, cfg=dataclasses.replace(TINY, **cfg))


def _blobs(n: int = 256, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 3
    return (centres[rng.integers(8, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def test_restart_revives_a_dead_code():
    z = torch.as_tensor(_blobs())
    results = {}
    for restart in (False, True):
        q = ResidualQuantizer(1, 8, 8, QuantizerConfig(ema=False, restart_unused=restart))
        q.init_from_data(z.numpy(), batch_size=len(z))
        with torch.no_grad():
            q.codebooks[0, 3] = 1e3  # a code no residual will ever pick
        q.cluster_size[0, 3] = 0.5  # and its usage statistics say so
        q.train()
        for _ in range(10):
            q(z)
            q.restart_dead(torch.Generator().manual_seed(0))
        q.eval()
        results[restart] = (q.encode(z)[:, 0] == 3).sum().item()
    assert results[False] == 0  # stays dead without restarts
    assert results[True] > 0  # revived: now some items choose it


def test_ema_moves_codebook_without_a_codebook_gradient():
    z = torch.as_tensor(_blobs()).requires_grad_()
    q = ResidualQuantizer(2, 8, 8, QuantizerConfig(ema=True, restart_unused=False))
    assert not any(p is q.codebooks for p in q.parameters())  # a buffer, not optimised
    before = q.codebooks.clone()
    q.train()
    z_q, _, loss = q(z)
    (loss + z_q.sum()).backward()
    assert not q.codebooks.requires_grad and q.codebooks.grad is None
    assert not torch.allclose(before, q.codebooks)  # moved by the moving averages
    assert z.grad is not None  # the encoder still learns (commitment + straight-through)
    # the gradient-learned variant instead gets a codebook gradient and no in-place move
    g = ResidualQuantizer(2, 8, 8, QuantizerConfig(ema=False, restart_unused=False))
    before = g.codebooks.detach().clone()
    g.train()
    g(z.detach())[2].backward()
    assert g.codebooks.grad is not None and g.codebooks.grad.abs().sum() > 0
    assert torch.equal(before, g.codebooks.detach())


def test_sinkhorn_balances_assignments_on_a_skewed_set():
    rng = np.random.default_rng(0)
    # 90% of the points sit at one code, the rest spread out
    z = np.concatenate([rng.normal(size=(230, 4)) * 0.1, rng.normal(size=(26, 4)) * 3])
    z = torch.as_tensor(z, dtype=torch.float32)
    q = ResidualQuantizer(1, 8, 4, QuantizerConfig(ema=False, restart_unused=False))
    q.init_from_data(z.numpy(), batch_size=len(z))
    dist = q.distances(z, 0)
    plain = torch.bincount(dist.argmin(1), minlength=8)
    balanced = torch.bincount(sinkhorn_codes(dist, epsilon=0.05, iters=10), minlength=8)
    assert balanced.max() < plain.max()
    assert (balanced > 0).sum() >= (plain > 0).sum()
    # the flag switches it on in training only; inference stays nearest-code
    qs = ResidualQuantizer(
        1, 8, 4, QuantizerConfig(ema=False, restart_unused=False, sinkhorn=True, sinkhorn_iters=10)
    )
    qs.set_codebooks(q.codebooks.detach())
    qs.train()
    assert torch.bincount(qs(z)[1][:, 0], minlength=8).max() < plain.max()
    assert torch.equal(qs.encode(z)[:, 0], dist.argmin(1))


def test_kmeans_init_lowers_initial_reconstruction_loss():
    x = _blobs()
    losses = {}
    for init in (False, True):
        model = _rqvae(quantizer=QuantizerConfig(kmeans_init=init))
        z = model.latents(x)
        if init:
            model.quantizer.init_from_data(z.numpy(), batch_size=64)
        model.quantizer.eval()
        z_q = model.quantizer.lookup(model.quantizer.encode(z))
        losses[init] = torch.mean((z - z_q) ** 2).item()
    assert losses[True] < 0.5 * losses[False]


def test_copurchase_pairs_window_and_order():
    seqs = [np.array([1, 2, 3, 2]), np.array([4])]
    assert copurchase_pairs(seqs, 2).tolist() == [[1, 2], [2, 3]]
    assert copurchase_pairs(seqs, 3).tolist() == [[1, 2], [1, 3], [2, 3]]
    with pytest.raises(ValueError, match="clip_window"):
        copurchase_pairs(seqs, 1)


def test_info_nce_prefers_matching_rows():
    a = torch.eye(4)
    assert info_nce(a, a, 0.1) < info_nce(a, a.roll(1, 0), 0.1)


def test_clip_pulls_paired_items_together():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 8)).astype(np.float32)  # pairs are unrelated in the input space
    seqs = [np.array([2 * i + 1, 2 * i + 2]) for i in range(64)]  # item 2i+1 pairs with 2i+2
    sims = {}
    for clip in (False, True):
        model = _rqvae(epochs=8, clip=clip, clip_weight=1.0, clip_window=2)
        model.fit(x, train_sequences=seqs)
        z = torch.nn.functional.normalize(model.latents(x), dim=1)
        sims[clip] = (z[0::2] * z[1::2]).sum(1).mean().item()
    assert sims[True] > sims[False] + 0.15


def test_clip_needs_training_sequences():
    with pytest.raises(ValueError, match="sid.rqvae.clip"):
        _rqvae(epochs=1, clip=True).fit(_blobs())
