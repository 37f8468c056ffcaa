"""Reference recommenders: MostPop (training-split popularity) and Random (seeded). Neither is
trained by gradient, so they implement only ``recommend`` (the ``baselines`` stage scores them).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sidrec_core.data.split import LeaveOneOut
from sidrec_core.models.base import topk_items


class MostPop:
    """Ranks every item by its interaction count in the training part of the split."""

    def __init__(self, loo: LeaveOneOut):
        self.counts = torch.as_tensor(loo.train_item_counts(), dtype=torch.float32)

    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        scores = self.counts.to(batch["history"].device).expand(batch["history"].shape[0], -1)
        return topk_items(scores, k)


class RandomRec:
    """A uniformly random ranking per user, reproducible for a seed."""

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items = num_items
        self.generator = torch.Generator().manual_seed(seed)

    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        b = batch["history"].shape[0]
        scores = torch.rand(b, self.num_items + 1, generator=self.generator)
        ids, s = topk_items(scores, k)
        return ids.to(batch["history"].device), s.to(batch["history"].device)
