"""Ranking metrics as pure, vectorised functions over ranked item ids.

With one held-out target per user (leave-one-out), HR@K equals Recall@K. Every function takes the
0-based ``ranks`` of the target (``>= K`` or ``inf`` when it was not retrieved) so HR, NDCG and MRR
agree by construction. Metric keys follow ``{split}/{metric}@{k}``.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20, 50)
METRICS: tuple[str, ...] = ("hr", "ndcg", "mrr")

# The metric keys the project singles out, defined here only (training, tuning, studies, tracking
# and the reports import them): the validation figure models are selected and tuned on, the test
# figures every table leads with, and the test figures studies and references compare.
OBJECTIVE = "valid/ndcg@10"
HEADLINE: tuple[str, ...] = ("test/ndcg@10", "test/hr@10")
TEST_KEYS: tuple[str, ...] = (*HEADLINE, "test/ndcg@5", "test/hr@5")


def target_ranks(item_ids: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its ranked list; ``inf`` when absent.

    item_ids: [U, K] ranked item ids (0 = no item); targets: [U]. Returns float [U].
    """
    item_ids = np.asarray(item_ids)
    targets = np.asarray(targets)
    if item_ids.ndim != 2 or targets.shape != (item_ids.shape[0],):
        raise ValueError(
            f"expected item_ids [U, K] and targets [U], got {item_ids.shape} and {targets.shape}"
        )
    hit = (item_ids == targets[:, None]) & (targets[:, None] > 0)
    first = hit.argmax(axis=1).astype(np.float64)
    first[~hit.any(axis=1)] = np.inf
    return first


RANKS_CODEC = "u16z"  # uint16 ranks clipped at the largest cut-off, zlib, base64


def encode_ranks(ranks: np.ndarray, cap: int) -> str:
    """Per-user target ranks [U] as a compact string for a trial's record: ranks at or beyond
    ``cap`` (the largest cut-off; ``inf`` = not retrieved) are stored as ``cap``, which keeps
    every metric at every cut-off up to ``cap`` exact. ``<codec>:<cap>:<base64>``."""
    if not 1 <= cap < 2**16:
        raise ValueError(f"cap must be in [1, 65535], got {cap}")
    clipped = np.minimum(np.asarray(ranks, dtype=np.float64), cap).astype("<u2")
    blob = base64.b64encode(zlib.compress(clipped.tobytes(), 9)).decode()
    return f"{RANKS_CODEC}:{cap}:{blob}"


def decode_ranks(text: str) -> np.ndarray:
    """Inverse of :func:`encode_ranks` -> float ranks [U] (``inf`` where ``>= cap``)."""
    codec, cap, blob = text.split(":", 2)
    if codec != RANKS_CODEC:
        raise ValueError(f"per-user ranks: unknown codec {codec!r}, expected {RANKS_CODEC!r}")
    ranks = np.frombuffer(zlib.decompress(base64.b64decode(blob)), dtype="<u2").astype(np.float64)
    ranks[ranks >= int(cap)] = np.inf
    return ranks


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user HR@k (= Recall@k with one target). ranks: [U] -> [U] in {0, 1}."""
    return (np.asarray(ranks) < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user NDCG@k with one relevant item: 1 / log2(rank + 2) inside the cut-off."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    inside = ranks < k
    out[inside] = 1.0 / np.log2(ranks[inside] + 2.0)
    return out


def mrr(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-user MRR@k: 1 / (rank + 1) inside the cut-off."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = np.zeros_like(ranks)
    inside = ranks < k
    out[inside] = 1.0 / (ranks[inside] + 1.0)
    return out


METRIC_FNS = {"hr": hit_rate, "ndcg": ndcg, "mrr": mrr}


def per_user_metrics(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """``{"ndcg@10": [U], ...}`` for every metric and cut-off."""
    return {f"{name}@{k}": fn(ranks, k) for name, fn in METRIC_FNS.items() for k in ks}


def bootstrap_ci(
    values: np.ndarray, num_samples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` [U]."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Resample in chunks of draws so memory stays ~ chunk x U whatever num_samples is.
    chunk = max(1, min(num_samples, 2_000_000 // values.size))
    means = np.concatenate(
        [
            values[
                rng.integers(0, values.size, size=(min(chunk, num_samples - i), values.size))
            ].mean(1)
            for i in range(0, num_samples, chunk)
        ]
    )
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summarize(
    per_user: dict[str, np.ndarray], split: str, num_bootstrap: int = 0, seed: int = 0
) -> dict[str, float]:
    """Mean of each per-user metric as ``{split}/{metric}@{k}`` (+ ``_ci_lo``/``_ci_hi``)."""
    out: dict[str, float] = {}
    for key, values in per_user.items():
        out[f"{split}/{key}"] = float(np.mean(values)) if len(values) else float("nan")
        if num_bootstrap:
            lo, hi = bootstrap_ci(values, num_bootstrap, seed=seed)
            out[f"{split}/{key}_ci_lo"] = lo
            out[f"{split}/{key}_ci_hi"] = hi
    return out


def candidate_diagnostics(
    item_ids: np.ndarray,
    num_items: int,
    num_generated: int | None = None,
    num_invalid: int | None = None,
    num_duplicate: int | None = None,
) -> dict[str, float]:
    """Diagnostics of candidate lists: catalogue coverage and, for generative models, invalid and
    duplicate rates (shares of all generated sequences).

    item_ids: [U, K] ranked ids, 0 = empty slot. ``num_items`` excludes padding id 0.
    """
    item_ids = np.asarray(item_ids)
    distinct = np.unique(item_ids[item_ids > 0])
    out = {
        "coverage": distinct.size / max(num_items, 1),
        "empty_slot_rate": float((item_ids <= 0).mean()) if item_ids.size else 0.0,
    }
    if num_generated:
        out["invalid_rate"] = (num_invalid or 0) / num_generated
        out["duplicate_rate"] = (num_duplicate or 0) / num_generated
    return out
