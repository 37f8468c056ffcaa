"""Leave-one-out split as in P5/TIGER: last item = test target, second-to-last = validation
target, the rest trains. Histories are capped at the ``max_history`` most recent items and
left-padded with 0 so the most recent item is always in the last column.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sidrec_core.data.dataset import Dataset


@dataclasses.dataclass
class Split:
    """Evaluation examples: ``histories`` [U, L] left-padded, ``targets`` [U], ``users`` [U]."""

    name: str
    histories: np.ndarray
    targets: np.ndarray
    users: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


def pad_left(seqs: list[np.ndarray], max_len: int) -> np.ndarray:
    """Keep the last ``max_len`` items of each sequence, left-pad with 0 -> [U, max_len]."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = s[-max_len:]
        if len(tail):
            out[i, max_len - len(tail) :] = tail
    return out


@dataclasses.dataclass
class LeaveOneOut:
    """The split of a dataset. ``train_sequences[u]`` = ``s_1..s_{n-2}``."""

    dataset: Dataset
    train_sequences: list[np.ndarray]

    @property
    def num_items(self) -> int:
        return self.dataset.num_items

    def split(self, name: str, max_history: int) -> Split:
        """``valid``: ``s_1..s_{n-2}`` -> ``s_{n-1}``; ``test``: ``s_1..s_{n-1}`` -> ``s_n``."""
        seqs = self.dataset.sequences
        if name == "valid":
            hist, tgt = [s[:-2] for s in seqs], [s[-2] for s in seqs]
        elif name == "test":
            hist, tgt = [s[:-1] for s in seqs], [s[-1] for s in seqs]
        else:
            raise ValueError(f"split must be 'valid' or 'test', got {name!r}")
        return Split(
            name, pad_left(hist, max_history), np.asarray(tgt, dtype=np.int64), np.arange(len(seqs))
        )

    def train_item_counts(self) -> np.ndarray:
        """Interactions per item id in the training part only -> [N + 1] (index 0 = 0)."""
        counts = np.bincount(np.concatenate(self.train_sequences), minlength=self.num_items + 1)
        counts[0] = 0
        return counts


SUBSAMPLE_SEED = 0  # fixed: every model, seed and trial scores the same validation users


def subsample_rows(n: int, limit: int | None, seed: int = SUBSAMPLE_SEED) -> np.ndarray | None:
    """Sorted rows of a seeded sample of ``limit`` out of ``n`` users; None = every user."""
    if not limit or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def leave_one_out(ds: Dataset) -> LeaveOneOut:
    short = [i for i, s in enumerate(ds.sequences) if len(s) < 3]
    if short:
        raise ValueError(
            f"{len(short)} users have fewer than 3 items (e.g. user index {short[0]}); "
            "load through load_dataset, which drops them"
        )
    return LeaveOneOut(ds, [s[:-2] for s in ds.sequences])
