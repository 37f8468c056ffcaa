"""Collision resolution: pure functions from raw codes [N, M] to final codes, no I/O.

- ``suffix`` (TIGER, arXiv:2305.05065): append a de-duplication level numbering the items that
  share a SID (0, 1, 2, ...); with ``max_per_bucket = c`` every ``c`` items share a suffix code.
- ``knn``: cap every full SID at ``max_per_bucket`` items; the members closest to the code stay,
  the overflow moves to the nearest last-level code (by the tokenizer's own distances) that still
  has room under the same prefix (as in LC-Rec/LETTER-style re-assignment, without a new level).
  When a whole prefix has more items than K x max_per_bucket slots, the rest spill to a sibling
  prefix (the longest prefix with room is kept).
- ``random``: the same cap, overflow moved to uniformly random free last-level codes (seeded).

All three are deterministic for a given seed.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Collision = Literal["suffix", "knn", "random"]


def group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``codes`` [N, M] -> (bucket id per item [N], bucket sizes [G])."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def resolve_suffix(codes: np.ndarray, max_per_bucket: int = 1) -> np.ndarray:
    """Append a de-duplication level: codes [N, M] -> [N, M + 1] (rank within the SID group,
    by item order, divided by ``max_per_bucket``)."""
    _check_cap(max_per_bucket)
    inverse, _ = group_ids(codes)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank = np.empty(len(codes), dtype=np.int64)
    rank[order] = np.arange(len(order)) - group_start
    return np.concatenate([codes, (rank // max_per_bucket)[:, None]], axis=1).astype(np.int64)


def resolve_capped(
    codes: np.ndarray,
    codebook_size: int,
    max_per_bucket: int = 1,
    *,
    distances: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cap each full SID at ``max_per_bucket`` items by moving overflow to other last-level codes
    under the same prefix. ``distances`` [N, K] (item -> last-level code) gives ``knn``; ``None``
    gives ``random``. Returns new codes [N, M] (same shape)."""
    _check_cap(max_per_bucket)
    codes = np.array(codes, dtype=np.int64, copy=True)
    num_items, num_levels = codes.shape
    if distances is not None and distances.shape != (num_items, codebook_size):
        raise ValueError(
            f"distances must be [N, K] = [{num_items}, {codebook_size}], got {distances.shape}"
        )
    rng = np.random.default_rng(seed)
    prefix_ids, prefix_sizes = (
        group_ids(codes[:, :-1])
        if num_levels > 1
        else (np.zeros(num_items, dtype=np.int64), np.array([num_items]))
    )
    sid_ids, sid_sizes = group_ids(codes)
    crowded_prefixes = np.unique(prefix_ids[sid_sizes[sid_ids] > max_per_bucket])
    order = np.argsort(prefix_ids, kind="stable")
    bounds = np.searchsorted(prefix_ids[order], [crowded_prefixes, crowded_prefixes + 1])
    stuck: list[int] = []
    for start, stop in zip(bounds[0], bounds[1], strict=True):
        members = order[start:stop]
        stuck += _spread(codes, members, codebook_size, max_per_bucket, distances, rng)
    if stuck:
        _spill(codes, stuck, codebook_size, max_per_bucket, distances, rng)
    return codes


def _spread(
    codes: np.ndarray,
    members: np.ndarray,
    codebook_size: int,
    cap: int,
    distances: np.ndarray | None,
    rng: np.random.Generator,
) -> list[int]:
    """Within one prefix group (``members`` item indices), cap last-level buckets in place.

    Returns the items left over when the prefix has more members than K x cap slots."""
    last = codes[members, -1]
    load = np.bincount(last, minlength=codebook_size)
    overflow: list[int] = []
    for code in np.flatnonzero(load > cap):
        in_bucket = members[last == code]
        if distances is not None:  # the members closest to the code keep it
            in_bucket = in_bucket[np.argsort(distances[in_bucket, code], kind="stable")]
        else:
            in_bucket = rng.permutation(in_bucket)
        overflow.extend(int(i) for i in in_bucket[cap:])
        load[code] = cap
    if distances is not None:
        # place the items with the strongest second choice first, so near items are not displaced
        overflow.sort(key=lambda i: (float(np.partition(distances[i], 1)[1]), i))
    for n, item in enumerate(overflow):
        free = np.flatnonzero(load < cap)
        if len(free) == 0:
            return overflow[n:]
        if distances is not None:
            choice = free[np.argmin(distances[item, free])]
        else:
            choice = free[rng.integers(len(free))]
        codes[item, -1] = choice
        load[choice] += 1
    return []


def _spill(
    codes: np.ndarray,
    items: list[int],
    codebook_size: int,
    cap: int,
    distances: np.ndarray | None,
    rng: np.random.Generator,
    tries: int = 64,
) -> None:
    """Items whose whole prefix is full move to a sibling prefix: keep the longest prefix that
    still has room, draw the codes below it at random (seeded) and, for ``knn``, take the nearest
    free last-level code there."""
    num_levels = codes.shape[1]
    load: dict[tuple[int, ...], int] = {}
    for row in map(tuple, codes.tolist()):
        load[row] = load.get(row, 0) + 1
    for item in items:
        old = tuple(codes[item].tolist())
        for keep in range(num_levels - 2, -1, -1):
            placed = False
            for _ in range(tries):
                middle = rng.integers(codebook_size, size=num_levels - 1 - keep).tolist()
                head = list(codes[item, :keep]) + middle
                free = [c for c in range(codebook_size) if load.get((*head, c), 0) < cap]
                if not free:
                    continue
                last = (
                    min(free, key=lambda c: distances[item, c])
                    if distances is not None
                    else free[rng.integers(len(free))]
                )
                new = (*head, int(last))
                load[old] -= 1
                load[new] = load.get(new, 0) + 1
                codes[item] = new
                placed = True
                break
            if placed:
                break
        else:
            raise ValueError(
                f"sid.max_per_bucket={cap}: no free SID left for item row {item}; "
                "raise sid.max_per_bucket or use sid.collision=suffix"
            )


def resolve(
    codes: np.ndarray,
    mode: Collision,
    codebook_size: int,
    max_per_bucket: int = 1,
    *,
    distances: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Dispatch on ``mode`` (``sid.collision``): codes [N, M] -> [N, M] or [N, M + 1]."""
    if mode == "suffix":
        return resolve_suffix(codes, max_per_bucket)
    if mode == "knn":
        if distances is None:
            raise ValueError("sid.collision=knn needs the tokenizer's last-level distances")
        return resolve_capped(codes, codebook_size, max_per_bucket, distances=distances, seed=seed)
    if mode == "random":
        return resolve_capped(codes, codebook_size, max_per_bucket, distances=None, seed=seed)
    raise ValueError(f"sid.collision: expected suffix, knn or random, got {mode!r}")


def _check_cap(max_per_bucket: int) -> None:
    if max_per_bucket < 1:
        raise ValueError(f"sid.max_per_bucket must be >= 1, got {max_per_bucket}")
