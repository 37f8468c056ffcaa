"""Two trials are compared only where their upstream inputs (``sha256/read/*`` they did not
write themselves) are equal; per-user figures for the seed x user CI come from stored ranks."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from sidrec_core.metrics import METRIC_FNS, decode_ranks

READ, WROTE = "sha256/read/", "sha256/wrote/"
RANKS = "test/ranks"
Records = dict[str, dict[int, dict[str, Any]]]  # level -> seed -> the trial's stored metrics
RANKED = re.compile(r"^(?:(?P<prefix>.+)/)?test/(?P<metric>hr|ndcg|mrr)@(?P<k>\d+)$")


def upstream(metrics: dict[str, Any]) -> dict[str, str]:
    """``{name: sha256}`` of the inputs a trial read and did not make itself."""
    made = {v for k, v in metrics.items() if k.startswith(WROTE)}
    return {k[len(READ) :]: v for k, v in metrics.items() if k.startswith(READ) and v not in made}


def pairing_break(a: dict[str, Any], b: dict[str, Any]) -> list[str] | None:
    """Upstream inputs two trials both read with different bytes ([] = comparable), or None when
    either trial recorded no fingerprint."""
    ua, ub = upstream(a), upstream(b)
    if not ua or not ub:
        return None
    return sorted(k for k in ua.keys() & ub.keys() if ua[k] != ub[k])


def per_user(metrics: dict[str, Any], metric: str) -> np.ndarray | None:
    """Per-test-user values of ``metric`` (``test/ndcg@10``, a model's ``sasrec/test/hr@10``)
    from the trial's stored ranks, or None when it stored none or the cut-off exceeds them."""
    match = RANKED.match(metric)
    if match is None:
        return None
    key = f"{match['prefix']}/{RANKS}" if match["prefix"] else RANKS
    text = metrics.get(key)
    if not isinstance(text, str):
        return None
    k = int(match["k"])
    if k > int(text.split(":", 2)[1]):
        return None
    return METRIC_FNS[match["metric"]](decode_ranks(text), k)


def broken_seeds(
    records: Records, level: str, versus: str, varied: tuple[str, ...] = ()
) -> dict[int, list[str]]:
    """Seeds at which the two levels read different upstream inputs (not comparable), besides
    the ``varied`` ones the study's levels differ in by design."""
    a, b = records.get(level, {}), records.get(versus, {})
    differ = {seed: pairing_break(a[seed], b[seed]) for seed in sorted(a.keys() & b.keys())}
    kept = {seed: [k for k in d if k not in varied] for seed, d in differ.items() if d}
    return {seed: d for seed, d in kept.items() if d}
