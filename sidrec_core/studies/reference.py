"""A study whose stages start from a trained model (GRPO from the SID LM) compares each level,
per seed, with that model's own figures: the ``start/test/*`` a trial recorded before training
(the same run's model and test users, ranks included), else the level of another study that
evaluated exactly that model (its :class:`~sidrec_core.studies.study.Reference`), read from that
study's storage. A seed pairs only when the fingerprint figures (``Reference.match``) agree
exactly; a trial of any level may supply its seed's start (the levels share it)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from optuna.trial import TrialState

from sidrec_core.metrics import TEST_KEYS
from sidrec_core.studies import markdown as md
from sidrec_core.studies.defaults import current_labels, profile_of
from sidrec_core.studies.fingerprints import RANKS
from sidrec_core.studies.stats import diff_ci, holm, mean_ci, paired_test
from sidrec_core.studies.storage import sections
from sidrec_core.studies.study import Reference, Study, is_stale, trial_level, trial_seed

if TYPE_CHECKING:
    from sidrec_core.studies.report import Cell, Records

START = "start/"  # prefix of the start model's figures a trial recorded itself


def reference_rows(
    study: Study, profile: str, storage_for: Callable[[str], str]
) -> dict[int, dict[str, float]]:
    """{seed: figures} of the reference level's complete, not stale trials in ``profile``."""
    from sidrec_core.studies.registry import STUDIES
    from sidrec_core.studies.report import scalar_attrs

    ref = study.reference
    if ref is None:
        return {}
    try:
        found = dict(sections(storage_for(ref.study), ref.study))
    except (KeyError, ValueError):  # no storage
        return {}
    # the same label, else the referenced study's current defaults for the profile
    label = profile if profile in found else current_labels(found).get(profile_of(profile))
    if label is None:
        return {}
    other = found[label]
    defined = STUDIES.get(ref.study)  # None: a study made for the occasion, not registered
    rows: dict[int, dict[str, float]] = {}
    for t in other.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if trial_level(t) == ref.level and not (defined and is_stale(defined, t)):
            ranks = (t.user_attrs.get("metrics") or {}).get(RANKS)
            rows[trial_seed(t)] = scalar_attrs(t.user_attrs) | {RANKS: ranks}
    return rows


def own_start_rows(study: Study, records: Records, level: str) -> dict[int, dict[str, float]]:
    """{seed: the start model's figures} from this section's trials that scored their start
    (``start/test/*``), keyed as the reference's (``match[1]`` holds the trial's ``match[0]``):
    ``level``'s own trial first, else another level's at that seed (the levels share a start)."""
    assert study.reference is not None
    own, theirs = study.reference.match
    rows: dict[int, dict[str, float]] = {}
    for lv in [level, *(other for other in records if other != level)]:
        for seed, m in records.get(lv, {}).items():
            if START + TEST_KEYS[0] in m and own in m:
                start = {k[len(START) :]: v for k, v in m.items() if k.startswith(START)}
                rows.setdefault(seed, start | {theirs: m[own]})
    return rows


def paired_seeds(
    study: Study, level: dict[str, Cell], rows: dict[int, dict[str, float]]
) -> tuple[list[int], list[int]]:
    """(seeds whose fingerprints agree, seeds both have whose fingerprints differ)."""
    assert study.reference is not None
    own, theirs = study.reference.match
    mine = level[own].values if own in level else {}
    both = sorted(set(mine) & {s for s, r in rows.items() if theirs in r})
    same = [s for s in both if math.isclose(mine[s], rows[s][theirs], rel_tol=1e-12)]
    return same, [s for s in both if s not in same]


def user_ci(
    level: dict[int, dict], rows: dict[int, dict], metric: str, seeds: list[int]
) -> tuple[float, float] | None:
    """Seed x test-user bootstrap CI of level - start, where every seed stored both ranks."""
    from sidrec_core.studies.report import user_level_ci

    return user_level_ci({"level": level, "start": rows}, "level", "start", metric, seeds)


