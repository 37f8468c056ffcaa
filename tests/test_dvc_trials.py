"""Trials through DVC: each runs ``dvc repro`` of its stages in a git worktree of this working
copy, and DVC's run-cache restores what already ran (a resumed trial, another study's level).
The tests that spawn DVC are marked slow; the deps a trial adds to its copy of ``dvc.yaml`` are
checked without it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from smoke_studies import complete_points, opts, trials_of

from sidrec_core.stages.context import TRIAL_ENV
from sidrec_core.studies.dvc_run import (
    OUTS,
    UPSTREAM_OUTS,
    StageFailed,
    cached,
    extra_deps,
    git,
    resume_folder,
    run_trial,
    sweep_worktrees,
)
from sidrec_core.studies.index import spent_seconds
from sidrec_core.studies.pipeline import ancestors, load_pipeline
from sidrec_core.studies.profiles import load_profile, with_overrides
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.runner import StudyOptions, run_study
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import grid_point, trial_level
from sidrec_core.studies.trial_resume import (
    RESUMED_EPOCHS,
    RESUMED_SECONDS,
    STALE_DAYS,
    resume_root,
    saved_seconds,
    saved_training,
    sweep,
)

ROOT = Path(__file__).resolve().parent.parent


def level_deps(study: str, level: str) -> dict[str, list[str]]:
    """The deps a trial of ``study`` at ``level`` adds to its stages (Beauty params)."""
    s = STUDIES[study]
    params = with_overrides(load_profile("beauty", {}), {**s.fixed, **s.level(level).overrides})
    return extra_deps(s.run, s.reuse, params, load_pipeline())


def test_a_trials_upstream_is_every_stage_its_stages_read_from_directly_or_not():
    pipeline = load_pipeline()
    grpo = ["prepare", "embed", "build_sids", "train_sidlm", "train_sasrec"]
    assert ancestors(["rl_sidlm"], pipeline) == grpo
    assert ancestors(["train_sidlm", "eval_sidlm"], pipeline) == grpo[:3]  # not its own stages
    assert ancestors(["prepare"], pipeline) == []


def test_a_rerouted_tokenizer_input_becomes_a_dep_of_build_sids():
    """``sid.embeddings`` pointed at the collaborative table: build_sids depends on the table
    item_embeddings writes (DVC runs it first and keys build_sids by it); the text level reads
    the listed dep, and no stage gains a dep on a later stage's out (train_sidlm reads the
    predictions folder's name, not eval_sidlm's output)."""
    assert level_deps("sid_input", "text") == {}
    assert level_deps("sid_input", "collaborative") == {
        "build_sids": ["data/item_embeddings/collaborative.npy"]
    }
    assert level_deps("sid_input", "both") == {"build_sids": ["data/item_embeddings/both.npy"]}


def test_a_key_is_a_dep_only_of_the_stage_whose_params_name_it_most_specifically():
    """``rpg.sid.embeddings`` is build_rpg_sids' input (params ``rpg.sid``); eval_rpg reads
    all of ``rpg`` but never the embeddings, so it gains no dep on them. The default (both)
    is the listed dep; the text level reads embed's out instead."""
    assert level_deps("rpg_input", "both") == {}
    assert level_deps("rpg_input", "text") == {"build_rpg_sids": ["data/embeddings.npy"]}
    assert level_deps("rpg_decoding", "graph") == {}
    assert level_deps("rpg_input", "collaborative") == {
        "build_rpg_sids": ["data/item_embeddings/collaborative.npy"]
    }


def test_an_input_of_a_reused_stage_is_added_only_where_the_study_builds_it():
    """sid_features' SASRec reads the SID table build_sids makes (reused by the study); a SASRec
    study that does not build SIDs adds nothing, and ETEGRec's collaborative input is a listed
    dep already, while its text input is not."""
    assert level_deps("sid_features", "sum") == {"train_sasrec": ["data/sids"]}
    assert level_deps("sasrec_loss", "ce") == {}
    assert level_deps("etegrec", "alternating") == {}
    s = STUDIES["etegrec"]
    text = with_overrides(load_profile("beauty", {}), {"sid.embeddings": "data/embeddings.npy"})
    deps = extra_deps(s.run, s.reuse, text, load_pipeline())
    assert deps == {"train_etegrec": ["data/embeddings.npy"]}


