"""Next-item losses for SASRec, computed on the non-padded positions only (P of them).

- ``bce``: binary cross-entropy of the positive against sampled negatives, as in SASRec
  (Kang & McAuley, 2018).
- ``infonce``: InfoNCE / in-batch softmax (Oord et al., 2018; Yi et al., 2019): the other targets
  of the batch are the negatives, divided by a temperature.
- ``ce``: full softmax over the catalogue, the strong SASRec variant of Klenitskiy & Vasilev
  (2023, "Turning Dross Into Gold Loss"); logits are chunked over positions when asked so
  [P, N] never sits in memory whole.
- ``sampled_softmax``: softmax over the target and sampled negatives, shared by the batch or
  drawn per position (Jean et al., 2015).
- ``bce_shared``: binary cross-entropy of every position against every candidate of the batch
  (its P targets, then K negatives shared by the batch), averaged over all P x (P + K) entries;
  the "bce" of PreferredAI/cornac (``cornac/models/seq_utils/losses.py``, ``bce_loss``), the loss
  of its tuned SASRec. Unlike cornac, an entry whose candidate is the row's own target item
  (a duplicate target or a sampled copy of it) is left out: the same logit cannot be both a
  positive and a negative. Other items of the row's user stay negatives, as in cornac.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from sidrec_core.models.similarity import Similarity

LOSSES = ("bce", "infonce", "ce", "sampled_softmax", "bce_shared")
NEG_INF = float("-inf")


def bce_loss(sim: Similarity, h: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """h [P, D], positive items [P, D], negatives [P, K, D] -> scalar.

    Per position: -log sigmoid(s+) - mean_k log(1 - sigmoid(s-_k)); with K = 1 this is SASRec's.
    """
    pos_score = sim(h, pos[:, None, :])[:, 0]
    neg_score = sim(h, neg)
    return (F.softplus(-pos_score) + F.softplus(neg_score).mean(dim=1)).mean()


def infonce_loss(
    sim: Similarity, h: Tensor, pos: Tensor, targets: Tensor, users: Tensor, temperature: float
) -> Tensor:
    """h [P, D], positives [P, D], target ids [P], user rows [P] -> scalar.

    Row i's positive is column i. A column is no negative of row i when it holds the same item
    (a repeated target would be a false negative) or belongs to the same user (the user's own
    other positives).
    """
    logits = sim(h, pos) / temperature
    not_negative = (targets[:, None] == targets[None, :]) | (users[:, None] == users[None, :])
    not_negative.fill_diagonal_(False)
    logits = logits.masked_fill(not_negative, NEG_INF)
    labels = torch.arange(len(targets), device=h.device)
    return F.cross_entropy(logits, labels)


def _ce_sum(
    sim: Similarity, h: Tensor, items: Tensor, targets: Tensor, bias: Tensor | None
) -> Tensor:
    # score items 1..N only (row 0 is the padding id), so targets shift down by one
    logits = sim(h, items[1:])
    if bias is not None:
        logits = logits + bias[1:]
    return F.cross_entropy(logits, targets - 1, reduction="sum")


def ce_loss(
    sim: Similarity,
    h: Tensor,
    items: Tensor,
    targets: Tensor,
    chunk: int = 0,
    bias: Tensor | None = None,
) -> Tensor:
    """h [P, D], all item representations [N + 1, D] (row 0 = pad), targets [P], optional
    per-item score bias [N + 1] -> scalar.

    With ``chunk`` > 0 and P > chunk, logits are built ``chunk`` positions at a time and
    recomputed in the backward pass (activation checkpointing), so peak memory is
    O(chunk x N) instead of O(P x N).
    """
    if chunk <= 0 or len(targets) <= chunk or not torch.is_grad_enabled():
        return _ce_sum(sim, h, items, targets, bias) / len(targets)
    total = h.new_zeros(())
    for start in range(0, len(targets), chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(
            _ce_sum, sim, h[part], items, targets[part], bias, use_reentrant=False
        )
    return total / len(targets)


def sampled_softmax_loss(
    sim: Similarity, h: Tensor, pos: Tensor, neg: Tensor, neg_valid: Tensor | None = None
) -> Tensor:
    """h [P, D], positives [P, D], negatives shared by all positions [K, D] or per position
    [P, K, D], optional neg_valid [P, K] (False = leave that negative out) -> scalar: the mean
    over positions of -log softmax of the positive among [positive, kept negatives]."""
    return sampled_softmax_scores_loss(sim(h, pos[:, None, :])[:, 0], sim(h, neg), neg_valid)


def sampled_softmax_scores_loss(
    pos_score: Tensor, neg_score: Tensor, neg_valid: Tensor | None = None
) -> Tensor:
    """sampled_softmax from scores already computed: positives [P], negatives [P, K], optional
    neg_valid [P, K] -> scalar."""
    if neg_valid is not None:
        neg_score = neg_score.masked_fill(~neg_valid, NEG_INF)
    logits = torch.cat([pos_score[:, None], neg_score], dim=1)
    return F.cross_entropy(logits, logits.new_zeros(len(logits), dtype=torch.long))


def bce_shared_loss(scores: Tensor, candidates: Tensor, balanced: bool = False) -> Tensor:
    """scores [P, P + K] of P positions against candidate ids [P + K] (the P targets in row
    order, then K shared negatives) -> scalar.

    Entry (i, i) is positive and every other entry negative, except entries whose candidate is
    row i's own target (``candidates[i]``): those are left out of the loss and of the mean.
    Plain: the mean over the kept entries, so a positive weighs 1 / (P + K) of its row (cornac).
    ``balanced``: per row, the positive's term plus the mean of its negatives' terms (a positive
    weighs as much as all its negatives), averaged over rows, as SASRec's own BCE does.
    """
    num_rows = scores.shape[0]
    diag = torch.arange(num_rows, device=scores.device)
    labels = torch.zeros_like(scores)
    labels[diag, diag] = 1.0
    keep = candidates[None, :] != candidates[:num_rows, None]
    keep[diag, diag] = True
    entries = F.binary_cross_entropy_with_logits(scores, labels, reduction="none") * keep
    if not balanced:
        return entries.sum() / keep.sum()
    positive = entries[diag, diag]
    negatives = (entries.sum(dim=1) - positive) / (keep.sum(dim=1) - 1).clamp(min=1)
    return (positive + negatives).mean()
