"""What each committed trial recorded about its code and inputs, and what git can add: only
``landed_in`` (the first commit whose storage holds the trial complete, an upper bound on the code
it ran), kept in the sidecar ``experiments/provenance_backfill.jsonl``. Nothing else is
reconstructed: a field a trial did not record stays "not recorded"."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.studies.fingerprints import READ
from sidrec_core.studies.markdown import table as md_table

SIDECAR = "provenance_backfill.jsonl"
NOT_RECORDED = "not recorded"
# the fields a trial records itself, as the report names them
FIELDS = {
    "commit": "commit and dirty flag",
    "packages": "package versions",
    "level_spec": "`level_spec`",
    "trial_key": "`trial_key`",
    "fingerprints": "input fingerprints (`sha256/read/*`)",
}
LANDED_IN = "landed_in"
LANDED_IN_TEXT = (
    "`landed_in` (the first commit whose storage held the trial complete: the code it ran is "
    "no newer)"
)

Key = tuple[str, int, str]  # (Optuna study name, trial number, datetime_start)


def trial_key_of(study_name: str, trial: optuna.trial.FrozenTrial) -> Key:
    """What identifies a trial across copies of its storage (numbers alone could be reused)."""
    return study_name, trial.number, str(trial.datetime_start)


def recorded(trial: optuna.trial.FrozenTrial) -> dict[str, bool]:
    """Which of :data:`FIELDS` the trial recorded itself."""
    attrs, metrics = trial.user_attrs, trial.user_attrs.get("metrics") or {}
    code = attrs.get("provenance") or {}
    return {
        "commit": bool(code.get("commit")) and code.get("worktree_dirty") is not None,
        "packages": bool(code.get("packages")),
        "level_spec": "level_spec" in attrs,
        "trial_key": bool(metrics.get("trial_key")),
        "fingerprints": any(k.startswith(READ) for k in metrics),
    }


def read_backfill(out_dir: Path) -> dict[Key, dict[str, Any]]:
    """The committed sidecar, keyed like :func:`trial_key_of` (empty when there is none)."""
    path = Path(out_dir) / SIDECAR
    if not path.exists():
        return {}
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            out[(row["study"], int(row["trial"]), row["datetime_start"])] = row
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"{path}:{n}: expected a JSON object with study, trial, datetime_start ({exc})"
            ) from None
    return out


def counts(
    sections: Iterable[tuple[str, Iterable[optuna.trial.FrozenTrial]]],
    backfill: dict[Key, dict[str, Any]],
) -> dict[str, tuple[int, int, int]]:
    """``{field: (recorded, derived, not recorded)}`` over the complete trials of the
    ``(Optuna study name, trials)`` sections; ``landed_in`` is only ever derived, or not."""
    out = {f: [0, 0, 0] for f in (*FIELDS, LANDED_IN)}
    for study_name, trials in sections:
        for t in trials:
            if t.state != TrialState.COMPLETE:
                continue
            for field, ok in recorded(t).items():
                out[field][0 if ok else 2] += 1
            row = backfill.get(trial_key_of(study_name, t)) or {}
            out[LANDED_IN][1 if row.get(LANDED_IN) else 2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def count_lines(tally: dict[str, tuple[int, int, int]], lead: str) -> list[str]:
    """A markdown table of :func:`counts` under the sentence ``lead``."""
    names = {**FIELDS, LANDED_IN: LANDED_IN_TEXT}
    rows = [
        [names[f], *(("—", der) if f == LANDED_IN else (rec, "—")), nrec]
        for f, (rec, der, nrec) in tally.items()
    ]
    return [lead, "", *md_table(["field", "recorded", "derived", "not recorded"], rows)]


def section_lines(
    study_name: str, trials: list[optuna.trial.FrozenTrial], out_dir: Path
) -> list[str]:
    """The report's provenance table for one section (nothing when no trial is complete)."""
    tally = counts([(study_name, trials)], read_backfill(out_dir))
    if not sum(tally["commit"]):
        return []
    lead = (
        f"Provenance of the {sum(tally['commit'])} complete trials: what each recorded itself, "
        f"what `{SIDECAR}` derives from git for it (`python bench/backfill_provenance.py`) and "
        f"what is {NOT_RECORDED}."
    )
    return ["", *count_lines(tally, lead)]
