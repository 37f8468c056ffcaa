"""The recommender contract shared by SASRec and the SID language model (after RecBole's
``AbstractRecommender``).

A batch is a dict of tensors. Every recommender reads ``history`` [B, L] (item ids, left-padded
with 0, most recent item last) and may read ``user`` [B]. Trainable models add what their loss
needs (e.g. ``targets`` [B, L]).
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn


class Recommender(nn.Module, abc.ABC):
    """``loss(batch) -> scalar``; ``recommend(batch, k) -> (item_ids [B, k], scores [B, k])``.

    ``item_ids`` are ranked best first; 0 marks an empty slot (fewer than k valid candidates).
    """

    @abc.abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Training loss (scalar) of one batch."""

    @abc.abstractmethod
    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        """Top-k items for each user of the batch, best first."""


def topk_items(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k over item scores [B, N + 1] (column 0 = padding) -> (ids [B, k], scores [B, k])."""
    scores = scores.clone()
    scores[:, 0] = float("-inf")
    k_eff = min(k, scores.shape[1] - 1)
    top_scores, top_ids = torch.topk(scores, k_eff, dim=1)
    if k_eff < k:
        pad = k - k_eff
        top_ids = torch.cat([top_ids, top_ids.new_zeros(top_ids.shape[0], pad)], dim=1)
        top_scores = torch.cat(
            [top_scores, top_scores.new_full((top_scores.shape[0], pad), float("-inf"))], 1
        )
    return top_ids, top_scores
