"""``--rerun-unpaired``: levels are compared only on equal upstream inputs, so a complete trial
that read other bytes than its seed's newest trial (an SID table another machine embedded, a
model trained before a fix) is queued again, to run on this machine's inputs beside the newest.
A re-run replaces the trial it re-ran in every figure; a trial is re-run once at most, so a
re-run whose inputs still differ is reported as not paired, not re-run again."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from sidrec_core.studies.fingerprints import broken_seeds
from sidrec_core.studies.study import Study, live_point, trial_level, trial_seed

RERUN_OF = "rerun_of"  # user attr of a re-run: the number of the trial it replaces
PENDING = (TrialState.RUNNING, TrialState.WAITING)


def counting(study: Study, trials: list[FrozenTrial]) -> dict[tuple[str, int], FrozenTrial]:
    """The trial each grid point counts: its last complete one (a re-run replaces its trial)."""
    out = {}
    for t in sorted(trials, key=lambda t: t.number):
        point = live_point(study, t)
        if t.state == TrialState.COMPLETE and point is not None:
            out[point] = t
    return out


def unpaired(study: Study, trials: list[FrozenTrial]) -> dict[tuple[str, int], FrozenTrial]:
    """``{point: trial}``: the counting trials that read, of an upstream input besides the
    study's ``varied_inputs``, other bytes than the newest counting trial of their seed, and
    are not a re-run themselves."""
    last, out = counting(study, trials), {}
    for seed in sorted({s for _, s in last}):
        at = {lv: t for (lv, s), t in last.items() if s == seed}
        newest = max(at, key=lambda lv: at[lv].datetime_complete)
        records = {lv: {seed: t.user_attrs.get("metrics") or {}} for lv, t in at.items()}
        for lv, t in at.items():
            stale = broken_seeds(records, lv, newest, study.varied_inputs)
            if lv != newest and stale and RERUN_OF not in t.user_attrs:
                out[(lv, seed)] = t
    return out


def enqueue_unpaired(ostudy: optuna.Study, study: Study) -> int:
    """Queue a re-run of each :func:`unpaired` trial with none queued or running -> how many."""
    trials = ostudy.get_trials(deepcopy=False)
    busy = {live_point(study, t) for t in trials if t.state in PENDING}
    todo = {p: t for p, t in unpaired(study, trials).items() if p not in busy}
    for point, t in todo.items():
        ostudy.enqueue_trial({}, user_attrs={"grid_point": list(point), RERUN_OF: t.number})
    return len(todo)


def rerun_text(t: FrozenTrial) -> str:
    """`` (re-run of #N)`` for a re-run, else ``""``."""
    return f" (re-run of #{t.user_attrs[RERUN_OF]})" if RERUN_OF in t.user_attrs else ""


def replaced_lines(counted: dict[tuple[str, int], FrozenTrial]) -> list[str]:
    """The report's list of the trials re-runs replaced (``counted``: :func:`counting`'s)."""
    done = [t for t in counted.values() if RERUN_OF in t.user_attrs]
    if not done:
        return []
    lines = [
        "",
        "Replaced: complete trials that read other upstream inputs than their seed's newest "
        "trial, run again (`--rerun-unpaired`); only the re-run counts:",
        "",
    ]
    for t in sorted(done, key=lambda t: t.number):
        lv, seed = trial_level(t), trial_seed(t)
        lines.append(f"- #{t.user_attrs[RERUN_OF]} {lv} seed {seed}, re-run as #{t.number}")
    return lines
