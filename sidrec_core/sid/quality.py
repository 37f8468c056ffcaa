"""SID quality statistics, pure functions of a codes array [N, M] (GRID, snap-research:
residual_quantization.py; Gini of bucket sizes as in FORGE, arXiv:2509.20904).

- utilisation per level: used codes / K;
- perplexity per level: exp of the entropy of the code-usage distribution (K = perfectly even);
- collision rate: share of items whose full SID is shared with another item;
- max bucket: most items sharing one full SID;
- Gini of the full-SID bucket sizes (occupied buckets; 0 = all equal);
- distinct prefixes per level: number of distinct ``codes[:, :m + 1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sidrec_core.sid.collisions import group_ids


def utilization(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[float]:
    """Used codes / K per level -> [M]."""
    return [len(np.unique(codes[:, m])) / int(k) for m, k in enumerate(codebook_sizes)]


def perplexity(codes: np.ndarray) -> list[float]:
    """exp(entropy) of the code usage per level -> [M]."""
    out = []
    for m in range(codes.shape[1]):
        p = np.bincount(codes[:, m]).astype(np.float64)
        p = p[p > 0] / p.sum()
        out.append(float(np.exp(-(p * np.log(p)).sum())))
    return out


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose full SID is shared with at least one other item."""
    inverse, counts = group_ids(codes)
    return float((counts[inverse] > 1).mean())


def max_bucket(codes: np.ndarray) -> int:
    return int(group_ids(codes)[1].max())


def gini(sizes: np.ndarray) -> float:
    """Gini coefficient of non-negative ``sizes`` (0 = all equal, -> 1 = one bucket holds all)."""
    x = np.sort(np.asarray(sizes, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2.0 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def distinct_prefixes(codes: np.ndarray) -> list[int]:
    """Number of distinct prefixes of length 1..M -> [M]."""
    return [len(np.unique(codes[:, : m + 1], axis=0)) for m in range(codes.shape[1])]


def sid_quality(
    raw: np.ndarray, final: np.ndarray, codebook_size: int, final_sizes: Sequence[int]
) -> dict[str, object]:
    """Every SID quality figure from the tokenizer's raw codes [N, M] and the resolved codes
    [N, M'] (M' = M + 1 with a suffix level). Lists are per level."""
    return {
        "utilization": utilization(raw, [codebook_size] * raw.shape[1]),
        "perplexity": perplexity(raw),
        "collision_rate_before": collision_rate(raw),
        "collision_rate_after": collision_rate(final),
        "max_bucket": max_bucket(raw),
        "max_bucket_after": max_bucket(final),
        "gini": gini(group_ids(raw)[1]),
        "distinct_prefixes": distinct_prefixes(raw),
        "utilization_after": utilization(final, final_sizes),
        "perplexity_after": perplexity(final),
        "num_levels_out": int(final.shape[1]),
    }
