"""A second dataset for the findings (issue 38, item 3): which studies owe one, which of their
levels a replication runs first, and whether an effect held.

A study owes a second dataset when a level's effect on the headline test metric is significant
(Holm, within the section) on the reference dataset's latest section, or when the issue names it
(:data:`REPLICATE`). On another dataset the runner queues, seed by seed, the default and those
significant levels before the rest of the grid: a section stopped part-way then answers "did the
effect hold" on every seed first, and the levels that were no finding on the reference come last.
A named study with no significant level owes its whole grid; a study neither significant nor named
owes none (:func:`owed_levels`, what ``--replication-only`` runs).
"""

from __future__ import annotations

import optuna

from sidrec_core.studies import markdown as md
from sidrec_core.studies.defaults import profile_of
from sidrec_core.studies.notes import headline_metric
from sidrec_core.studies.report import (
    SYNTHETIC,
    compare_levels,
    is_pipeline_check,
    summarize_trials,
    trial_records,
)
from sidrec_core.studies.storage import sections
from sidrec_core.studies.study import Study

REFERENCE = "beauty"  # the dataset every study runs on first
# studies the round-2 issue runs on a second dataset whatever the reference shows (issue 38, item 3)
REPLICATE = {
    "tokenizer": "named: the tokenizer comparison",
    "sasrec_loss": "named: the SASRec loss comparison",
    "rpg_codebooks": "named: RPG's codebook count",
}


def real_sections(location: str, study: Study) -> list[tuple[str, optuna.Study]]:
    """(profile, Optuna study) of every real-data section in the storage at ``location``."""
    found = sections(location, study.name)
    return [(profile, ostudy) for profile, ostudy in found if not is_pipeline_check(ostudy)]


def latest_sections(location: str, study: Study) -> list[optuna.Study]:
    """Each profile's latest real-data section (the one on its newest defaults)."""
    return list({profile_of(lb): o for lb, o in real_sections(location, study)}.values())


def reference_section(latest: list[optuna.Study]) -> optuna.Study | None:
    """The first of ``latest`` on :data:`REFERENCE`, or None."""
    return next((o for o in latest if o.user_attrs.get("dataset") == REFERENCE), None)


def level_effects(study: Study, ostudy: optuna.Study) -> dict[str, tuple[float, bool]]:
    """{level: (difference from the default on the headline test metric, significant after the
    section's Holm correction)} of one section."""
    trials = ostudy.get_trials(deepcopy=False)
    cols, table = summarize_trials(study, trials)
    key = headline_metric(cols)
    return {
        c.level: (float(c.cell.diff), c.holm_p is not None and c.holm_p < md.ALPHA)
        for c in compare_levels(study, cols, table, trial_records(study, trials), user_ci=False)
        if c.versus == study.default and c.metric == key and c.cell.diff is not None
    }


def direction_cell(study: Study, earlier: optuna.Study | None, now: optuna.Study) -> str:
    """Whether each level's effect kept its direction from the earlier section to ``now`` (the
    earlier defaults', or the reference dataset's): yes / no where it is significant on both,
    else unresolved."""
    if earlier is None:
        return "—"
    then, current = level_effects(study, earlier), level_effects(study, now)
    parts = []
    for lv in [lv for lv in study.labels if lv in then and lv in current]:
        (d0, s0), (d1, s1) = then[lv], current[lv]
        if not (s0 or s1):
            continue
        verdict = ("yes" if d0 * d1 > 0 else "no") if s0 and s1 else "unresolved"
        shown = f"{md.fmt(d0)}{'' if s0 else ' n.s.'} → {md.fmt(d1)}{'' if s1 else ' n.s.'}"
        parts.append(f"`{lv}` {verdict} ({shown})")
    return "; ".join(parts) or "unresolved (no level significant on either)"


def first_part(study: Study, levels: list[str]) -> list[str]:
    """The levels a replication runs first: the default and ``levels`` in the study's order
    (none where ``levels`` is empty: the whole grid is the replication)."""
    return [lv for lv in study.labels if lv == study.default or lv in levels] if levels else []


def owed_levels(study: Study, dataset: str, significant: list[str]) -> list[str] | None:
    """The levels ``study``'s section on ``dataset`` owes its replication, given the levels
    ``significant`` on the reference: the default and those, or every level where
    :data:`REPLICATE` names the study and none is significant; None where it owes none (on the
    reference, on synthetic data, or with no finding to replicate and no name)."""
    if dataset in (REFERENCE, SYNTHETIC):
        return None
    if significant:
        return first_part(study, significant)
    return list(study.labels) if study.name in REPLICATE else None


def replicated_levels(location: str, study: Study, dataset: str) -> list[str]:
    """The levels a section on ``dataset`` runs first: those significant on the reference's
    latest section in the storage at ``location`` (none on the reference itself, on synthetic
    data, which replicates nothing, or with no reference section yet)."""
    if dataset in (REFERENCE, SYNTHETIC):
        return []
    ref = reference_section(latest_sections(location, study))
    effects = level_effects(study, ref) if ref is not None else {}
    return [lv for lv in study.labels if effects.get(lv, (0.0, False))[1]]