def test_every_added_dep_is_a_tokenizer_or_sid_table_input():
    """Across every study level on the beauty profile: device, schedule or method strings never
    become deps."""
    seen = set()
    for study in STUDIES.values():
        if study.setup:  # needs a local checkpoint to resolve
            continue
        for level in study.labels:
            for paths in level_deps(study.name, level).values():
                seen |= set(paths)
    assert seen == {
        "data/embeddings.npy",  # rpg_input's text level (RPG's default reads both)
        "data/item_embeddings/collaborative.npy",
        "data/item_embeddings/both.npy",
        "data/sids",
    }


def test_git_waits_for_another_processs_index_lock_and_names_it_when_it_stays(tmp_path):
    """Two workers starting together both refresh the index: the one that finds the other's
    lock retries instead of failing its trial; a lock that never goes is the error."""
    git("init", "-q", cwd=tmp_path)
    (tmp_path / "f").write_text("a")
    git("-c", "user.name=t", "-c", "user.email=t@t", "add", "f", cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c", cwd=tmp_path)
    (tmp_path / "f").write_text("b")
    lock = tmp_path / ".git" / "index.lock"
    lock.touch()
    release = threading.Timer(0.5, lock.unlink)
    release.start()
    stash = git("-c", "user.name=t", "-c", "user.email=t@t", "stash", "create", cwd=tmp_path)
    release.join()
    assert git("cat-file", "-t", stash, cwd=tmp_path) == "commit"
    lock.touch()
    with pytest.raises(
        RuntimeError, match=r"^git stash create in .*index\.lock is held by another git process\)$"
    ):
        git("stash", "create", cwd=tmp_path, tries=2)


def kill_mid_trial(cmd: list[str], env: dict[str, str], o: StudyOptions) -> tuple[list, list[int]]:
    """Launch the worker and SIGKILL it once the storage shows one trial complete and another
    running (however long that takes: the wait ends on that event or on the worker's exit);
    return the trials as the kill left them and the killed workers' pids. A trial can finish
    between the poll that saw it running and the kill: such a kill left nothing running, so a new
    worker (resuming the study) is launched and killed again."""
    journal = Path(o.storage_url_for("sasrec_loss"))
    killed = []
    for _ in range(3):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        killed.append(proc.pid)
        reached = False
        while not reached and proc.poll() is None:
            time.sleep(0.2)
            try:
                states = [t.state for t in trials_of(o, "sasrec_loss")] if journal.exists() else []
            except KeyError:  # the worker is still creating the study
                continue
            reached = TrialState.COMPLETE in states and TrialState.RUNNING in states
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert reached, f"the worker ended (exit {proc.returncode}) before a mid-study state"
        trials = trials_of(o, "sasrec_loss")
        if any(t.state == TrialState.RUNNING for t in trials):
            return trials, killed
    raise AssertionError("three kills in a row landed between two trials")


@pytest.mark.slow
def test_resume_after_kill_runs_only_remaining(tmp_path):
    """A worker process killed mid-trial (SIGKILL): the next launch fails its trial (its process
    is gone), queues the point again and runs only the remaining points."""
    out = tmp_path / "exp"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "ablate.py"),
        "--study",
        "sasrec_loss",
        "--profile",
        "smoke",
        "--n-seeds",
        "1",
        "--out",
        str(out),
    ]
    env = {**os.environ, "SIDREC_TRACKING": "0", "OMP_NUM_THREADS": "1"}
    o = opts(tmp_path, n_seeds=1)
    killed_trials, killed = kill_mid_trial(cmd, env, o)
    before = {t.number: t.datetime_complete for t in killed_trials}
    done_before = sum(d is not None for d in before.values())
    assert 1 <= done_before < 4, "the worker must die mid-study"
    summary = run_study("sasrec_loss", o)
    trials = trials_of(o, "sasrec_loss")
    assert summary["remaining_before"] == 4 - done_before and summary["remaining_after"] == 0
    assert complete_points(trials) == sorted(
        (lv, 0) for lv in ("bce", "infonce", "ce", "sampled_softmax")
    )
    for t in trials:  # finished trials were not redone
        if before.get(t.number) is not None:
            assert t.datetime_complete == before[t.number]
    assert sum(t.state == TrialState.FAIL for t in trials) == 1  # the killed one, retried
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4  # nothing ran twice
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True).stdout
    for pid in killed:  # the killed workers' were swept (other live workers keep theirs)
        assert f"sidrec-trial-{pid}-".encode() not in worktrees


