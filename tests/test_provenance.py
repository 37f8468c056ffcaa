"""Provenance of committed trials (issue 33, item 3): what a trial recorded, the one field git
derives for it (``landed_in``, an upper bound on its code), and the counts the reports show."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.backfill_provenance import backfill_rows, landed_in
from sidrec_core.studies.provenance import (
    LANDED_IN,
    SIDECAR,
    counts,
    read_backfill,
    recorded,
    trial_key_of,
)
from sidrec_core.studies.storage import make_storage, read_storage

ROOT = Path(__file__).resolve().parents[1]
FULL = {
    "level_spec": {"fixed": {}, "level": {"sasrec.negatives": "mixed"}},
    "provenance": {"commit": "abc", "worktree_dirty": False, "packages": {"torch": "2"}},
    "metrics": {"trial_key": "k", "sha256/read/prepared": "s", "sha256/wrote/sasrec": "w"},
}


def test_recorded_reads_each_field_from_the_trial():
    full = optuna.trial.create_trial(value=0.1, user_attrs=FULL)
    assert all(recorded(full).values())
    bare = optuna.trial.create_trial(value=0.1, user_attrs={"metrics": {"sha256/wrote/x": "w"}})
    assert not any(recorded(bare).values())  # a fingerprint of its own output is no input's
    dirty_unknown = {**FULL, "provenance": {"commit": "abc", "worktree_dirty": None}}
    partial = recorded(optuna.trial.create_trial(value=0.1, user_attrs=dirty_unknown))
    assert partial["commit"] is False and partial["packages"] is False and partial["trial_key"]


def _git(repo: Path, *args: str) -> str:
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def _add(storage: str, value: float) -> None:
    ostudy = optuna.create_study(
        study_name="negatives-beauty", storage=storage, load_if_exists=True
    )
    ostudy.add_trial(optuna.trial.create_trial(value=value, user_attrs={"wall_seconds": 1.0}))


def test_landed_in_is_the_first_commit_whose_storage_holds_the_trial_across_a_migration(
    tmp_path,
):
    repo, folder = tmp_path, tmp_path / "exp" / "negatives"
    folder.mkdir(parents=True)
    _git(repo, "init", "-q")
    db = f"sqlite:///{folder / 'optuna.db'}"
    _add(db, 0.1)
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "trial 0 in the db")
    first = _git(repo, "rev-parse", "HEAD")
    # migrate to a journal (every field copied), then add a trial and commit again
    journal = str(folder / "optuna.jsonl")
    optuna.copy_study(
        from_study_name="negatives-beauty",
        from_storage=db,
        to_storage=make_storage(journal, create=True),
    )
    (folder / "optuna.db").unlink()
    _add(make_storage(journal), 0.2)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "migrated; trial 1")
    second = _git(repo, "rev-parse", "HEAD")
    got = landed_in(folder)
    by_number = {k[1]: v[0] for k, v in got.items()}
    assert by_number == {0: first, 1: second}
    # a third trial not committed yet has no landed_in: it is not invented
    _add(make_storage(journal), 0.3)
    rows = backfill_rows(tmp_path / "exp", ["negatives"])
    assert [r[LANDED_IN] for r in rows] == [first, second, None]
    assert rows[0]["not_recorded"] == [
        "commit",
        "packages",
        "level_spec",
        "trial_key",
        "fingerprints",
    ]


def test_counts_split_recorded_derived_and_not_recorded():
    full = optuna.trial.create_trial(value=0.1, user_attrs=FULL)
    bare = optuna.trial.create_trial(value=0.1, user_attrs={"wall_seconds": 1.0})
    failed = optuna.trial.create_trial(state=TrialState.FAIL)
    for number, t in enumerate((full, bare, failed)):
        t.number, t.datetime_start = number, dt.datetime(2026, 12, 1, 0, 0, number)
    backfill = {trial_key_of("s-beauty", bare): {LANDED_IN: "c0ffee"}}
    tally = counts([("s-beauty", [full, bare, failed])], backfill)
    assert tally["commit"] == (1, 0, 1) and tally["fingerprints"] == (1, 0, 1)
    assert tally[LANDED_IN] == (0, 1, 1)  # full has no sidecar row; the failed trial is no trial


def test_committed_sidecar_covers_every_committed_trial_honestly():
    """Every complete trial of every committed storage has a row; its landed_in is a commit of
    this history made after the trial started, and what it calls not recorded is not on it."""
    backfill = read_backfill(ROOT / "experiments")
    assert backfill, f"experiments/{SIDECAR} is committed with the storages it covers"
    seen = 0
    for journal in sorted((ROOT / "experiments").glob("*/optuna.jsonl")):
        storage = read_storage(str(journal))
        for name in optuna.get_all_study_names(storage):
            ostudy = optuna.load_study(study_name=name, storage=storage)
            for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                row = backfill[trial_key_of(name, t)]
                assert row["not_recorded"] == [f for f, ok in recorded(t).items() if not ok]
                landed = dt.datetime.fromisoformat(row["landed_at"]).replace(tzinfo=None)
                assert landed >= t.datetime_start, (name, t.number)
                seen += 1
    assert seen == len(backfill)
    commits = {row[LANDED_IN] for row in backfill.values()}
    for commit in commits:  # every landed_in is an ancestor of this checkout
        subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=ROOT, check=True)
    assert json.loads((ROOT / "experiments" / SIDECAR).read_text().splitlines()[0])["study"]


def test_index_totals_read_the_trials_and_the_sidecar(tmp_path):
    from sidrec_core.io import write_jsonl
    from sidrec_core.studies.index import write_index

    out = tmp_path / "exp"
    ostudy = optuna.create_study(
        study_name="negatives-beauty",
        storage=make_storage(str(out / "negatives" / "optuna.jsonl"), create=True),
    )
    ostudy.set_user_attr("dataset", "beauty")
    for seed, attrs in enumerate((FULL, {})):
        user_attrs = {**attrs, "grid_point": ["uniform", seed], "test/ndcg@10": 0.01}
        ostudy.add_trial(optuna.trial.create_trial(value=0.01, user_attrs=user_attrs))
    bare = ostudy.trials[1]
    write_jsonl(
        out / SIDECAR,
        [
            {
                "study": "negatives-beauty",
                "trial": 1,
                "datetime_start": str(bare.datetime_start),
                LANDED_IN: "c0ffee",
            }
        ],
    )
    lines = write_index(out).read_text().split("## Provenance of the committed trials")[1]
    rows = {
        ln.split(" | ")[0]: ln.split(" | ")[1:] for ln in lines.splitlines() if ln.startswith("| ")
    }
    assert rows["| commit and dirty flag"] == ["1", "—", "1 |"]
    assert rows["| `trial_key`"] == ["1", "—", "1 |"]
    assert [k for k in rows if "landed_in" in k] and next(
        v for k, v in rows.items() if "landed_in" in k
    ) == ["—", "1", "1 |"]
