"""Each :class:`~sidrec_core.studies.study.Claim` against the 95% CI of the paired difference
(claim level - compared level, over shared seeds): ``better`` agrees above 0, disagrees below;
``not_worse`` disagrees below 0; ``equal`` disagrees when the CI excludes 0. A CI covering 0 where
the finding needs a sign is "not resolved at n seeds", never agreement. One pre-set claim per
finding, so the CIs are not multiplicity-corrected."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sidrec_core.studies.markdown import table as md_table
from sidrec_core.studies.stats import mean_ci
from sidrec_core.studies.study import Claim, Study

if TYPE_CHECKING:
    from sidrec_core.studies.report import Cell


def claim_values(claim: Claim, level: dict[str, Cell]) -> dict[int, float]:
    """Per-seed values of ``claim.metric`` for one level; a per-level metric (``utilization``
    expanded to ``utilization/0``, ``/1``, ...) is averaged over its levels."""
    if claim.metric in level:
        return dict(level[claim.metric].values)
    parts = [c for c in level if c.startswith(f"{claim.metric}/") and c.rsplit("/", 1)[1].isdigit()]
    seeds = set.intersection(*(set(level[c].values) for c in parts)) if parts else set()
    return {s: sum(level[c].values[s] for c in parts) / len(parts) for s in sorted(seeds)}


def metric_text(claim: Claim, level: dict[str, Cell] | None) -> str:
    """The metric a claim is read on, saying when it is averaged over the SID levels."""
    if level is not None and claim.metric not in level and claim_values(claim, level):
        return f"`{claim.metric}` (mean over the SID levels)"
    return f"`{claim.metric}`"


def verdict(expect: str, diff: float, half_width: float, n: int) -> str:
    """The reading of a paired difference ``diff`` ± ``half_width`` (95% CI) over n seeds."""
    if n < 2 or math.isnan(half_width):
        return f"not resolved ({n} paired seed{'s' if n != 1 else ''})"
    if half_width == 0.0 and diff == 0.0:
        same = "identical at every seed"
        return f"not supported ({same})" if expect == "better" else f"agrees ({same})"
    low, high = diff - half_width, diff + half_width
    if expect == "equal":
        return "disagrees" if low > 0 or high < 0 else "consistent (CI covers 0)"
    if high < 0:
        return "disagrees"
    if low > 0:
        return "agrees"
    return "consistent (CI covers 0)" if expect == "not_worse" else f"not resolved at {n} seeds"


def claim_lines(study: Study, table: dict[str, dict[str, Cell]]) -> list[str]:
    """The report's "Literature" table: finding, source, measured difference, verdict."""
    if not study.claims:
        return []
    lines = [
        "",
        "Literature: each published finding against this profile's paired difference "
        "(claim level - compared level, 95% CI over the seeds both completed; not "
        "multiplicity-corrected: one pre-set claim per finding).",
        "",
    ]
    rows = [
        [claim.finding, claim.source, metric_text(claim, table[claim.level])]
        + list(claim_reading(claim, table))
        for claim in study.claims
    ]
    return lines + md_table(["finding", "source", "metric", "measured difference", "verdict"], rows)


def claim_reading(claim: Claim, table: dict[str, dict[str, Cell]]) -> tuple[str, str]:
    """(measured difference ``level - versus: d ± hw (n=k)``, verdict) for one claim."""
    a = claim_values(claim, table[claim.level])
    b = claim_values(claim, table[claim.versus])
    shared = sorted(set(a) & set(b))
    if not shared:
        return "no paired seeds yet", "not resolved"
    diffs = [a[s] - b[s] for s in shared]
    diff, hw = mean_ci(diffs)
    ci = "" if math.isnan(hw) else f" ± {hw:.4f}"
    measured = f"{claim.level} - {claim.versus}: {diff:+.4f}{ci} (n={len(shared)})"
    if len(shared) > 1:
        measured += "; per seed " + ", ".join(f"{d:+.4f}" for d in diffs)
    reading = verdict(claim.expect, diff, hw, len(shared))
    if reading.startswith("not resolved") and len(diffs) > 1:
        if all(d < 0 for d in diffs) or all(d > 0 for d in diffs):
            below = diffs[0] < 0
            side = "against the finding" if below else "the finding's way"
            reading += f"; all {len(diffs)} seeds {'below' if below else 'above'} 0 ({side})"
    return measured, reading