def goal_text(
    ref: Reference, base: float, diff: float, half_width: float, su: tuple[float, float] | None
) -> str:
    """Where the reference's goal (a relative gain) lies against the change's CI over seeds and,
    where recorded, its seed x test-user CI."""
    if ref.goal is None or math.isnan(half_width) or not base:
        return ""
    want = ref.goal * base

    def where(lo: float, hi: float) -> str:
        return "above" if want > hi else "below" if want < lo else "inside"

    seeds = where(diff - half_width, diff + half_width)
    places = {seeds} | ({where(*su)} if su else set())
    users = "" if su is None else f", {where(*su)} the seed × user CI"
    verdict = {"above": "excluded at this scale", "below": "reached"}.get(
        places.pop() if len(places) == 1 else "", "neither reached nor excluded"
    )
    return (
        f"; the goal, {ref.goal:.0%} of the start ({ref.goal_source}, +{want:.5f}), lies "
        f"{seeds} the CI over seeds{users}: {verdict}"
    )


def reference_lines(
    study: Study,
    profile: str,
    table: dict[str, dict[str, Cell]],
    storage_for: Callable[[str], str],
    records: Records | None = None,
) -> list[str]:
    """The report's "against the starting model" table for one real-data profile section."""
    ref = study.reference
    if ref is None:
        return []
    records = records or {}
    theirs = reference_rows(study, profile, storage_for)
    own = {lv: own_start_rows(study, records, lv) for lv in study.labels}
    head = (
        f"Against {ref.label} (scored by the trial itself before training, `{START}test/*`; "
        f"else study `{ref.study}`, level `{ref.level}`)"
    )
    if not theirs and not any(own.values()):
        return ["", f"{head}: no trial scored it yet in profile `{profile}`."]
    tests, unpaired, mine = [], set(), set()
    for lv in study.labels:
        rows = theirs | own[lv]
        seeds, differ = paired_seeds(study, table[lv], rows)
        unpaired |= set(differ)
        for metric in TEST_KEYS:
            if metric not in table[lv] or not seeds:
                continue
            a = {s: v for s, v in table[lv][metric].values.items() if s in seeds}
            b = {s: rows[s][metric] for s in seeds if metric in rows[s]}
            if a and b:
                su = user_ci(records.get(lv, {}), rows, metric, sorted(a.keys() & b.keys()))
                tests.append((lv, metric, a, b, su, *paired_test(a, b)))
                mine |= set(b) & set(own[lv])
    adjusted = holm([t[6] for t in tests])
    lines = [
        "",
        f"{head}: the same trained model, users and decoding, paired over the seeds whose "
        f"`{ref.match[0]}` equals the reference's `{ref.match[1]}` (seeds scored by the trials "
        f"themselves: {sorted(mine) or 'none'}); p Holm-corrected over the "
        f"{sum(p is not None for p in adjusted)} tests of this table (significant at adjusted "
        f"p < {md.ALPHA}); relative = mean diff / the reference's mean; the seed × user CI "
        "also resamples the test users (`not recorded` where a side stored no per-user ranks).",
        "",
        *md.table(
            ["level", "metric", "reference", "level", "mean diff (95% CI, seeds)"]
            + ["seed × user 95% CI", "relative", "Holm p", "significant"]
        ),
    ]
    largest = None  # the level with the largest change on the first test metric
    for (lv, metric, a, b, su, diff, _), adj in zip(tests, adjusted, strict=True):
        base, mean = mean_ci(list(b.values()))[0], mean_ci(list(a.values()))[0]
        hw = diff_ci(a, b)
        ci = "" if math.isnan(hw) else f" ± {hw:.5f}"
        rel = f"{100 * diff / base:+.1f}% ± {100 * hw / base:.1f}%" if base and ci else "n/a"
        adj_text = "undefined" if adj is None else f"{adj:.3f}"
        su_text = "not recorded" if su is None else f"[{su[0]:+.5f}, {su[1]:+.5f}]"
        cells = [lv, metric, f"{base:.5f}", f"{mean:.5f}", f"{diff:+.5f}{ci}", su_text, rel]
        lines.append(md.row([*cells, adj_text, md.significant(adj)]))
        if metric == TEST_KEYS[0] and (largest is None or diff > largest[0]):
            ci = "" if math.isnan(hw) else f" ± {100 * hw / base:.1f}%"
            verdict = "significant" if md.significant(adj) == "yes" else "not significant"
            change = f"`{lv}`, {100 * diff / base:+.1f}%{ci} (95% CI over {len(a)} paired seeds"
            text = f"Largest {metric} change from {ref.label}: {change}; {verdict} after Holm)"
            largest = diff, text + goal_text(ref, base, diff, hw, su) + "."
    lines += ["", largest[1]] if largest else []
    if unpaired:
        lines += [
            "",
            f"Seeds {sorted(unpaired)}: the fingerprints differ (another model or other users), "
            "so they are not paired.",
        ]
    return lines
