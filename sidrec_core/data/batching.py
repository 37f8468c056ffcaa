"""Training batches for next-item models (SASRec, Kang & McAuley, 2018), in two row layouts.

From a user's training sequence s_1..s_m (:attr:`LeaveOneOut.train_sequences`, i.e. without the
validation and test targets):

- ``sequence`` rows (the SASRec paper's): one row per user, input s_1..s_{m-1} with a target at
  every position, the next item s_2..s_m, both capped at the ``max_history`` most recent
  positions and left-padded with 0 like the evaluation histories.
- ``prefix`` rows (PreferredAI/cornac ``session_seq_iter``; RecBole's sequence augmentation): one
  row per target s_{t+1}, t = 1..m-1, input the prefix s_1..s_t (its last ``max_history``
  items, left-padded) with the target at the last position only. Every row then ends in the
  slot the evaluation history ends in, and targets beyond the ``max_history`` window count too;
  the encoder sees ~8.6x the tokens of ``sequence`` rows on Beauty. Rows are shuffled across
  users, where cornac fills a batch with consecutive prefixes of shuffled sessions (~57 users in
  512 rows on Beauty), which matters to losses that use the batch's other targets as negatives.

Users whose training sequence has a single item give no target and are skipped (the data layer
already dropped sequences shorter than 3).

Most sequences are far shorter than ``max_history`` (Beauty: ~6 targets per user against a cap of
50), so padding would dominate the compute. With ``bucket_window`` > 0, each window of that many
batches is sorted by length before it is cut into batches, and the batch order is shuffled (the
"bucketing" of NMT batchers, e.g. fairseq); batches are then cropped to their longest row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from sidrec_core.data.negatives import NegativeSampler, shared_negatives
from sidrec_core.data.split import LeaveOneOut, pad_left

if TYPE_CHECKING:
    from sidrec_core.models.sasrec import SASRecConfig

NegativesMode = Literal[
    "none", "per_position", "per_position_unfiltered", "shared", "shared_unfiltered"
]
RowLayout = Literal["sequence", "prefix"]
ROW_LAYOUTS = ("sequence", "prefix")


class TrainBatches:
    """``batches(epoch)`` -> shuffled batch dicts with

    ``history`` [B, L] input items, ``targets`` [B, L] next items (0 = no target; ``prefix`` rows
    have one, in the last column), ``user`` [B] user rows (for excluding a user's positives;
    ``prefix`` rows of one user share it), and, by ``negatives_mode``, ``negatives``
    [B, L, K] (``per_position``: none a positive of the row's user; ``per_position_unfiltered``:
    plain draws with replacement, the row's own items included), ``negatives`` [K] +
    ``negative_valid`` [B, K] (``shared``), or ``negatives`` [K] alone (``shared_unfiltered``:
    one pool for the batch, no per-user check).
    """

    def __init__(
        self,
        train_sequences: list[np.ndarray],
        max_history: int,
        batch_size: int,
        seed: int = 0,
        sampler: NegativeSampler | None = None,
        negatives_mode: NegativesMode = "none",
        num_negatives: int = 1,
        bucket_window: int = 0,
        rows: RowLayout = "sequence",
    ):
        if negatives_mode != "none" and sampler is None:
            raise ValueError(f"negatives_mode={negatives_mode!r} needs a NegativeSampler")
        if rows not in ROW_LAYOUTS:
            raise ValueError(f"rows: unknown {rows!r}; valid choices: {', '.join(ROW_LAYOUTS)}")
        users = np.flatnonzero([len(s) >= 2 for s in train_sequences])
        if rows == "sequence":
            self.users = users.astype(np.int64)
            self.histories = pad_left([train_sequences[u][:-1] for u in users], max_history)
            self.targets = pad_left([train_sequences[u][1:] for u in users], max_history)
        else:
            counts = np.array([len(train_sequences[u]) - 1 for u in users], dtype=np.int64)
            self.users = np.repeat(users, counts).astype(np.int64)
            self.histories = pad_left(
                [train_sequences[u][:t] for u in users for t in range(1, len(train_sequences[u]))],
                max_history,
            )
            self.targets = np.zeros_like(self.histories)
            self.targets[:, -1] = np.concatenate([train_sequences[u][1:] for u in users])
        self.lengths = (self.histories > 0).sum(axis=1)
        self.batch_size, self.seed, self.bucket_window = batch_size, seed, bucket_window
        self.sampler, self.negatives_mode, self.num_negatives = (
            sampler,
            negatives_mode,
            num_negatives,
        )

    def state_dict(self) -> dict:
        """Batch order is a function of (seed, epoch); only the sampler's generator moves on."""
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])

    @property
    def num_positions(self) -> int:
        return int((self.targets > 0).sum())

    def __len__(self) -> int:
        return -(-len(self.users) // self.batch_size)

    def batch_rows(self, epoch: int) -> list[np.ndarray]:
        """Row indices of each batch of ``epoch`` (seeded by seed and epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.users))
        if self.bucket_window > 0:
            window = self.bucket_window * self.batch_size
            order = np.concatenate(
                [
                    chunk[np.argsort(self.lengths[chunk], kind="stable")]
                    for chunk in np.split(order, range(window, len(order), window))
                ]
            )
        rows = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.bucket_window > 0:
            rows = [rows[i] for i in rng.permutation(len(rows))]
        return rows

    def __call__(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        for idx in self.batch_rows(epoch):
            history, targets = self.histories[idx], self.targets[idx]
            # drop columns that are padding in every row: attention cost follows the batch
            width = int(self.lengths[idx].max())
            batch = {
                "history": torch.from_numpy(history[:, -width:].copy()),
                "targets": torch.from_numpy(targets[:, -width:].copy()),
                "user": torch.from_numpy(self.users[idx]),
            }
            if self.negatives_mode == "per_position":
                neg = self.sampler.sample(self.users[idx], (width, self.num_negatives))
                batch["negatives"] = torch.from_numpy(neg)
            elif self.negatives_mode == "per_position_unfiltered":
                neg = self.sampler.draw(len(idx) * width * self.num_negatives)
                batch["negatives"] = torch.from_numpy(neg.reshape(len(idx), width, -1))
            elif self.negatives_mode == "shared":
                neg, valid = shared_negatives(self.sampler, self.users[idx], self.num_negatives)
                batch["negatives"] = torch.from_numpy(neg)
                batch["negative_valid"] = torch.from_numpy(valid)
            elif self.negatives_mode == "shared_unfiltered":
                batch["negatives"] = torch.from_numpy(self.sampler.draw(self.num_negatives))
            yield batch


def training_batches(cfg: SASRecConfig, loo: LeaveOneOut, seed: int) -> TrainBatches:
    """SASRec's training batches, with the negatives ``cfg.loss`` needs (none for ce and
    infonce)."""
    k = cfg.negatives_per_step
    sampler = None
    if k and cfg.loss == "bce_shared":
        # draws with replacement (NegativeSampler.draw), so k may exceed the catalogue
        sampler = NegativeSampler(
            "popular",
            loo.train_item_counts(),
            loo.train_sequences,
            alpha=cfg.bce_shared_alpha,
            seed=seed,
        )
    elif k:
        sampler = NegativeSampler(
            cfg.negatives,
            loo.train_item_counts(),
            loo.train_sequences,
            num_negatives=k,
            alpha=cfg.popularity_alpha,
            popular_ratio=cfg.popular_ratio,
            seed=seed,
        )
    modes = {"bce": "per_position", "sampled_softmax": "shared", "bce_shared": "shared_unfiltered"}
    mode = modes.get(cfg.loss, "none") if k else "none"
    if mode != "none" and cfg.loss == "sampled_softmax":
        filtered = cfg.ss_exclude == "user"
        mode = {
            ("shared", True): "shared",
            ("shared", False): "shared_unfiltered",
            ("per_position", True): "per_position",
            ("per_position", False): "per_position_unfiltered",
        }[(cfg.ss_sharing, filtered)]
    return TrainBatches(
        loo.train_sequences,
        cfg.max_history,
        cfg.train.batch_size,
        seed=seed,
        sampler=sampler,
        negatives_mode=mode,
        num_negatives=k,
        bucket_window=cfg.bucket_window,
        rows=cfg.train_rows,
    )
