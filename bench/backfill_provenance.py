"""Provenance backfill: ``python bench/backfill_provenance.py`` writes
``experiments/provenance_backfill.jsonl``: for each committed complete trial, the fields it did
not record and ``landed_in``, the first commit whose copy of the study's storage (``optuna.jsonl``,
or the ``optuna.db`` it was migrated from) holds it complete: an upper bound on its code, never
the commit it ran (:mod:`sidrec_core.studies.provenance` reads the sidecar).
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.io import write_jsonl
from sidrec_core.studies.provenance import LANDED_IN, SIDECAR, Key, recorded, trial_key_of
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.runner import EXPERIMENTS_DIR
from sidrec_core.studies.storage import sections, study_journal

STORAGE_FILES = ("optuna.db", "optuna.jsonl")  # a study's storage, before and after migration


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


def main(argv: list[str] | None = None) -> int:
    """``bench/backfill_provenance.py [--out experiments]``: write ``<out>/SIDECAR``."""
    p = argparse.ArgumentParser(description=f"write experiments/{SIDECAR} from git and storage")
    p.add_argument("--out", default=str(EXPERIMENTS_DIR), help="the studies' root folder")
    args = p.parse_args(argv)
    rows = backfill_rows(Path(args.out), STUDIES)
    write_jsonl(Path(args.out) / SIDECAR, rows)
    derived = sum(bool(r[LANDED_IN]) for r in rows)
    print(f"{Path(args.out) / SIDECAR}: {len(rows)} complete trials, landed_in for {derived}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
