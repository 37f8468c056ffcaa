"""CLIP-style co-purchase alignment for SID tokenizers (CLIP, Radford et al. 2021; used for
collaborative signal in SID learning by LETTER, arXiv:2405.07314, and ETEGRec).

Pairs are items that co-occur within a small window of the *training* sequences only
(``LeaveOneOut.train_sequences``: never a valid/test target). The loss is a symmetric InfoNCE
with in-batch negatives over L2-normalised latents.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def copurchase_pairs(train_sequences: list[np.ndarray], window: int) -> np.ndarray:
    """Distinct unordered item pairs that co-occur within ``window`` positions ->
    int64 [P, 2] of item ids (1..N), smaller id first."""
    if window < 2:
        raise ValueError(
            f"sid.rqvae.clip_window must be >= 2 (pairs need two positions), got {window}"
        )
    chunks = []
    for seq in train_sequences:
        seq = np.asarray(seq, dtype=np.int64)
        for offset in range(1, window):
            if len(seq) > offset:
                chunks.append(np.stack([seq[:-offset], seq[offset:]], axis=1))
    if not chunks:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(chunks)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0)


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE: row i of ``a`` [B, E] should match row i of ``b`` [B, E] against the
    other rows of the batch."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