@pytest.mark.slow
def test_dvc_restores_a_trial_it_ran_and_reruns_what_changed(tmp_path):
    """DVC's run-cache, not the harness, caches: the same trial again (a resumed trial, another
    study's level at the same settings) restores its stages with the figures measured when they
    ran; a changed params section re-runs the stage that reads it."""
    up = with_overrides(load_profile("smoke", {}), {"base.seed": 0})
    first = run_trial(("baselines",), ("prepare",), up, tmp_path / "a")
    again = run_trial(("baselines",), ("prepare",), up, tmp_path / "b")
    assert first["cached_stages"] == 0 and again["cached_stages"] == 1
    assert first["spent_seconds"] == first["wall_seconds"] > 0 and again["spent_seconds"] == 0
    assert again == {
        **first,
        "cached_stages": 1.0,
        "spent_seconds": 0.0,
        "upstream_spent_seconds": 0.0,
    }
    # the upstream stage's outs, which the next trial's budget finds in this machine's cache
    assert first["upstream_seconds"] > 0 and len(first[UPSTREAM_OUTS]) == 1
    assert cached(first[UPSTREAM_OUTS]) and not cached(["0" * 32 + ".dir"])
    assert first[OUTS] == []  # `baselines` writes metrics only, which DVC does not cache
    prepare = run_trial(("prepare",), (), up, tmp_path / "p")  # restored: its out is cached
    assert prepare[OUTS] == first[UPSTREAM_OUTS] and prepare["cached_stages"] == 1
    assert (tmp_path / "b" / "metrics" / "baselines.json").exists()
    other = with_overrides(up, {"eval.exclude_seen": True})
    third = run_trial(("baselines",), ("prepare",), other, tmp_path / "c")
    assert third["cached_stages"] == 0 and third["trial_key"] != first["trial_key"]
    assert third["mostpop/test/ndcg@10"] != first["mostpop/test/ndcg@10"]
    left = Path(tempfile.gettempdir()).glob(f"sidrec-trial-{os.getpid()}-*")
    assert not list(left)  # every trial's worktree removed


@pytest.mark.slow
def test_a_trial_killed_mid_training_resumes_on_its_next_attempt_and_ends_as_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    """The stage of a trial is killed (SIGKILL) after its first epochs: the next attempt of the
    same trial continues after the last epoch its resume state holds, counts that training in its
    cost, removes the state, and scores exactly what an uninterrupted run scores."""
    params = with_overrides(load_profile("smoke", {}), {"base.seed": 0, "sasrec.train.epochs": 40})
    root = resume_root(os.environ["SIDREC_DVC_CACHE"])
    killed = threading.Event()

    def kill_after_first_epochs() -> None:  # a stopped worker, a session's end
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed.is_set():
            states = list(root.glob("*/*.pt"))
            if states and saved_training(states[0])[0] >= 2:
                for pgid in Path(tempfile.gettempdir()).glob(f"sidrec-trial-{os.getpid()}-*/pgid"):
                    os.killpg(int(pgid.read_text()), signal.SIGKILL)
                killed.set()
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_after_first_epochs, daemon=True)
    watcher.start()
    with pytest.raises(StageFailed):
        run_trial(("train_sasrec",), ("prepare",), params, tmp_path / "a")
    watcher.join()
    assert killed.is_set() and len(list(root.glob("*/*.pt"))) == 1  # the state outlives it
    # where a worker's time budget looks for it, and what it holds
    (state,) = resume_folder(("train_sasrec",), ("prepare",), params).glob("*.pt")
    assert saved_seconds(state.parent) == saved_training(state)[1] > 0
    resumed = run_trial(("train_sasrec",), ("prepare",), params, tmp_path / "b")
    assert 2 <= resumed[RESUMED_EPOCHS] < 40 and resumed[RESUMED_SECONDS] > 0
    assert not list(root.iterdir())  # a finished trial leaves no resume state
    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path / "other-cache"))  # nothing restored
    whole = run_trial(("train_sasrec",), ("prepare",), params, tmp_path / "c")
    assert RESUMED_EPOCHS not in whole and whole["cached_stages"] == 0
    assert resumed["test/ndcg@10"] == whole["test/ndcg@10"]
    assert resumed["test/hr@10"] == whole["test/hr@10"]


