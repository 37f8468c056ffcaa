"""Statistics of a study over seeds: mean with a Student-t 95% CI, the paired t-test of two levels
(paired over seeds: trials with the same seed share upstream artifacts and initialisation), the
CI of a paired difference, and Holm's correction of a family of p-values."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``values`` (Student t, n-1 dof)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    if arr.size == 1:
        return float(arr[0]), float("nan")
    sem = arr.std(ddof=1) / math.sqrt(arr.size)
    return float(arr.mean()), float(stats.t.ppf(0.975, arr.size - 1) * sem)


def paired_test(a: dict[int, float], b: dict[int, float]) -> tuple[float | None, float | None]:
    """Paired t-test of a vs b over the seeds both have -> (mean diff, two-sided p).

    p is None (undefined) with fewer than 2 shared seeds or when every seed's difference is the
    same (zero variance: the t statistic is 0/0 or x/0, not evidence either way)."""
    shared = sorted(set(a) & set(b))
    if not shared:
        return None, None
    d = np.array([a[s] - b[s] for s in shared])
    if len(shared) < 2 or np.allclose(d, d[0], rtol=0.0, atol=1e-12):
        return float(d.mean()), None
    return float(d.mean()), float(
        stats.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue
    )


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and is not counted as a test)."""
    idx = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        out[i] = running
    return out


def diff_ci(a: dict[int, float], b: dict[int, float]) -> float:
    """95% CI half-width of the paired difference a - b over shared seeds (nan if < 2)."""
    shared = sorted(set(a) & set(b))
    return mean_ci([a[s] - b[s] for s in shared])[1]
