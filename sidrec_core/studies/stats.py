"""Statistics over seeds: mean with a Student-t 95% CI, paired t-test (trials of one seed share
upstream artifacts and initialisation), Holm's correction, the minimum detectable effect, and a
seed x test-user bootstrap CI (the test users are a sample too)."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats


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
    """Paired t-test of a vs b over shared seeds -> (mean diff, two-sided p); p is None with
    fewer than 2 seeds or when every seed's difference is equal (t is 0/0 or x/0)."""
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


CHUNK = 50  # bootstrap resamples drawn at once


def min_detectable_effect(
    sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """Smallest true difference a two-sided paired t-test over ``n`` seeds detects with
    ``power`` at ``alpha`` given the seed-difference SD ``sd``; None when ``sd`` is not positive
    or ``n`` < 3 (with 1 dof the critical value is 12.7 standard errors: no usable MDE)."""
    if n < 3 or not sd > 0 or not math.isfinite(sd):
        return None
    df, crit = n - 1, stats.t.ppf(1 - alpha / 2, n - 1)
    se = sd / math.sqrt(n)

    def shortfall(effect: float) -> float:
        nc = effect / se
        return stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc) - power

    high = se
    while shortfall(high) < 0:
        high *= 2
    return float(optimize.brentq(shortfall, 0.0, high, xtol=se * 1e-6))


def seed_user_ci(
    diffs: dict[int, np.ndarray], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Two-way bootstrap of paired per-user differences -> (mean, 2.5%, 97.5%).

    ``diffs[s]`` [U]: level - control per test user at seed ``s``, the same users at every seed.
    Seeds and users are crossed, so a resample draws the users once for all seeds and the seeds
    independently (Owen 2007, "the pigeonhole bootstrap"); users drawn anew per seed would give a
    CI too narrow by up to the square root of the seed count."""
    seeds = sorted(diffs)
    if not seeds:
        return float("nan"), float("nan"), float("nan")
    d = np.stack([np.asarray(diffs[s], dtype=np.float64) for s in seeds])  # [S, U]
    rng = np.random.default_rng(seed)
    boot = np.empty(resamples)
    for start in range(0, resamples, CHUNK):  # [S, chunk, U] draws at a time bound the memory
        rows = min(CHUNK, resamples - start)
        per_seed = d[:, rng.integers(d.shape[1], size=(rows, d.shape[1]))].mean(-1)  # [S, rows]
        picked = rng.integers(len(seeds), size=(rows, len(seeds)))
        boot[start : start + rows] = np.take_along_axis(per_seed.T, picked, axis=1).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)