def test_a_resume_state_nothing_wrote_to_for_two_weeks_is_swept(tmp_path):
    """A trial killed mid-training and never run again (its level dropped, its code changed)
    leaves its resume folder: swept once neither the folder nor a state in it was written for
    ``STALE_DAYS``; a state written since, or an empty folder just made, stays."""
    weeks = time.time() - (STALE_DAYS + 1) * 86400.0
    for name, states in (("gone", 2), ("resumed", 2), ("new", 0)):
        (tmp_path / name).mkdir()
        for i in range(states):
            (tmp_path / name / f"{i}.pt").write_bytes(b"state")
            os.utime(tmp_path / name / f"{i}.pt", (weeks, weeks))
        if name != "new":
            os.utime(tmp_path / name, (weeks, weeks))
    (tmp_path / "resumed" / "1.pt").write_bytes(b"a later epoch")
    assert sweep(tmp_path) == [tmp_path / "gone"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "resumed"]
    assert sweep(tmp_path / "none") == []


@pytest.mark.slow
def test_two_workers_never_duplicate_grid_points(tmp_path):
    o = opts(tmp_path, n_seeds=2, workers=2, report=False)
    run_study("exclude_seen", o)
    trials = trials_of(o, "exclude_seen")
    points = complete_points(trials)
    assert points == sorted(set(points)) and len(points) == 4
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 1 and all(":" in w for w in workers)


@pytest.mark.slow
def test_a_trial_another_study_ran_is_restored_not_rerun(tmp_path):
    """negatives' default (BCE, uniform negatives) is sasrec_loss's bce level: once sasrec_loss
    ran it, DVC restores its train_sasrec for negatives (same figures, nothing spent)."""
    run_study("sasrec_loss", opts(tmp_path, n_seeds=1, max_trials=2))  # ce (default), bce
    (bce,) = [t for t in trials_of(opts(tmp_path), "sasrec_loss") if grid_point(t)[0] == "bce"]
    assert bce.state.name == "COMPLETE" and bce.user_attrs["metrics"]["trial_key"]
    run_study("negatives", opts(tmp_path, n_seeds=1, max_trials=2))
    done = {
        trial_level(t): t.user_attrs["metrics"]
        for t in trials_of(opts(tmp_path), "negatives")
        if t.state.name == "COMPLETE"
    }
    assert set(done) == {"uniform", "popular"}
    assert done["uniform"]["test/ndcg@10"] == bce.user_attrs["metrics"]["test/ndcg@10"]
    assert done["uniform"]["trial_key"] == bce.user_attrs["metrics"]["trial_key"]
    assert done["uniform"]["cached_stages"] == 1 and done["uniform"]["spent_seconds"] == 0
    ran = [t for t in trials_of(opts(tmp_path), "negatives") if t.state.name == "COMPLETE"]
    spent = {trial_level(t): spent_seconds(t) for t in ran}
    took = {trial_level(t): (t.datetime_complete - t.datetime_start).total_seconds() for t in ran}
    assert spent["uniform"] == took["uniform"]  # the restore, not the bce level's training
    assert spent["popular"] == max(took["popular"], done["popular"]["wall_seconds"]) > 0
    assert done["popular"]["trial_key"] != done["uniform"]["trial_key"]


