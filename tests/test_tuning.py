"""Tuning mode on the smoke profile (synthetic corpus, tiny SASRec): the search finds a planted
better setting, a stopped search resumes without redoing trials, pruned trials are recorded."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from smoke_studies import complete_trial

from sidrec_core.lifecycle import process_start
from sidrec_core.studies import dvc_run, spaces, tune_report, tuning
from sidrec_core.studies.budget import TimeBudget
from sidrec_core.studies.runner import base_params
from sidrec_core.studies.spaces import Param, Tunable
from sidrec_core.studies.storage import WORKER, make_storage
from sidrec_core.studies.tuning import TuneOptions, run_tuning

ROOT = Path(__file__).resolve().parent.parent
# the trials' stages run in this process (tests/conftest.py), which reports to the trial as a
# stage DVC runs does
pytestmark = pytest.mark.usefixtures("stages_in_process")
# lr 1e-6 barely moves the weights in 4 epochs; 1e-2 learns the planted successor structure
PLANTED = Tunable(
    "planted",
    run=("train_sasrec",),
    reuse=("prepare",),
    space=(Param("sasrec.train.lr", (1e-6, 1e-2)),),
    starts=(({"sasrec.train.lr": 1e-6}, "a deliberately bad start"),),
    secondary=("num_parameters",),
)


def opts(tmp_path: Path, **kw) -> TuneOptions:
    kw.setdefault("pruner", "none")
    kw.setdefault("retrain_seeds", 2)
    kw.setdefault("profile", "smoke")
    return TuneOptions(out_dir=str(tmp_path / "exp"), params_file=str(ROOT / "params.yaml"), **kw)


def trials(o: TuneOptions, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(
        study_name=f"tune-{name}-smoke", storage=make_storage(o.tune_storage(name))
    ).get_trials()


def test_search_finds_planted_setting_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setitem(spaces.TUNABLES, "planted", PLANTED)
    o = opts(tmp_path, n_trials=6, max_trials=2)
    first = run_tuning("planted", o)
    assert first["finished"] == 2 and "retrain" not in first  # budget not used yet
    done = {t.number: t.datetime_complete for t in trials(o, "planted")}
    assert trials(o, "planted")[0].params == {"sasrec.train.lr": 1e-6}  # the queued start
    o.max_trials = None
    summary = run_tuning("planted", o)
    assert summary["finished_before"] == 2 and summary["finished"] == 6
    for t in trials(o, "planted"):  # the first launch's trials were not redone
        if t.number in done:
            assert t.datetime_complete == done[t.number]
    assert len(trials(o, "planted")) == 6
    assert summary["best_params"] == {"sasrec.train.lr": 1e-2}
    bad = [t.value for t in trials(o, "planted") if t.params["sasrec.train.lr"] == 1e-6]
    assert summary["best_value"] > max(bad) + 0.05
    assert sorted(summary["retrain"]) == ["0", "1"]
    assert all("test/ndcg@10" in m for m in summary["retrain"].values())
    ran = trials(o, "planted")
    assert ran[0].user_attrs[tuning.START] == "a deliberately bad start"  # why it was queued
    assert tune_report.pruners_used(ran) == "none: trials 0-5"  # each trial's pruner, grouped
    stored = optuna.load_study(
        study_name="tune-planted-smoke", storage=make_storage(o.tune_storage("planted"))
    )
    assert tune_report.importances(stored) == {"sasrec.train.lr": pytest.approx(1.0)}
    folder = tmp_path / "exp" / "tune" / "planted"
    report = (folder / "report_smoke.md").read_text()
    assert tune_report.pruners_used(ran) in report and ran[0].user_attrs[tuning.START] in report
    first = next(line for line in report.splitlines() if line.startswith("| 0 | complete |"))
    test_ndcg = trials(o, "planted")[0].user_attrs["test/ndcg@10"]
    assert f"| {tune_report._fmt(test_ndcg)} |" in first  # the history row shows the test figure
    size = trials(o, "planted")[0].user_attrs["num_parameters"]  # and the secondary metric
    assert "| num_parameters |" in report and f"| {tune_report._fmt(size)} |" in first
    assert all("num_parameters" in m for m in summary["retrain"].values())
    best = yaml.safe_load((folder / "smoke_best_params.yaml").read_text())
    assert best["sasrec"]["train"]["lr"] == 1e-2 and best["data"]["name"] == "synthetic"
    assert sorted(summary["retrain_default"]) == ["0", "1"]  # the default, same seeds
    assert "## Best against the default, paired over seeds" in report
    assert "adopt its params" in report or "keep the default" in report


def _retrained(values: list[float]) -> dict[str, dict[str, float]]:
    return {str(s): {"valid/ndcg@10": v, "test/ndcg@10": v} for s, v in enumerate(values)}


def test_the_best_is_adopted_only_when_it_beats_the_default_beyond_seed_noise():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lr = optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"sasrec.train.lr": 0.0123}, distributions={"sasrec.train.lr": lr}, value=0.05
        )
    )
    default = _retrained([0.040, 0.041, 0.042])
    better = _retrained([0.045, 0.047, 0.046])  # +.005, .006, .004
    text = "\n".join(tune_report.versus_default(study, params, better, default))
    assert "| valid/ndcg@10 | 0.0460 | 0.0410 | 0.0050 ± 0.0025 |" in text
    assert "adopt its params" in text
    noisy = _retrained([0.045, 0.037, 0.046])  # one seed below
    assert "keep the default" in "\n".join(
        tune_report.versus_default(study, params, noisy, default)
    )
    default_lr = tuning.flatten(tuning.resolve_params(params))["sasrec.train.lr"]
    same = optuna.create_study(direction="maximize")
    same.add_trial(
        optuna.trial.create_trial(
            params={"sasrec.train.lr": default_lr},
            distributions={"sasrec.train.lr": lr},
            value=0.05,
        )
    )
    assert tuning.best_is_default(same, params) and not tuning.best_is_default(study, params)


def test_a_retrain_that_would_overrun_the_time_budget_waits(tmp_path, monkeypatch):
    monkeypatch.setitem(spaces.TUNABLES, "planted", PLANTED)
    run_tuning("planted", opts(tmp_path, n_trials=3, max_trials=2))
    spent = TimeBudget(deadline=time.time())
    summary = run_tuning("planted", opts(tmp_path, n_trials=2, budget=spent))
    assert summary["finished"] == 2 and summary["retrain"] == {}
    assert not (tmp_path / "exp" / "tune" / "planted" / "smoke" / "retrain").exists()


def test_workers_sharing_a_search_split_the_retrain_seeds(tmp_path, monkeypatch):
    """Retrain seeds are queued trials: a seed another live worker runs is left to it, one it
    finished is merged in, and the seed of a worker that died is failed and queued again."""
    monkeypatch.setitem(spaces.TUNABLES, "planted", PLANTED)
    o = opts(tmp_path, n_trials=3, max_trials=2, retrain_seeds=3)
    run_tuning("planted", o)
    ostudy, params = tuning.open_search(PLANTED, o), base_params(o)
    best = ostudy.best_trial.params
    retrains = tuning.open_retrains(PLANTED, o)
    for seed in (1, 2):  # another worker took seeds 1 and 2 and finished seed 2
        point = tuning.retrain_point("best", seed, best)
        retrains.enqueue_trial(point, user_attrs=point)
    other = subprocess.Popen(["sleep", "120"])
    try:
        busy, done = retrains.ask(), retrains.ask()
        busy.set_user_attr(WORKER, f"{socket.gethostname()}:{other.pid}:{process_start(other.pid)}")
        done.set_user_attr("metrics", {"valid/ndcg@10": 0.5})
        retrains.tell(done, 0.5)
        ran: list[int] = []
        run_trial = dvc_run.run_trial

        def spy(*args, **kwargs):
            ran.append(args[2]["base"]["seed"])
            return run_trial(*args, **kwargs)

        monkeypatch.setattr(dvc_run, "run_trial", spy)
        got = tuning.retrain(PLANTED, ostudy, params, o)
        assert ran == [0] and sorted(got) == ["0", "2"]  # seed 1 is the live worker's
        assert got["2"] == {"valid/ndcg@10": 0.5} and "test/ndcg@10" in got["0"]
    finally:
        other.kill()
        other.wait()
    got = tuning.retrain(PLANTED, ostudy, params, o)  # its process is gone: seed 1 runs here
    assert ran == [0, 1] and sorted(got) == ["0", "1", "2"]
    states = [t.state for t in retrains.get_trials() if t.user_attrs.get("seed") == 1]
    assert states == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_search_whose_trials_fail_in_a_row_stops(tmp_path, monkeypatch, capsys):
    broken = dataclasses.replace(PLANTED, space=(Param("sasrec.train.no_such", (1e-6, 1e-2)),))
    monkeypatch.setitem(spaces.TUNABLES, "planted", broken)
    summary = run_tuning("planted", opts(tmp_path, n_trials=6))
    assert summary["failed"] == 3 and summary["finished"] == 0
    assert summary["stopped_on_failures"].startswith("3 trials in a row failed, the last with: ")
    assert "no_such" in summary["stopped_on_failures"]


def test_pruned_trials_are_recorded_as_pruned(tmp_path, monkeypatch):
    monkeypatch.setitem(spaces.TUNABLES, "planted", PLANTED)
    # NDCG never reaches 2: every trial is pruned at its first reported epoch
    monkeypatch.setattr(
        tuning, "make_pruner", lambda name, epochs: optuna.pruners.ThresholdPruner(lower=2.0)
    )
    o = opts(tmp_path, n_trials=2)
    summary = run_tuning("planted", o)
    ts = trials(o, "planted")
    assert summary["pruned"] == 2 and all(t.state == TrialState.PRUNED for t in ts)
    assert all(list(t.intermediate_values) == [1] for t in ts)  # reported epoch 1, then stopped


def test_no_trial_is_pruned_before_a_quarter_of_its_epochs():
    study = optuna.create_study(direction="maximize", pruner=tuning.make_pruner("median", 20))
    for _ in range(5):
        done = study.ask()
        for epoch in range(1, 21):
            done.report(1.0, epoch)
        study.tell(done, 1.0)
    slow = study.ask()  # below the median at every epoch
    prunable = []
    for epoch in range(1, 8):
        slow.report(0.0, epoch)
        prunable.append(slow.should_prune())
    assert prunable == [False] * 4 + [True] * 3  # kept through epoch 4, pruned from epoch 5
    assert tuning.first_prunable_epoch(8) == 3
    assert tuning.pruner_text("median", 20) == "median, from epoch 5 of 20"
    assert tune_report._ranges([5, 0, 2, 1]) == "0-2, 5"


def test_unknown_model_and_bad_options_fail_clearly(tmp_path):
    with pytest.raises(KeyError, match="unknown model 'bert4rec'"):
        run_tuning("bert4rec", opts(tmp_path))
    with pytest.raises(ValueError, match="--pruner"):
        opts(tmp_path, pruner="asha")


def test_conditional_param_is_searched_only_where_it_applies():
    tun = Tunable(
        "cond",
        run=("train_sasrec",),
        reuse=("prepare",),
        space=(
            Param("sasrec.loss", ("ce", "bce_shared")),
            Param("sasrec.bce_shared_balanced", (True, False), when=("sasrec.loss", "bce_shared")),
        ),
    )
    shared = {"sasrec.loss": "bce_shared", "sasrec.bce_shared_balanced": False}
    assert tun.suggest(optuna.trial.FixedTrial(shared)) == shared
    # FixedTrial raises on a param it was not given: "ce" never asks for the weighting
    assert tun.suggest(optuna.trial.FixedTrial({"sasrec.loss": "ce"})) == {"sasrec.loss": "ce"}


@pytest.mark.parametrize("name", sorted(spaces.TUNABLES))
def test_queued_starts_are_exact_points_of_the_space_ending_with_the_launch_default(name):
    tun = spaces.TUNABLES[name]
    params = base_params(opts(Path("unused"), profile="beauty"))
    starts = tuning.queued_starts(tun, params)
    for start, source in starts:
        assert source and tun.suggest(optuna.trial.FixedTrial(start)) == start
    resolved = tuning.flatten(tuning.resolve_params(params))
    default = next(start for start, source in starts if source == tuning.DEFAULT_START)
    assert default == {k: resolved[k] for k in default}


def test_the_default_start_follows_the_launch_and_is_dropped_outside_the_space():
    tun = spaces.TUNABLES["sidlm"]
    moved = base_params(opts(Path("unused"), profile="beauty", sets=["sidlm.train.lr=0.001"]))
    assert tun.default_point(moved)["sidlm.train.lr"] == 0.001
    outside = base_params(opts(Path("unused")))  # the smoke profile's hidden size 32
    assert tun.default_point(outside) is None
    assert tuning.queued_starts(tun, outside) == list(tun.starts)
    assert Param("x", (0.0, 0.1)).contains(0.1) and not Param("x", (0, 1)).contains(True)
    assert Param("x", low=1e-3, high=1e-2).contains(5e-3) and not Param(
        "x", low=1, high=2
    ).contains(3)


def test_progress_line_names_the_trial_the_best_and_the_eta():
    ostudy = optuna.create_study(direction="maximize", study_name="tune-x-smoke")
    ostudy.ask()  # one running trial, nothing finished
    assert tuning.progress_line(ostudy, 4).endswith("best —; finished 0/4; ETA unknown")
    ostudy = optuna.create_study(direction="maximize", study_name="tune-x-smoke")
    ostudy.optimize(lambda t: t.suggest_float("a", 0, 1), n_trials=2)
    best = ostudy.best_trial.number
    line = tuning.progress_line(ostudy, 5)
    assert line.startswith("tune-x-smoke: trial #1 complete ")
    assert f"(#{best})" in line and "finished 2/5" in line and "ETA 0 min" in line
    pruned = ostudy.ask({"a": optuna.distributions.FloatDistribution(0, 1)})
    ostudy.tell(pruned, state=TrialState.PRUNED)  # a pruned trial uses the budget too
    ostudy.ask()  # another worker's trial, newer than the one this line is about
    line = tuning.progress_line(ostudy, 5, ostudy.trials[1])
    assert line.startswith("tune-x-smoke: trial #1 complete ") and "finished 3/5" in line


def test_a_failed_queued_start_is_queued_again_and_a_finished_one_is_not():
    study = optuna.create_study(direction="maximize")
    attrs = {tuning.START: "a deliberately bad start"}
    tuning.enqueue_once(study, {"x": 1.0}, attrs)
    tuning.enqueue_once(study, {"x": 1.0}, attrs)  # already queued: not twice
    killed = study.ask()
    study.tell(killed, state=TrialState.FAIL)
    tuning.enqueue_once(study, {"x": 1.0}, attrs)  # every trial of the start failed: queued again
    again = study.ask()
    assert again.params == {} and again.user_attrs == attrs
    assert study.trials[again.number].system_attrs.get("fixed_params") == {"x": 1.0}
    study.tell(again, 0.5)
    tuning.enqueue_once(study, {"x": 1.0}, attrs)  # measured: not queued again
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]


def ran(point: dict, secs: float, epochs: int) -> optuna.trial.FrozenTrial:
    """A complete trial of ``point`` that reported ``epochs`` validations in ``secs`` seconds."""
    return complete_trial(secs, point, epochs=epochs)


def test_the_budget_expects_a_sampled_trial_at_the_costliest_point_of_the_space(tmp_path):
    """A narrow 10-epoch trial took 600 s, a wide one 4,000 s for the 20 epochs it trained before
    stopping early. TPE may draw the wide 30-epoch point next: 200 s x 30 = 6,000 s. The median
    trial (2,300 s) would start it 50 minutes before the deadline; a retrain of a trial that ran
    costs that trial's pace at its own epochs."""
    wide = Tunable(
        "wide",
        run=("train_sasrec",),
        reuse=("prepare",),
        epochs_key="sasrec.train.epochs",
        space=(Param("sasrec.hidden_dim", (64, 128)), Param("sasrec.train.epochs", (10, 30))),
    )
    params, ostudy = base_params(opts(tmp_path)), optuna.create_study(direction="maximize")
    assert tuning.expected_seconds(wide, ostudy, params) == []  # unknown until a trial ran
    narrow = {"sasrec.hidden_dim": 64, "sasrec.train.epochs": 10}
    ostudy.add_trial(ran(narrow, 600, 10))
    ostudy.add_trial(ran({"sasrec.hidden_dim": 128, "sasrec.train.epochs": 30}, 4000, 20))
    assert tuning.expected_seconds(wide, ostudy, params) == [6000.0]
    assert not TimeBudget(deadline=time.time() + 3000).allows([6000.0])
    assert tuning.expected_seconds(wide, ostudy, params, narrow) == [600.0]
    best = {"sasrec.hidden_dim": 128, "sasrec.train.epochs": 30}
    assert tuning.expected_seconds(wide, ostudy, params, best) == [6000.0]  # all 30 epochs
    unseen = {"sasrec.hidden_dim": 64, "sasrec.train.epochs": 30}
    assert tuning.expected_seconds(wide, ostudy, params, unseen) == [6000.0]
    # a model without epochs: the slowest whole trial, whatever its reported steps
    assert tuning.expected_seconds(PLANTED, ostudy, params) == [4000.0]


def test_a_failed_trial_shows_no_minutes_in_the_history():
    """A trial whose worker died is failed by a later launch, hours on: that wall time is not
    what it ran. A complete trial shows its minutes and last reported epoch."""
    point = {"sasrec.train.lr": 1e-2}
    done = ran(point, 600, 4)
    dead = ran(point, 3 * 3600, 1)
    dead.state, dead.value = TrialState.FAIL, None
    assert tune_report.history_row(PLANTED, done).split(" | ")[-3:-1] == ["4", "10.0"]
    assert tune_report.history_row(PLANTED, dead).split(" | ")[1:3] == ["fail", "—"]
    assert tune_report.history_row(PLANTED, dead).split(" | ")[-3:-1] == ["1", "—"]
