"""What each committed trial recorded about the code and inputs it ran, and what git can add.

Trials run since issue 33 record their code (``provenance``: commit, dirty flag, package
versions), what their level meant (``level_spec``), the cache keys of their stages
(``trial_key``) and the sha256 of their inputs (``sha256/read/*``). Earlier trials recorded some
or none of these, and Optuna cannot add user attributes to a finished trial, so what can be
derived for them lives in a committed sidecar, ``experiments/provenance_backfill.jsonl``
(``python bench/backfill_provenance.py``), one line per complete trial.

Only one field is derivable honestly: ``landed_in``, the first commit whose copy of the study's
storage (``optuna.jsonl``, or the ``optuna.db`` it was migrated from) holds the trial complete.
The trial ran before that commit was made, so the code it ran is no newer than it: an upper
bound, never the commit it ran. Everything else a trial did not record stays "not recorded":
the code at run time is unknown, so no commit, dirty flag, package version, trial key or
fingerprint is reconstructed for it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.io import write_jsonl
from sidrec_core.studies.fingerprints import READ

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
STORAGE_FILES = ("optuna.db", "optuna.jsonl")  # a study's storage, before and after migration

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


def _git(repo: Path, *args: str, text: bool = True) -> Any:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=text, check=True, timeout=120
    ).stdout


def _complete_in(blob: bytes, name: str) -> set[Key]:
    """Complete trials held by one committed copy of a storage file named ``name``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        if name.endswith(".db"):
            with sqlite3.connect(path) as db:
                rows = db.execute(
                    "SELECT s.study_name, t.number, t.datetime_start FROM trials t "
                    "JOIN studies s ON s.study_id = t.study_id WHERE t.state = 'COMPLETE'"
                ).fetchall()
            return {(s, int(n), str(d)) for s, n, d in rows}
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        storage = optuna.storages.JournalStorage(backend)
        out = set()
        for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            out |= {
                trial_key_of(summary.study_name, t)
                for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            }
        return out


def landed_in(folder: Path) -> dict[Key, tuple[str, str]]:
    """``{trial: (commit, commit date)}``: the first commit (oldest first) whose copy of the
    storage in ``folder`` holds the trial complete."""
    repo = Path(_git(folder, "rev-parse", "--show-toplevel").strip())
    rel = folder.resolve().relative_to(repo)
    paths = [str(rel / f) for f in STORAGE_FILES]
    log = _git(repo, "log", "--reverse", "--date-order", "--format=%H %cI", "--", *paths)
    out: dict[Key, tuple[str, str]] = {}
    for line in log.splitlines():
        commit, date = line.split()
        for path in paths:
            try:
                blob = _git(repo, "show", f"{commit}:{path}", text=False)
            except subprocess.CalledProcessError:  # not in this commit's tree
                continue
            if blob:
                for key in _complete_in(blob, Path(path).name) - out.keys():
                    out[key] = (commit, date)
    return out


def backfill_rows(out_dir: Path, studies: Iterable[str]) -> list[dict[str, Any]]:
    """One row per complete trial of every study's storage under ``out_dir``: the fields it
    did not record and its ``landed_in`` (None when no commit holds it yet)."""
    from sidrec_core.studies.storage import sections, study_journal

    rows = []
    for name in studies:
        url = study_journal(out_dir, name)
        found = sorted(sections(url, name), key=lambda section: section[1].study_name)
        landed = landed_in(Path(url).parent) if found else {}
        for _, ostudy in found:
            study_name = ostudy.study_name
            for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                commit, date = landed.get(trial_key_of(study_name, t), (None, None))
                rows.append(
                    {
                        "study": study_name,
                        "trial": t.number,
                        "datetime_start": str(t.datetime_start),
                        LANDED_IN: commit,
                        "landed_at": date,
                        "not_recorded": [f for f, ok in recorded(t).items() if not ok],
                    }
                )
    return rows


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
    study_name: str,
    trials: Iterable[optuna.trial.FrozenTrial],
    backfill: dict[Key, dict[str, Any]],
) -> dict[str, tuple[int, int, int]]:
    """``{field: (recorded, derived, not recorded)}`` over the complete trials; ``landed_in``
    is never recorded, only derived (from the sidecar) or not."""
    out = {f: [0, 0, 0] for f in (*FIELDS, LANDED_IN)}
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
    lines = [lead, "", "| field | recorded | derived | not recorded |", "|---|---|---|---|"]
    names = {**FIELDS, LANDED_IN: LANDED_IN_TEXT}
    for field, (rec, der, nrec) in tally.items():
        shown = ("—" if field == LANDED_IN else str(rec), str(der) if field == LANDED_IN else "—")
        lines.append(f"| {names[field]} | {shown[0]} | {shown[1]} | {nrec} |")
    return lines


def section_lines(
    study_name: str, trials: list[optuna.trial.FrozenTrial], out_dir: Path
) -> list[str]:
    """The report's provenance table for one section (nothing when no trial is complete)."""
    tally = counts(study_name, trials, read_backfill(out_dir))
    if not sum(tally["commit"]):
        return []
    lead = (
        f"Provenance of the {sum(tally['commit'])} complete trials: what each recorded itself, "
        f"what `{SIDECAR}` derives from git for it (`python bench/backfill_provenance.py`) and "
        f"what is {NOT_RECORDED}."
    )
    return ["", *count_lines(tally, lead)]


def main(argv: list[str] | None = None) -> int:
    """``bench/backfill_provenance.py [--out experiments]``: write ``<out>/SIDECAR``."""
    import argparse

    from sidrec_core.studies.registry import STUDIES
    from sidrec_core.studies.runner import EXPERIMENTS_DIR

    p = argparse.ArgumentParser(description=f"write experiments/{SIDECAR} from git and storage")
    p.add_argument("--out", default=str(EXPERIMENTS_DIR), help="the studies' root folder")
    args = p.parse_args(argv)
    rows = backfill_rows(Path(args.out), STUDIES)
    write_jsonl(Path(args.out) / SIDECAR, rows)
    derived = sum(bool(r[LANDED_IN]) for r in rows)
    print(f"{Path(args.out) / SIDECAR}: {len(rows)} complete trials, landed_in for {derived}")
    return 0