@pytest.mark.slow
def test_a_tuning_trial_is_pruned_inside_the_stage_dvc_runs(tmp_path):
    """The stage DVC runs reports each validation to the trial the tuner names
    (``SIDREC_OPTUNA_TRIAL``) and stops when that trial's pruner says so; the failed repro's
    output says it was pruned, and the reported epochs are in the storage."""
    journal = str(tmp_path / "search.jsonl")
    study = optuna.create_study(
        study_name="s", storage=make_storage(journal, create=True), direction="maximize"
    )
    for _ in range(5):  # five finished trials far above what 4 smoke epochs reach
        above = {epoch: 2.0 for epoch in range(1, 5)}
        study.add_trial(optuna.trial.create_trial(value=2.0, intermediate_values=above))
    trial = study.ask()
    spec = {"storage": journal, "study": "s", "trial": trial.number, "pruner": "median"}
    env = {TRIAL_ENV: json.dumps({**spec, "epochs": 4})}  # median, from epoch 3 of 4
    params = with_overrides(load_profile("smoke", {}), {"base.seed": 0})
    with pytest.raises(StageFailed) as failed:
        run_trial(("train_sasrec",), ("prepare",), params, tmp_path / "t", env)
    assert any("TrialPruned: pruned after epoch 3" in line for line in failed.value.lines)
    assert list(study.trials[-1].intermediate_values) == [1, 2, 3]
    assert not list(resume_root(os.environ["SIDREC_DVC_CACHE"]).iterdir())  # it never continues


@pytest.mark.slow
def test_sweep_removes_the_locked_worktree_of_a_worker_killed_while_creating_it():
    """`git worktree add` locks the tree ("initializing") until it is done; a worker SIGKILLed
    then leaves it locked, and the next launch's sweep must still remove it."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid names a worker that is gone
    folder = Path(tempfile.mkdtemp(prefix=f"sidrec-trial-{dead.pid}-"))
    tree = folder / "repo"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree)], cwd=ROOT, check=True)
    subprocess.run(["git", "worktree", "lock", "--reason", "initializing", str(tree)], cwd=ROOT)
    sweep_worktrees()
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True)
    assert str(tree) not in listed.stdout and not folder.exists()


@pytest.mark.slow
def test_sweep_never_fails_on_a_dead_workers_tree_that_is_still_written():
    """A file written into a dead worker's tree while it is removed ("Directory not empty") must
    not fail the trial that sweeps it: the stage group is ended and waited for, and a writer
    outside it (here one that runs on) cannot stop the tree from being pruned."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = Path(tempfile.mkdtemp(prefix=f"sidrec-trial-{dead.pid}-"))
    tree = folder / "repo"
    subprocess.run(["git", "worktree", "add", "--detach", str(tree)], cwd=ROOT, check=True)
    loop = f"i=0; while true; do i=$((i+1)); mkdir -p {tree}/w; : > {tree}/w/$i; done"
    stage = subprocess.Popen(["bash", "-c", loop], start_new_session=True)
    (folder / "pgid").write_text(str(stage.pid))
    stranger = subprocess.Popen(["bash", "-c", loop], start_new_session=True)
    try:
        time.sleep(0.3)
        sweep_worktrees()
        assert stage.wait(timeout=5) == -signal.SIGKILL  # the dead worker's stage was ended
    finally:
        stranger.kill()
        stranger.wait()
    shutil.rmtree(folder, ignore_errors=True)
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True)
    assert str(tree) not in listed.stdout


def test_a_failed_worktree_add_is_tried_again_then_raised(monkeypatch, tmp_path):
    from sidrec_core.studies import dvc_run

    calls: list[tuple[str, ...]] = []
    fails = {"left": 1}

    def fake_git(*args: str, cwd: Path = ROOT) -> str:
        calls.append(args[:2])
        if args[:2] == ("worktree", "add") and fails["left"]:
            fails["left"] -= 1
            raise RuntimeError("git worktree add: fatal: Could not write new index file.")
        return ""

    monkeypatch.setattr(dvc_run, "git", fake_git)
    monkeypatch.setattr(dvc_run.time, "sleep", lambda seconds: None)
    dvc_run.add_worktree(tmp_path / "repo", "abc123")
    assert calls.count(("worktree", "add")) == 2 and ("worktree", "prune") in calls
    fails["left"] = 5
    with pytest.raises(RuntimeError, match="Could not write new index file"):
        dvc_run.add_worktree(tmp_path / "repo", "abc123", attempts=3)
    assert fails["left"] == 2  # three tries, then the error
