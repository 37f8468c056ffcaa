"""Negative samplers for the losses that sample (``bce``, ``sampled_softmax``, ``bce_shared``).

- ``uniform``: every item equally likely (SASRec, Kang & McAuley, 2018).
- ``popular``: probability proportional to the item's training-split frequency to a power
  ``alpha`` (word2vec's unigram^0.75 trick, Mikolov et al., 2013; popularity-biased negatives as in
  Rendle & Freudenthaler, 2014). Frequencies come from :meth:`LeaveOneOut.train_item_counts`,
  never from the item id, and never from validation or test targets.
- ``mixed``: each draw is popular with probability ``popular_ratio`` and uniform otherwise.

A user's own positives (the items of their training sequence) are never returned: draws that hit
one are re-drawn. :meth:`NegativeSampler.draw` is the exception: one pool for a whole batch
(``bce_shared``), drawn without looking at users, as PreferredAI/cornac's session iterator does
(``cornac/models/seq_utils/iterators.py``); the loss then decides what counts as a negative.
Items with no training interaction are never drawn by ``popular`` (their weight is 0).
"""

from __future__ import annotations

import numpy as np

NEGATIVES = ("uniform", "popular", "mixed")
MAX_REDRAWS = 100


class NegativeSampler:
    """Draws item ids 1..N excluding each user's positives.

    ``item_counts`` [N + 1] (index 0 = padding), ``user_positives[u]`` = item ids of user row u.
    """

    def __init__(
        self,
        name: str,
        item_counts: np.ndarray,
        user_positives: list[np.ndarray],
        num_negatives: int = 1,
        alpha: float = 1.0,
        popular_ratio: float = 0.3,
        seed: int = 0,
    ):
        if name not in NEGATIVES:
            raise ValueError(
                f"sasrec.negatives: unknown {name!r}; valid choices: {', '.join(NEGATIVES)}"
            )
        self.num_items = len(item_counts) - 1
        if num_negatives > self.num_items:
            raise ValueError(
                f"sasrec.num_negatives ({num_negatives}) exceeds the catalogue "
                f"({self.num_items} items)"
            )
        if not 0.0 <= popular_ratio <= 1.0:
            raise ValueError(f"sasrec.popular_ratio must be in [0, 1], got {popular_ratio}")
        self.name, self.num_negatives, self.popular_ratio = name, num_negatives, popular_ratio
        self.rng = np.random.default_rng(seed)
        weights = np.asarray(item_counts[1:], dtype=np.float64) ** alpha
        weights[np.asarray(item_counts[1:]) <= 0] = 0.0  # 0 ** alpha is 1 for alpha = 0
        if name != "uniform" and weights.sum() <= 0:
            raise ValueError("popular negatives need training interactions; all item counts are 0")
        self.probs = weights / max(weights.sum(), 1e-300)  # [N], probs[i - 1] = P(item i)
        self._cdf = np.cumsum(self.probs)
        # sorted keys user * (N + 1) + item make "is this a positive of that user" one searchsorted
        keys = [u * (self.num_items + 1) + np.unique(p) for u, p in enumerate(user_positives)]
        self._positive_keys = np.sort(np.concatenate(keys)) if keys else np.zeros(0, np.int64)

    def state_dict(self) -> dict:
        """The generator state (draws advance it; a resumed run restores it)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether ``items[..]`` is a positive of ``users[..]`` (broadcast) -> bool array."""
        query = np.asarray(users, dtype=np.int64) * (self.num_items + 1) + np.asarray(items)
        if not len(self._positive_keys):
            return np.zeros(query.shape, dtype=bool)
        idx = np.minimum(np.searchsorted(self._positive_keys, query), len(self._positive_keys) - 1)
        return self._positive_keys[idx] == query

    def _draw(self, size: int, scheme: str) -> np.ndarray:
        if scheme == "uniform":
            return self.rng.integers(1, self.num_items + 1, size=size)
        if scheme == "popular":
            u = self.rng.random(size) * self._cdf[-1]
            return np.minimum(np.searchsorted(self._cdf, u, side="right"), self.num_items - 1) + 1
        popular = self.rng.random(size) < self.popular_ratio
        out = self._draw(size, "uniform")
        out[popular] = self._draw(int(popular.sum()), "popular")
        return out

    def draw(self, k: int) -> np.ndarray:
        """``k`` item ids [k] in 1..N from the sampler's scheme, with replacement, unfiltered."""
        return self._draw(k, self.name)

    def sample(self, users: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Negatives [B, *shape] for users [B]; none is a positive of its row's user."""
        users = np.asarray(users, dtype=np.int64)
        full = (len(users), *shape)
        owner = np.broadcast_to(users.reshape((-1,) + (1,) * len(shape)), full).ravel()
        out = self._draw(owner.size, self.name)
        bad = np.flatnonzero(self.is_positive(owner, out))
        for attempt in range(MAX_REDRAWS):
            if not len(bad):
                return out.reshape(full)
            # a user owning most popular items could loop forever: late redraws go uniform
            scheme = self.name if attempt < MAX_REDRAWS // 2 else "uniform"
            out[bad] = self._draw(len(bad), scheme)
            bad = bad[self.is_positive(owner[bad], out[bad])]
        raise ValueError(
            f"could not draw negatives outside the positives of user rows "
            f"{np.unique(owner[bad])[:5].tolist()}: they own almost the whole catalogue"
        )


def shared_negatives(
    sampler: NegativeSampler, users: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """One set of ``k`` negatives for a whole batch (sampled softmax) -> (items [k],
    valid [B, k]); ``valid`` is False where an item is a positive of that row's user."""
    items = sampler.draw(k)
    valid = ~sampler.is_positive(np.asarray(users)[:, None], items[None, :])
    return items, valid
