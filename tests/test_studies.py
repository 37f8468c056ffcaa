"""Ablation bench: registry, grid coverage over seeds, level changes, budgets, nested MLflow runs,
reports — on the smoke profile (synthetic corpus, MostPop study), with the trials' stages called
in this process (``stages_in_process``; tests/test_dvc_trials.py runs them through DVC)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState
from smoke_studies import complete_points, complete_trial, opts, trials_of

from bench.ablate import main as ablate_main
from sidrec_core.config import ConfigError, load_params
from sidrec_core.metrics import encode_ranks
from sidrec_core.stages import resolve_params
from sidrec_core.stages.report import PUBLISHED
from sidrec_core.studies import dvc_run, runner
from sidrec_core.studies.budget import (
    STOP,
    FailureStreak,
    TimeBudget,
    expected_seconds,
    points_seconds,
    ran_here,
)
from sidrec_core.studies.defaults import departures, same_defaults
from sidrec_core.studies.elsewhere import Elsewhere
from sidrec_core.studies.fingerprints import broken_seeds
from sidrec_core.studies.index import (
    REPLICATE,
    Finding,
    effect_text,
    read_finding,
    replication,
    spent_seconds,
    write_index,
)
from sidrec_core.studies.pipeline import load_pipeline
from sidrec_core.studies.profiles import dvc_set_args, load_profile, with_overrides
from sidrec_core.studies.reference import goal_text, own_start_rows, user_ci
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import (
    STALE_NOTE,
    Cell,
    cell_text,
    compare_levels,
    is_pipeline_check,
    report_sections,
    significance_lines,
    summarize_trials,
    trial_records,
    write_study_report,
)
from sidrec_core.studies.rerun import RERUN_OF
from sidrec_core.studies.runner import (
    enqueue_missing,
    progress,
    queued_points,
    remaining,
    run_study,
)
from sidrec_core.studies.seeds import COST_TABLE
from sidrec_core.studies.stats import holm, mean_ci, paired_test
from sidrec_core.studies.storage import make_storage, sections
from sidrec_core.studies.study import (
    SID_QUALITY,
    Level,
    Reference,
    Study,
    grid_point,
    level_spec,
    live_point,
    one_key,
    trial_level,
    trial_seed,
)

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("stages_in_process")


def test_registry_is_well_formed_and_listed(capsys):
    for s in STUDIES.values():
        assert s.default in s.labels and len(s.labels) >= 2
        assert all(lv.overrides for lv in s.levels), s.name
        assert set(s.run) | set(s.reuse) <= set(load_pipeline())
        if s.reference is not None:  # the level that evaluated the starting model exists
            assert s.reference.level in STUDIES[s.reference.study].labels, s.name
        if s.group == "tokenizer":
            assert set(SID_QUALITY) <= set(s.secondary) and "build_sids" in s.run
        if s.group != "protocol":  # beams narrower than 10 report @5 only
            assert s.objective == ("valid/ndcg@5" if "beam" in s.name else "valid/ndcg@10")
    assert STUDIES["beam_width"].run == ("eval_sidlm",)  # reuses the trained SID LM
    assert "train_sidlm" in STUDIES["beam_width"].reuse
    assert ablate_main(["--list"]) == 0
    out = capsys.readouterr().out
    for s in STUDIES.values():
        assert s.name in out and s.factor in out
    assert "5, 10, 20*, 50, 100" in out
    with pytest.raises(ValueError, match="needs"):
        Study(
            "bad",
            "x",
            one_key("eval.exclude_seen", [False, True]),
            "off",
            run=("eval_sidlm",),
        )


def pipeline_and_levels(study: str) -> tuple[dict, dict[str, dict]]:
    """What ``dvc repro`` trains (params.yaml over the code defaults), and ``study``'s levels
    as {label: overrides}."""
    pipeline = resolve_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    return pipeline, {lv.label: lv.overrides for lv in STUDIES[study].levels}


def test_sasrec_details_plain_is_the_pipeline_default_and_each_other_level_changes_one_thing():
    """``plain`` must be what ``dvc repro`` trains (params.yaml over the code defaults), or the
    study would not measure cornac's details against this code's SASRec."""
    pipeline, levels = pipeline_and_levels("sasrec_details")
    assert resolve_params(with_overrides(pipeline, levels["plain"])) == pipeline
    cornac = levels["cornac"]
    assert all(levels["plain"][k] != v for k, v in cornac.items())
    for label, key in (
        ("no-bias", "sasrec.item_bias"),
        ("no-scale", "sasrec.emb_scale"),
        ("no-betas", "sasrec.train.betas"),
    ):
        assert levels[label] == {**cornac, key: levels["plain"][key]}, label
    assert levels["plain-no-stop"] == {**levels["plain"], "sasrec.train.patience": 0}


def test_sidlm_tuned_default_is_the_pipeline_default_and_search_t3_its_four_values():
    """The search's best is compared with what ``dvc repro`` trains; when params.yaml adopts
    it, the study's ``default`` level has to be renamed to the former default it measured."""
    pipeline, levels = pipeline_and_levels("sidlm_tuned")
    assert resolve_params(with_overrides(pipeline, levels["default"])) == pipeline
    assert levels["search-t3"].keys() == levels["default"].keys()
    assert all(levels["search-t3"][k] != v for k, v in levels["default"].items())


def test_sidlm_recipe_default_is_the_pipeline_default_and_all_joins_each_change():
    """Each change of the recipe alone differs from today's default in its own keys only, and
    ``all`` is the union of the changes."""
    pipeline, levels = pipeline_and_levels("sidlm_recipe")
    assert resolve_params(with_overrides(pipeline, levels["default"])) == pipeline
    default, joined = levels.pop("default"), levels.pop("all")
    changed = {
        label: {k: v for k, v in lv.items() if default[k] != v} for label, lv in levels.items()
    }
    assert all(changed.values()) and len(changed) == 5
    keys = [k for c in changed.values() for k in c]
    assert len(keys) == len(set(keys))  # no two changes touch the same key
    assert joined == {**default, **{k: v for c in changed.values() for k, v in c.items()}}


def test_profiles_set_their_name_and_dvc_args():
    params = load_profile("smoke", {"data": {"name": "beauty", "max_history": 20}})
    assert params["base"]["profile"] == "smoke" and params["data"]["name"] == "synthetic"
    assert params["data"]["max_history"] == 20  # untouched keys survive the merge
    args = dvc_set_args("smoke")
    assert args[0] == "-S" and "++base.profile=smoke" in args and "++data.name=synthetic" in args


def test_more_seeds_later_runs_only_the_new_seeds(tmp_path):
    run_study("exclude_seen", opts(tmp_path, n_seeds=1))
    first = {t.number for t in trials_of(opts(tmp_path), "exclude_seen")}
    summary = run_study("exclude_seen", opts(tmp_path, n_seeds=2))
    trials = trials_of(opts(tmp_path), "exclude_seen")
    assert complete_points(trials) == [(lv, s) for lv in ("off", "on") for s in (0, 1)]
    assert summary["failed"] == 0
    assert {trial_seed(t) for t in trials if t.number not in first} == {1}


def test_a_level_added_later_runs_only_the_new_level(tmp_path, monkeypatch):
    run_study("exclude_seen", opts(tmp_path))
    first = {t.number for t in trials_of(opts(tmp_path), "exclude_seen")}
    study = STUDIES["exclude_seen"]
    grown = dataclasses.replace(
        study, levels=(*study.levels, Level("on-again", {"eval.exclude_seen": True}))
    )
    monkeypatch.setitem(STUDIES, "exclude_seen", grown)
    summary = run_study("exclude_seen", opts(tmp_path))
    trials = trials_of(opts(tmp_path), "exclude_seen")
    levels = ("off", "on", "on-again")
    assert complete_points(trials) == sorted((lv, s) for lv in levels for s in (0, 1))
    assert summary["failed"] == 0
    assert {trial_level(t) for t in trials if t.number not in first} == {"on-again"}
    stored = trials_of(opts(tmp_path), "exclude_seen")
    assert set(summarize_trials(grown, stored)[1]) == {"off", "on", "on-again"}  # report's table


def test_a_redefined_level_runs_again_and_its_old_trials_are_left_out(tmp_path, monkeypatch):
    run_study("exclude_seen", opts(tmp_path))
    first = {t.number for t in trials_of(opts(tmp_path), "exclude_seen")}
    assert all(
        t.user_attrs["level_spec"] == level_spec(STUDIES["exclude_seen"], trial_level(t))
        for t in trials_of(opts(tmp_path), "exclude_seen")
    )
    study = STUDIES["exclude_seen"]
    # the same label now measures another configuration: the stored "on" trials are stale
    on = Level("on", {"eval.exclude_seen": True, "eval.ks": [10, 20]})
    changed = dataclasses.replace(study, levels=(study.levels[0], on))
    monkeypatch.setitem(STUDIES, "exclude_seen", changed)
    o = opts(tmp_path)
    stored = optuna.load_study(
        study_name="exclude_seen-smoke", storage=make_storage(o.storage_url_for("exclude_seen"))
    )
    assert remaining(stored, changed, [0, 1]) == [("on", 0), ("on", 1)]
    # a default written into the level, with the old spelling kept as ``formerly``: still counts
    spelled = Level(on.label, on.overrides, formerly=(study.levels[1].overrides,))
    kept = dataclasses.replace(study, levels=(study.levels[0], spelled))
    assert remaining(stored, kept, [0, 1]) == []
    # the same for the study's fixed overrides: a default written into them, the old kept
    pinned = dataclasses.replace(study, fixed={"eval.ks": [10, 20]}, formerly_fixed=({},))
    assert remaining(stored, pinned, [0, 1]) == []
    assert remaining(stored, dataclasses.replace(pinned, formerly_fixed=()), [0, 1]) == [
        (lv, s) for lv in ("off", "on") for s in (0, 1)
    ]
    write_study_report(
        pinned, o.storage_url_for("exclude_seen"), tmp_path / "exp", o.storage_url_for
    )
    report = (tmp_path / "exp" / "exclude_seen" / "report.md").read_text()
    assert "Every level (and the reused stages) runs with `eval.ks=[10, 20]`." in report
    summary = run_study("exclude_seen", opts(tmp_path))
    trials = trials_of(opts(tmp_path), "exclude_seen")
    assert summary["failed"] == 0 and summary["remaining_after"] == 0
    assert sorted(trial_level(t) for t in trials if t.number not in first) == ["on", "on"]
    stale = [t for t in trials if t.number in first and trial_level(t) == "on"]
    assert len(stale) == 2 and all(live_point(changed, t) is None for t in stale)
    report = (tmp_path / "exp" / "exclude_seen" / "report.md").read_text()
    assert STALE_NOTE in report and "on seed 0 ran `eval.exclude_seen=True`\n" in report


def test_a_changed_default_runs_the_grid_again_beside_the_trials_on_the_earlier_one(tmp_path):
    first = opts(tmp_path, n_seeds=1)
    assert run_study("exclude_seen", first)["study"] == "exclude_seen-smoke"
    params = load_params(ROOT / "params.yaml")
    params["eval"]["ks"] = [5, 10, 20]  # a section the study's stage reads
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    changed = dataclasses.replace(first, params_file=str(tmp_path / "params.yaml"))
    summary = run_study("exclude_seen", changed)
    new = summary["study"]
    assert new.startswith("exclude_seen-smoke@") and summary["complete"] == 2
    found = dict(sections(first.storage_url_for("exclude_seen"), "exclude_seen"))
    assert list(found) == ["smoke", new.removeprefix("exclude_seen-")]
    assert all(len(complete_points(s.get_trials())) == 2 for s in found.values())
    assert (tmp_path / "exp" / "exclude_seen" / new.removeprefix("exclude_seen-")).is_dir()
    report = (tmp_path / "exp" / "exclude_seen" / "report.md").read_text()
    title = "## Profile `smoke` — pipeline check on synthetic data, not a finding"
    assert report.index(f"## Profile `{new.removeprefix('exclude_seen-')}`") < report.index(title)
    assert f"{title} — earlier defaults" in report
    assert (
        f"earlier defaults than `{new}`'s: `eval.ks=[1, 5, 10, 20, 50]` (now [5, 10, 20])" in report
    )
    # back on the first defaults, their Optuna study is found again: nothing to run
    again = run_study("exclude_seen", first)
    assert again["study"] == "exclude_seen-smoke" and again["up_to_date"]
    # a knob added since (absent from what a study recorded) splits nothing
    assert same_defaults({"a": 1}, {"a": 1, "b": 2}) and not same_defaults({"a": 1}, {"a": 2})
    # nor does the default of the factor itself: every level sets eval.exclude_seen
    params["eval"]["exclude_seen"] = not params["eval"].get("exclude_seen", False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    factor = run_study("exclude_seen", changed)
    assert factor["study"] == new and factor["up_to_date"]


def test_an_input_the_levels_vary_by_design_neither_unpairs_them_nor_departs():
    """rpg_input's levels read three embedding files: that is the factor, so the seeds stay
    paired on it, while any other upstream input that differs still unpairs them; a section
    that recorded the factor's earlier default does not list it as a departure."""
    same = {"sha256/read/embeddings": "a", "sha256/read/prepared": "p"}
    other = {"sha256/read/embeddings": "b", "sha256/read/prepared": "p"}
    moved = {"sha256/read/embeddings": "b", "sha256/read/prepared": "q"}
    varied = STUDIES["rpg_input"].varied_inputs
    assert varied == ("embeddings",)
    assert broken_seeds({"text": {0: same}, "both": {0: other}}, "text", "both") == {
        0: ["embeddings"]
    }
    assert broken_seeds({"text": {0: same}, "both": {0: other}}, "text", "both", varied) == {}
    pair = {"text": {0: same}, "both": {0: moved}}
    assert broken_seeds(pair, "text", "both", varied) == {0: ["prepared"]}
    section = optuna.create_study()
    section.set_user_attr("defaults", {"rpg.sid.embeddings": "data/embeddings.npy"})
    section.set_user_attr("profile_overrides", {})
    assert "rpg.sid.embeddings" not in departures(STUDIES["rpg_input"], section)


def test_a_stamped_study_from_before_the_record_is_continued_not_duplicated(tmp_path, monkeypatch):
    import bench.stamp_defaults as stamp

    o = opts(tmp_path, n_seeds=1)
    run_study("exclude_seen", o)
    storage = make_storage(o.storage_url_for("exclude_seen"))
    ostudy = optuna.load_study(study_name="exclude_seen-smoke", storage=storage)
    ostudy.set_user_attr("defaults", None)  # as a study stored before launches recorded them
    with pytest.raises(ConfigError, match="records no 'defaults'"):
        run_study("exclude_seen", o)
    monkeypatch.setattr(stamp, "EXPERIMENTS_DIR", tmp_path / "exp")
    assert stamp.main([]) == 0
    again = run_study("exclude_seen", o)
    assert again["study"] == "exclude_seen-smoke" and again["up_to_date"]


def test_time_budget_compares_the_median_trial_with_the_time_left():
    soon = TimeBudget(deadline=time.time() + 60)
    assert soon.allows([30.0, 200.0, 40.0])  # median 40 s ends inside 60 s
    assert not soon.allows([100.0, 200.0, 40.0])  # median 100 s does not
    assert soon.allows([]) and TimeBudget().allows([1e9])  # unknown cost / no budget
    assert not TimeBudget(deadline=time.time() - 1).allows([])
    with pytest.raises(ValueError, match="--time-budget"):
        TimeBudget.minutes(0)


def test_a_time_budget_starts_no_trial_it_cannot_finish(tmp_path):
    run_study("exclude_seen", opts(tmp_path, max_trials=1))  # one duration on record
    report, index = tmp_path / "exp" / "exclude_seen" / "report.md", tmp_path / "exp" / "README.md"
    report.unlink(), index.unlink()
    spent = TimeBudget(deadline=time.time())  # no time left: the next trial would overrun
    summary = run_study("exclude_seen", opts(tmp_path, budget=spent))
    assert summary["remaining_before"] == summary["remaining_after"] == 3
    assert summary["no_trial_started"] and "report" not in summary
    assert not report.exists() and not index.exists()  # a launch that ran nothing writes nothing
    summary = run_study("exclude_seen", opts(tmp_path, budget=TimeBudget.minutes(60)))
    assert summary["remaining_after"] == 0 and summary["failed"] == 0
    argv = ["--study", "exclude_seen", "--profile", "smoke", "--time-budget", "0"]
    assert ablate_main(argv) == 2


def test_a_stop_signal_ends_the_launch_after_the_running_trial(tmp_path, monkeypatch, capsys):
    """``kill -USR1 PID`` during a trial: that trial completes, no other starts, the launch's
    next study starts none (its report untouched), and the same command resumes."""

    def objective(*_args):
        def run(trial):
            os.kill(os.getpid(), signal.SIGUSR1)  # as `kill -USR1 PID` from a shell, mid-trial
            return 0.1

        return run

    monkeypatch.setattr(runner, "Objective", objective)
    argv = ["--study", "exclude_seen", "--study", "similarity", "--profile", "smoke"]
    argv += ["--n-seeds", "2", "--out", str(tmp_path / "exp")]
    assert ablate_main(argv) == 0
    assert len(complete_points(trials_of(opts(tmp_path), "exclude_seen"))) == 1
    assert "similarity: no trial started" in capsys.readouterr().out
    assert not (tmp_path / "exp" / "similarity" / "report.md").exists()
    assert not STOP.is_set() and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL
    monkeypatch.setattr(runner, "Objective", lambda *args: lambda trial: 0.1)
    assert ablate_main(argv) == 0  # the same command resumes: every point of both
    assert len(complete_points(trials_of(opts(tmp_path), "exclude_seen"))) == 4


def test_a_section_with_no_finished_trial_expects_the_cost_tables_median(tmp_path, monkeypatch):
    """Before any trial of a section finished, its cost is the committed table's median for the
    study: a launch with less time left than that starts nothing."""
    table = tmp_path / "costs"
    table.mkdir()
    row = "| `exclude_seen` | 0 | 30.0 | [30.0, 30.0] | 3 | not measured |"
    (table / COST_TABLE).write_text(
        f"| study | trials | minutes | range | seeds | basis |\n{row}\n"
    )
    monkeypatch.setattr(runner, "EXPERIMENTS_DIR", table)
    summary = run_study("exclude_seen", opts(tmp_path, budget=TimeBudget.minutes(5)))
    assert summary["remaining_before"] == summary["remaining_after"] == 4
    summary = run_study("exclude_seen", opts(tmp_path, budget=TimeBudget.minutes(60)))
    assert summary["remaining_after"] == 0


def test_grid_coverage_with_seeds_report_and_cache(tmp_path, capsys):
    o = opts(tmp_path, n_seeds=3)
    summary = run_study("exclude_seen", o)
    trials = trials_of(o, "exclude_seen")
    assert complete_points(trials) == [(lv, s) for lv in ("off", "on") for s in (0, 1, 2)]
    assert summary["remaining_after"] == 0 and summary["failed"] == 0
    t = next(t for t in trials if t.state == TrialState.COMPLETE)
    assert t.value == t.user_attrs["metrics"]["mostpop/valid/ndcg@10"]
    assert t.user_attrs["peak_rss_mb"] > 0 and "baselines/wall_seconds" in t.user_attrs
    assert (Path(t.user_attrs["trial_dir"]) / "metrics" / "baselines.json").exists()
    stored = optuna.load_study(
        study_name="exclude_seen-smoke", storage=make_storage(o.storage_url_for("exclude_seen"))
    )
    assert is_pipeline_check(stored) and stored.user_attrs["dataset"] == "synthetic"
    study = STUDIES["exclude_seen"]
    table = summarize_trials(study, trials)[1]
    assert {lv: len(table[lv][study.objective].values) for lv in table} == {"off": 3, "on": 3}
    report = (tmp_path / "exp" / "exclude_seen" / "report.md").read_text()
    assert "Paired t-test" not in report and "significant" not in report
    assert "`data.name=synthetic`" in report  # the reductions the profile applies
    assert (tmp_path / "exp" / "exclude_seen" / "smoke.png").stat().st_size > 1000
    index = (tmp_path / "exp" / "README.md").read_text()
    assert "[report](exclude_seen/report.md)" in index and "`beam_width`" in index
    # a second launch has nothing left to do: it says so and leaves storage and reports alone
    db = tmp_path / "exp" / "exclude_seen" / "optuna.jsonl"
    files = (db, tmp_path / "exp" / "exclude_seen" / "report.md", tmp_path / "exp" / "README.md")
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    again = run_study("exclude_seen", o)
    assert again["remaining_before"] == 0 and again["up_to_date"] and again["complete"] == 6
    assert len(trials_of(o, "exclude_seen")) == len(trials)
    argv = ["--study", "exclude_seen", "--profile", "smoke", "--n-seeds", "3"]
    argv += ["--out", str(tmp_path / "exp"), "--params", str(ROOT / "params.yaml")]
    assert ablate_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("exclude_seen: study complete: 6 trials in ") and out.count("\n") == 1
    assert [(f.read_bytes(), f.stat().st_mtime_ns) for f in files] == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--list", "--study", "beam_width"], "--list lists every study and runs nothing; drop"),
        (["--report-only", "--dvc-args"], "--dvc-args and --report-only are separate modes"),
        (["--dvc-args", "--study", "x"], "--dvc-args prints the profile's -S flags"),
        (["--remaining", "--report-only"], "--report-only and --remaining are separate modes"),
        ([], "give --study NAME (or --list, --remaining)"),
    ],
)
def test_flags_that_would_override_each_other_are_refused(argv, expected, capsys):
    assert ablate_main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {captured.err[7:]}"
    assert expected in captured.err and captured.err.count("\n") == 1


BROKEN = Study(  # every trial fails after its stages ran
    "broken",
    "objective key that no stage writes",
    one_key("eval.exclude_seen", [False, True]),
    "off",
    run=("baselines",),
    reuse=("prepare",),
    objective="nope/ndcg@10",
)


def test_failed_trials_record_the_error_and_missing_stage_fails_clearly(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(STUDIES, "broken", BROKEN)  # adding a study = one registry entry
    o = opts(tmp_path, n_seeds=1)
    summary = run_study("broken", o)
    assert summary["failed"] == 2 and summary["remaining_after"] == 2
    t = trials_of(o, "broken")[0]
    assert "objective 'nope/ndcg@10' missing" in t.user_attrs["error"]
    assert "Failed trials (grid points" in (tmp_path / "exp" / "broken" / "report.md").read_text()
    # a study naming a stage dvc.yaml does not have fails at registration
    with pytest.raises(ValueError, match="not in dvc.yaml"):
        Study("bad", "x", one_key("eval.exclude_seen", [False, True]), "off", run=("x",))
    assert ablate_main(["--study", "nope", "--out", str(tmp_path / "exp")]) == 2
    assert "unknown study" in capsys.readouterr().err


def test_a_failure_streak_counts_failures_in_a_row_and_a_complete_trial_ends_it():
    streak = FailureStreak(limit=3)
    fail = optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"error": "OSError: x\ny"})
    pruned = optuna.trial.create_trial(state=TrialState.PRUNED)
    for trial in (fail, fail, complete_trial(1.0), fail, pruned, fail):
        streak(None, trial)
    assert streak.count == 2 and not streak.tripped and streak.reason() is None
    streak(None, fail)
    assert streak.reason() == "3 trials in a row failed, the last with: OSError: x"


def test_a_worker_whose_trials_fail_in_a_row_stops_the_launch(tmp_path, monkeypatch, capsys):
    """A broken environment fails every queued trial at once: the worker stops after
    ``FAILS_IN_A_ROW`` of them and the launch starts no further study."""
    monkeypatch.setitem(STUDIES, "broken", BROKEN)
    summary = run_study("broken", opts(tmp_path, n_seeds=3))
    assert summary["failed"] == 3 and summary["remaining_after"] == 6
    assert "3 trials in a row failed, the last with: KeyError" in summary["stopped_on_failures"]
    out = str(tmp_path / "again")
    argv = ["--study", "broken", "--study", "exclude_seen", "--profile", "smoke", "--out", out]
    assert ablate_main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: study broken: 3 trials in a row failed") and (
        "not started: exclude_seen" in err
    )
    assert not (tmp_path / "again" / "exclude_seen").exists()


def test_nested_mlflow_runs_with_metric_keys(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("SIDREC_TRACKING", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SIDREC_EXPERIMENT", "studies-test")
    run_study("exclude_seen", opts(tmp_path, n_seeds=1))
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["studies-test"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("stage") == "study/exclude_seen"]
    assert len(parents) == 1 and parents[0].data.tags["profile"] == "smoke"
    pid = parents[0].info.run_id
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == pid]
    assert sorted(r.data.tags["level"] for r in trials) == ["off", "on"]
    for r in trials:
        assert {
            "mostpop/valid/ndcg_at_10",
            "mostpop/test/hr_at_10",
            "wall_seconds",
            "peak_rss_mb",
        } <= set(r.data.metrics)
        assert r.data.tags["profile"] == "smoke" and r.data.params["eval.exclude_seen"]
    children = {
        r.data.tags.get("mlflow.parentRunId")
        for r in runs
        if r.data.tags.get("stage") == "baselines"
    }
    assert children <= {r.info.run_id for r in trials}  # stage runs nest under trial runs
    artifacts = mlflow.MlflowClient().list_artifacts(pid, "report")
    assert any(a.path.endswith("report.md") for a in artifacts)


def test_mean_ci_and_paired_test_on_hand_values():
    mean, hw = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and hw == pytest.approx(4.302653 * 1.0 / 3**0.5, rel=1e-5)
    diff, p = paired_test({0: 2.0, 1: 3.0, 2: 4.5}, {0: 1.0, 1: 2.5, 2: 3.0})
    assert diff == pytest.approx(1.0) and p == pytest.approx(0.07418, abs=1e-4)
    assert paired_test({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}) == (0.0, None)
    assert paired_test({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == (1.0, None)  # zero variance
    assert paired_test({0: 1.0}, {1: 1.0}) == (None, None)
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1), made monotone; None is not a test
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    lv = Level("x", {"a.b": 1})
    assert lv.overrides == {"a.b": 1}


def test_cells_show_counts_per_seed_costs_as_ranges_and_quality_as_mean_ci():
    epochs = Cell({2: 14.0, 0: 11.0, 1: 20.0}, 15.0, 11.38)
    assert cell_text(epochs, "epochs") == "11, 20, 14"  # seed order, whole numbers
    assert cell_text(Cell({0: 5e5, 1: 5e5}, 5e5, 0.0), "num_parameters") == "500000"
    assert cell_text(Cell({0: 3.0, 1: 1.0, 2: 2.0}, 2.0, 2.48), "wall_seconds") == (
        "2.00 [1.00, 3.00]"
    )
    assert cell_text(Cell({0: 0.04, 1: 0.05}, 0.045, 0.0064), "test/ndcg@10") == ("0.0450 ± 0.0064")


def test_pipeline_report_reads_stage_metrics(syn_prepared, tmp_path):
    from sidrec_core.io import write_json
    from sidrec_core.stages.baselines import run as run_baselines
    from sidrec_core.stages.report import run as run_report

    run_baselines(syn_prepared)
    metrics_dir = Path(syn_prepared["base"]["metrics_dir"])
    write_json(
        metrics_dir / "build_sids.json",
        {
            "utilization": [0.75, 0.5, 0.25],
            "perplexity": [6.0, 3.5, 2.0],
            "collision_rate_before": 0.02,
            "collision_rate_after": 0.0,
            "gini": 0.3,
        },
    )
    rpg = {"decoding": "graph", "test/hr@10": 0.25, "test/ndcg@10": 0.125, "test/hr@5": 0.2}
    write_json(metrics_dir / "eval_rpg.json", rpg)
    params = {
        **syn_prepared,
        "report": {"output": str(tmp_path / "r.md"), "plot_data": str(tmp_path / "h.csv")},
    }
    out = run_report(params)
    assert out["num_models"] == 3 and out["has_sid_metrics"] == 1
    assert out["eval_rpg/test/ndcg@10"] == 0.125
    written = json.loads((metrics_dir / "report.json").read_text())
    assert (written["dataset"], written["profile"]) == ("synthetic", "test")
    assert out["build_sids/collision_rate_before"] == 0.02 and out["build_sids/gini"] == 0.3
    assert {"mostpop/test/ndcg@10", "random/test/hr@10"} <= set(out)
    text = (tmp_path / "r.md").read_text()
    for name, (source, figures) in PUBLISHED.items():  # every published row, with its source
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        assert source in row and all(f"{v:.4f}" in row for v in figures.values())
    assert "| collision rate before resolution | 2.00% | 3.35% |" in text
    assert "| level-1 utilisation | 0.7500 | 0.7695 (197/256) |" in text
    assert "| RPG (parallel long SIDs, graph-constrained beam) |" in text
    csv = (tmp_path / "h.csv").read_text().splitlines()
    assert csv[0] == "model,hr_at_10,ndcg_at_10" and csv[1].startswith('"MostPop",')


def test_pipeline_report_breaks_test_hr_down_by_the_targets_training_interactions():
    import numpy as np

    from sidrec_core.data.dataset import Dataset
    from sidrec_core.data.split import leave_one_out
    from sidrec_core.metrics import encode_ranks
    from sidrec_core.stages.report import popularity_lines

    # training parts give item 1 five interactions, item 2 one, item 3 none; test targets 1, 2, 3
    seqs = [[1, 1, 1, 1, 1, 2, 1], [2, 3, 2], [4, 2, 3]]
    ds = Dataset(
        "t", ["a", "b", "c"], ["", "i1", "i2", "i3", "i4"], [np.array(q) for q in seqs], []
    )
    hit = {"model": "M", "file": "m.json", "test/hr@10": 2 / 3, "valid/hr@10": 0.5}
    hit["test/ranks"] = encode_ranks(np.array([0.0, 3.0, np.inf]), 20)  # hits users a and b
    short = {**hit, "model": "S", "test/ranks": encode_ranks(np.array([0.0]), 20)}  # other users
    lines = popularity_lines([hit, short], leave_one_out(ds))
    cells = {ln.split(" | ")[0]: ln.split(" | ")[1:] for ln in lines if ln.startswith("| ")}
    assert cells["| share of test targets"][:3] == ["33.33%", "33.33%", "33.33%"]
    assert cells["| share of valid targets"][:3] == ["33.33%", "66.67%", "0.00%"]
    # groups [0, 1), [1, 5), [5, 20) hold users c, b, a; the empty groups show a dash
    assert cells["| M"] == ["0.0000", "1.0000", "1.0000", "—", "—", "0.6667", "0.5000", "0.6667 |"]
    assert "| S" not in cells  # ranks of other users are not grouped


def test_pipeline_report_sets_history_filtered_rows_beside_their_protocol():
    from sidrec_core.stages.report import PUBLISHED_UNSEEN, headline, unseen_lines

    rows = [
        {
            "model": "SASRec",
            "file": "train_sasrec.json",
            "test/hr@10": 0.08,
            "test_unseen/hr@10": 0.09,
            "test_unseen/ndcg@10": 0.05,
        },
        {"model": "SID LM", "file": "eval_sidlm.json", "test/hr@10": 0.05},
    ]
    cells = [line.split(" | ") for line in unseen_lines(rows) if line.startswith("| ")][1:]
    assert [c[0] for c in cells] == ["| SASRec", *(f"| {m}" for m in PUBLISHED_UNSEEN)]
    assert cells[0][2:] == ["0.0900", "0.0500 |"]  # only rows that measured the protocol
    assert PUBLISHED_UNSEEN["CBiT"][1] == {"hr@10": 0.0905, "ndcg@10": 0.0537}
    out = headline(rows, None, {})
    assert out["train_sasrec/test_unseen/hr@10"] == 0.09 and out["train_sasrec/test/hr@10"] == 0.08
    assert "eval_sidlm/test_unseen/hr@10" not in out


def test_report_keeps_sections_of_profiles_run_against_another_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.storages.RDBStorage(url)  # creates the tables; no study in it
    out = tmp_path / "exp"
    (out / "exclude_seen").mkdir(parents=True)
    dev = "## Profile `dev`\n\nOptuna study `exclude_seen-dev`; an earlier run's table.\n"
    (out / "exclude_seen" / "report.md").write_text("# old header\n\n" + dev)
    write_study_report(STUDIES["exclude_seen"], url, out)
    report = out / "exclude_seen" / "report.md"
    assert report.read_text().startswith("# Study `exclude_seen`")
    assert report_sections(report) == {"dev": dev}
    index = write_index(out).read_text()
    row = next(line for line in index.splitlines() if line.startswith("| `exclude_seen`"))
    assert "| dev |" in row and "[report](exclude_seen/report.md)" in row


def test_index_lists_tuning_reports_at_any_depth(tmp_path):
    """A search's report and a retrain's report in a folder below it are both listed."""
    out = tmp_path / "exp"
    for folder in (out / "tune" / "sidlm", out / "tune" / "sidlm" / "confirm"):
        folder.mkdir(parents=True)
        (folder / "report_beauty.md").write_text("# Tuning\n")
    (out / "tune" / "sidlm" / "notes.md").write_text("not a report\n")
    lines = write_index(out).read_text().splitlines()
    listed = [line for line in lines if line.startswith("| [`tune/")]
    assert [line.split("`")[1] for line in listed] == [
        "tune/sidlm/confirm/report_beauty.md",
        "tune/sidlm/report_beauty.md",
    ]


def _slicing(
    out: Path, ndcg: dict[tuple[str, int], float]
) -> tuple[Finding, list[optuna.trial.FrozenTrial], str]:
    """(finding, trials, findings row) of an ``lm_head_slicing`` Beauty storage holding ``ndcg``
    per trial."""
    url = make_storage(str(out / "lm_head_slicing" / "optuna.jsonl"), create=True)
    ostudy = optuna.create_study(study_name="lm_head_slicing-beauty", storage=url)
    ostudy.set_user_attr("dataset", "beauty")
    ostudy.set_user_attr("seeds", [0, 1, 2])
    for (level, seed), value in ndcg.items():
        ostudy.add_trial(
            optuna.trial.create_trial(
                value=value,  # valid/ndcg@10, the objective
                user_attrs={
                    "grid_point": [level, seed],
                    "test/ndcg@10": value,
                    "wall_seconds": 60.0,
                },
            )
        )
    study, trials = STUDIES["lm_head_slicing"], ostudy.get_trials(deepcopy=False)
    cols, table = summarize_trials(study, trials)
    finding = read_finding(study, cols, table, trial_records(study, trials))
    assert finding is not None
    lines = write_index(out).read_text().splitlines()
    row = next(line for line in lines if "[`lm_head_slicing`]" in line)
    assert effect_text(study, finding) in row  # the index row shows this finding
    return finding, trials, row


def test_an_effect_with_fewer_than_two_paired_seeds_says_it_is_not_tested():
    study = STUDIES["rpg_input"]
    one = Finding("test/ndcg@10", "valid/ndcg@10", "collaborative", study.labels, 0.03, seeds=0)
    text = effect_text(study, one)
    assert text == "`collaborative` − default: not tested (a paired test needs 2 seeds)", text
    two = dataclasses.replace(one, seeds=2, diff=0.005, ci=0.002)
    assert "p undefined" in effect_text(study, two)


def test_index_findings_from_real_data_storage(tmp_path):
    """The finding of a real-data section: best level (on valid), paired diff ± CI, Holm p,
    cost."""
    ndcg = {("on", 0): 0.010, ("on", 1): 0.011, ("on", 2): 0.012}
    ndcg |= {("off", 0): 0.015, ("off", 1): 0.017, ("off", 2): 0.016}
    f, trials, row = _slicing(tmp_path / "exp", ndcg)
    assert (f.best, f.seeds, f.tied) == ("off", 3, ())
    # paired diffs 0.005, 0.006, 0.004: mean 0.005, t(2) CI half-width 4.303 * 0.001 / sqrt(3)
    assert f.diff == pytest.approx(0.005) and f.ci == pytest.approx(4.303e-3 / 3**0.5, rel=1e-3)
    # two tests (objective, test NDCG@10), each raw p 0.0132: Holm doubles them to 0.026
    assert f.holm_p == pytest.approx(0.0263, abs=5e-4) and f.significant
    assert sum(map(spent_seconds, trials)) == 6 * 60.0  # 0.1 CPU-h in 6 trials
    assert "0.1 CPU-h in 6 trials" in row


def test_a_trials_cost_counts_the_upstream_stages_it_ran_and_not_what_dvc_restored():
    """Its run stage took 100 s but the trial 900 s (DVC trained its upstream first): 900 s. A
    trial DVC restored took 2 s of its 500 recorded: 2. One taken from another study has no
    duration of its own: its stages' 300 s."""
    upstream = finished("ce", 0, 900, {"spent_seconds": 100.0})
    upstream.user_attrs["wall_seconds"] = 100.0
    restored = finished("ce", 1, 2, {"spent_seconds": 0.0})
    restored.user_attrs["wall_seconds"] = 500.0
    shared = finished("bce", 0, 0, {"shared_from": "x#1"})
    shared.user_attrs["wall_seconds"] = 300.0
    assert [spent_seconds(t) for t in (upstream, restored, shared)] == [900.0, 2.0, 300.0]


def test_the_index_cost_names_the_failed_trials_it_cannot_time(tmp_path):
    """A failed trial's end is when some later launch marked it failed: counted, not timed; one
    that raised is told apart from one whose worker was stopped (no error recorded)."""
    ndcg = {(level, seed): 0.01 for level in ("on", "off") for seed in (0, 1, 2)}
    _slicing(tmp_path / "exp", ndcg)
    url = make_storage(str(tmp_path / "exp" / "lm_head_slicing" / "optuna.jsonl"))
    ostudy = optuna.load_study(study_name="lm_head_slicing-beauty", storage=url)
    fail = optuna.trial.TrialState.FAIL
    ostudy.add_trial(optuna.trial.create_trial(state=fail))
    row = next(ln for ln in write_index(tmp_path / "exp").read_text().splitlines() if "[`lm_" in ln)
    assert "0.1 CPU-h in 6 trials, 1 stopped mid-trial (their time not counted)" in row, row
    ostudy.add_trial(optuna.trial.create_trial(state=fail, user_attrs={"error": "OSError: x"}))
    row = next(ln for ln in write_index(tmp_path / "exp").read_text().splitlines() if "[`lm_" in ln)
    assert "6 trials, 1 failed and 1 stopped mid-trial (their time not counted)" in row, row


def test_the_index_costs_a_replaced_trial_but_counts_its_point_once(tmp_path):
    """A re-run was paid for beside the trial it replaced: both are costed, one point filled,
    so a study with a point still missing reads partial."""
    ndcg = {(level, seed): 0.01 for level in ("on", "off") for seed in (0, 1, 2)}
    del ndcg[("off", 2)]
    _slicing(tmp_path / "exp", ndcg)
    url = make_storage(str(tmp_path / "exp" / "lm_head_slicing" / "optuna.jsonl"))
    ostudy = optuna.load_study(study_name="lm_head_slicing-beauty", storage=url)
    old = next(t for t in ostudy.get_trials() if t.user_attrs["grid_point"] == ["off", 0])
    attrs = {**old.user_attrs, RERUN_OF: old.number}
    ostudy.add_trial(optuna.trial.create_trial(value=0.01, user_attrs=attrs))
    row = next(ln for ln in write_index(tmp_path / "exp").read_text().splitlines() if "[`lm_" in ln)
    assert "0.1 CPU-h in 6 trials (1 replaced by re-runs)" in row, row
    assert "(partial: 5 of 6 trials)" in row, row


@pytest.mark.parametrize(
    "later_off, verdict",
    [
        ((0.020, 0.022, 0.021), "`off` yes (0.0050 → 0.0100)"),
        ((0.005, 0.005, 0.007), "`off` no (0.0050 → -0.0053)"),
    ],
)
def test_index_says_whether_an_effect_kept_its_direction_on_later_defaults(
    tmp_path, later_off, verdict
):
    out = tmp_path / "exp"
    url = make_storage(str(out / "lm_head_slicing" / "optuna.jsonl"), create=True)
    sections = {"beauty": (0.015, 0.017, 0.016), "beauty@abcd1234": later_off}
    for label, off in sections.items():
        ostudy = optuna.create_study(study_name=f"lm_head_slicing-{label}", storage=url)
        ostudy.set_user_attr("dataset", "beauty")
        ostudy.set_user_attr("seeds", [0, 1, 2])
        for level, values in (("on", (0.010, 0.011, 0.012)), ("off", off)):
            for seed, value in enumerate(values):
                attrs = {"grid_point": [level, seed], "test/ndcg@10": value, "wall_seconds": 60.0}
                ostudy.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    rows = [line for line in write_index(out).read_text().splitlines() if "lm_head_slic" in line]
    earlier, later = (next(r for r in rows if f"| beauty | {lb} |" in r) for lb in sections)
    assert earlier.startswith("| [`lm_head_slicing`]") and earlier.endswith("| — |")
    assert verdict in later.split("|")[-2]


def test_index_names_no_best_level_before_another_level_is_measured(tmp_path):
    ndcg = {("on", 0): 0.010, ("on", 1): 0.011, ("on", 2): 0.012}
    f, _, row = _slicing(tmp_path / "exp", ndcg)
    assert f.levels == ("on",) and f.best == "on" and f.diff is None and f.holm_p is None
    assert (f.default_value, f.seeds) == (pytest.approx(0.011), 3)
    assert "(partial: 3 of 6 trials)" in row  # counted in the row only


def test_index_names_the_default_when_a_level_ties_with_it(tmp_path):
    ndcg = {(lv, s): 0.010 + s / 1000 for lv in ("on", "off") for s in range(3)}
    f, _, _ = _slicing(tmp_path / "exp", ndcg)
    assert (f.best, f.tied, f.diff) == ("on", ("off",), None)
    assert (f.default_value, f.seeds) == (pytest.approx(0.011), 3)


def test_levels_compared_with_the_model_they_start_from(tmp_path):
    """A study naming a reference (another study's level that evaluated its starting model)
    gets a paired comparison with it, over the seeds whose fingerprints agree."""
    dist = {"level": optuna.distributions.CategoricalDistribution(["a", "b"])}

    def store(name: str, trials: dict[tuple[str, int], dict[str, float]], db: str = "") -> str:
        url = f"sqlite:///{tmp_path / (db or name)}.db"
        ostudy = optuna.create_study(study_name=f"{name}-beauty", storage=url)
        ostudy.set_user_attr("dataset", "beauty")
        for (level, seed), attrs in trials.items():
            ostudy.add_trial(
                optuna.trial.create_trial(
                    params={"level": level},
                    distributions=dist,
                    value=attrs["valid/ndcg@10"],
                    user_attrs={"grid_point": [level, seed], "metrics": attrs},
                )
            )
        return url

    start = {0: 0.040, 1: 0.045, 2: 0.036}  # the reference's valid NDCG@10 per seed
    base = {s: {"valid/ndcg@10": v, "test/ndcg@10": 0.0290 + s / 1e4} for s, v in start.items()}
    urls = {"base": store("base", {("a", s): row for s, row in base.items()})}
    rows = {}
    for s in start:  # level b gains .0010, .0012, .0014; seed 2's fingerprint differs
        fp = start[s] if s < 2 else 0.999
        for lv, gain in (("a", 0.0), ("b", 0.0010 + s * 0.0002)):
            rows[(lv, s)] = {
                "valid/ndcg@10": 0.05,
                "start_valid/ndcg@10": fp,
                "test/ndcg@10": base[s]["test/ndcg@10"] + gain,
            }
    urls["rl"] = store("rl", rows)
    study = Study(
        "rl",
        "x",
        (Level("a", {"rl.beta": 0.0}), Level("b", {"rl.beta": 0.1})),
        "a",
        run=("rl_sidlm",),
        reuse=("prepare", "embed", "build_sids", "train_sidlm", "train_sasrec"),
        secondary=("test/ndcg@10", "start_valid/ndcg@10"),
        reference=Reference(
            "base", "a", "the start", ("start_valid/ndcg@10", "valid/ndcg@10"), 0.03, "a test"
        ),
    )
    write_study_report(study, urls["rl"], tmp_path / "exp", urls.__getitem__)
    text = (tmp_path / "exp" / "rl" / "report.md").read_text()
    assert "else study `base`, level `a`)" in text and "by the trials themselves: none" in text
    # seeds 0 and 1 pair: b - start = .0010, .0012 -> mean .0011; a - start = 0 at both
    # t = 0.0011 / (0.000141 / sqrt 2) = 11 on 1 dof: p 0.058, the only defined test
    assert (
        "| b | test/ndcg@10 | 0.02905 | 0.03015 | +0.00110 ± 0.00127 | not recorded | +3.8% ± 4.4% "
        "| 0.058 | no |" in text
    )
    assert "| a | test/ndcg@10 | 0.02905 | 0.02905 | +0.00000 ± 0.00000 |" in text
    assert "Seeds [2]: the fingerprints differ" in text
    assert "Largest test/ndcg@10 change from the start: `b`, +3.8% ± 4.4% (95% CI over 2" in text
    alone = Study(
        **{**study.__dict__, "reference": Reference("gone", "a", "the start", ("x", "y"))}
    )
    write_study_report(alone, urls["rl"], tmp_path / "exp", lambda n: urls.get(n, urls["rl"]))
    assert "no trial scored it yet" in (tmp_path / "exp" / "rl" / "report.md").read_text()
    # seed 2's start, scored by level a's own trial (b's trial shares it: the same start_valid),
    # with per-user ranks on both sides: that seed pairs too, and the seed x user CI is drawn
    ranks = np.array([0.0, 3.0, 20.0, 1.0])
    rows[("a", 2)] |= {"start/test/ndcg@10": 0.0292, "start/test/ranks": encode_ranks(ranks, 20)}
    for lv in ("a", "b"):
        rows[(lv, 2)]["test/ranks"] = encode_ranks(ranks if lv == "a" else ranks * 0, 20)
    urls["rl"] = store("rl", rows, db="rl2")
    write_study_report(study, urls["rl"], tmp_path / "exp", urls.__getitem__)
    text = (tmp_path / "exp" / "rl" / "report.md").read_text()
    assert "Seeds [2]" not in text and "by the trials themselves: [2])" in text
    # b - start: .0010, .0012, .0014 over seeds 0-2; seeds 0 and 1 stored no ranks
    assert "| b | test/ndcg@10 | 0.02910 | 0.03030 | +0.00120 ± 0.00050 | not recorded |" in text
    # 3% of .02910 = .00087, inside [.00070, .00170]
    assert (
        "the goal, 3% of the start (a test, +0.00087), lies inside the CI over seeds: neither "
        "reached nor excluded" in text
    )
    ref = study.reference
    assert "above the CI over seeds, above the seed × user CI: excluded" in goal_text(
        ref, 0.03, 0.0001, 0.0002, (-0.0001, 0.0002)
    )
    assert "inside the CI over seeds, above the seed × user CI: neither" in goal_text(
        ref, 0.03, 0.0001, 0.0009, (-0.0001, 0.0002)
    )
    assert "below the CI over seeds: reached" in goal_text(ref, 0.03, 0.003, 0.001, None)
    records = {"a": {2: rows[("a", 2)]}, "b": {2: rows[("b", 2)]}}
    own = own_start_rows(study, records, "b")  # b's own trial scored none: a's stands in
    assert own[2]["valid/ndcg@10"] == 0.999 and own[2]["test/ndcg@10"] == 0.0292
    records["b"][2] = {**records["b"][2], "start/test/ndcg@10": 0.0300}
    assert own_start_rows(study, records, "b")[2]["test/ndcg@10"] == 0.0300  # its own first
    b = {2: rows[("b", 2)]}
    lo, hi = user_ci(b, own, "test/ndcg@10", [2])
    assert 0 < lo <= hi  # b ranks every target first: above its start for every resample


def test_a_contrast_is_tested_with_the_default_comparisons_and_corrected_with_them():
    levels = tuple(
        Level(lv, {"eval.max_valid_users": n}) for lv, n in (("a", 1), ("b", 2), ("c", 3))
    )
    study = Study("x", "x", levels, "a", run=("baselines",), reuse=("prepare",), secondary=())
    means = {"a": 0.040, "b": 0.042, "c": 0.0415}
    table = {
        lv: {
            "valid/ndcg@10": Cell(
                {s: m + s * 1e-4 + (s == 2) * (lv == "b") * 3e-4 for s in range(3)}, m, 0.0
            )
        }
        for lv, m in means.items()
    }
    plain = compare_levels(study, ["valid/ndcg@10"], table)
    assert [(c.level, c.versus) for c in plain] == [("b", "a"), ("c", "a")]
    contrasted = dataclasses.replace(study, contrasts=(("b", "c"),))
    cmps = compare_levels(contrasted, ["valid/ndcg@10"], table)
    assert [(c.level, c.versus) for c in cmps] == [("b", "a"), ("c", "a"), ("b", "c")]
    b, c = table["b"]["valid/ndcg@10"].values, table["c"]["valid/ndcg@10"].values
    assert cmps[2].cell.diff == pytest.approx(0.0006)  # b - c per seed: .0005, .0005, .0008
    assert (cmps[2].cell.diff, cmps[2].cell.p_value) == paired_test(b, c)
    assert cmps[2].holm_p == holm([x.cell.p_value for x in cmps])[2]
    text = "\n".join(significance_lines(contrasted, ["valid/ndcg@10"], table))
    assert "then `b` against `c`," in text and "| b − c | valid/ndcg@10 |" in text
    with pytest.raises(ValueError, match="contrast"):
        dataclasses.replace(study, contrasts=(("b", "z"),))


def test_seeds_are_queued_one_after_another_the_default_level_first():
    """Every level is tested against the default: a study stopped part-way pairs every seed it
    finished, and a seed's upstream stages are built once for all its levels."""
    ostudy = optuna.create_study()
    assert enqueue_missing(ostudy, STUDIES["sasrec_loss"], [0, 1]) == 8
    points = [grid_point(t) for t in ostudy.get_trials(deepcopy=False)]
    assert points[:5] == [("ce", 0), ("bce", 0), ("infonce", 0), ("sampled_softmax", 0), ("ce", 1)]
    assert len(set(points)) == 8
    assert enqueue_missing(ostudy, STUDIES["sasrec_loss"], [0, 1]) == 0  # all queued already


def finished(label: str, seed: int, secs: float, metrics: dict) -> optuna.trial.FrozenTrial:
    """A complete trial of grid point (label, seed) that took ``secs`` seconds."""
    return complete_trial(secs, user_attrs={"grid_point": [label, seed], "metrics": metrics})


def test_eta_counts_only_trials_that_ran_here():
    """A level taken from another study took no time; it must not shrink the ETA."""
    study = STUDIES["sasrec_loss"]
    ostudy = optuna.create_study()
    for label, secs, metrics in [("ce", 0, {"shared_from": "x#1"}), ("bce", 600, {})]:
        ostudy.add_trial(finished(label, 0, secs, metrics))
    assert progress(ostudy, study, [0, 1]) == "trial 3/8, ETA 60 min (median 600 s a trial)"


def test_a_trial_restored_from_the_run_cache_counts_at_its_stages_cost():
    """It completed in 2 s, but the next seed of its level trains for the 500 s it recorded: a
    time budget must not start that trial in the last minute."""
    ostudy = optuna.create_study()
    restored = finished("ce", 0, 2, {})
    restored.user_attrs["wall_seconds"] = 500.0
    ostudy.add_trial(restored)
    assert expected_seconds(ostudy, "ce") == [500.0]
    assert points_seconds(ran_here(ostudy), [("ce", 1)]) == 500.0
    assert not TimeBudget(deadline=time.time() + 60).allows(expected_seconds(ostudy, "ce"))


def test_a_worker_counts_the_seeds_another_launch_queued():
    """A launch with --n-seeds 1 takes the seed-1 points a --n-seeds 2 launch queued: its
    progress must count them (not 'trial 4/2'), and what remains includes them."""
    study = STUDIES["sasrec_loss"]
    ostudy = optuna.create_study()
    enqueue_missing(ostudy, study, [0, 1])
    ostudy.add_trial(finished("ce", 0, 600, {}))
    ostudy.add_trial(finished("ce", 1, 600, {}))
    assert remaining(ostudy, study, [0])[:2] == [("bce", 0), ("bce", 1)]
    assert len(remaining(ostudy, study, [0])) == 6
    assert progress(ostudy, study, [0]) == "trial 3/8, ETA 60 min (median 600 s a trial)"


def test_the_budget_expects_the_next_trial_to_cost_what_its_level_cost():
    """A level that runs 50x longer than the others (one row per target) must not start on the
    others' median with too little time left; a level with no trial of its own yet falls back
    on all of them."""
    ostudy = optuna.create_study()
    for label, seed, secs in [("ce", 0, 60), ("ce", 1, 60), ("bce", 0, 3000)]:
        ostudy.add_trial(finished(label, seed, secs, {}))
    done = ran_here(ostudy)
    assert points_seconds(done, [("ce", 2), ("bce", 1)]) == 3060.0
    assert points_seconds(done, [("bpr", 0)]) == 60.0  # an ETA: none of its own, the median
    assert queued_points(ostudy) == []
    ostudy.enqueue_trial({}, user_attrs={"grid_point": ["bce", 1]})
    ostudy.enqueue_trial({}, user_attrs={"grid_point": ["ce", 2]})
    assert queued_points(ostudy)[0] == (
        "bce",
        1,
    )  # Optuna runs the lowest-numbered WAITING trial first
    ten_minutes = TimeBudget(deadline=time.time() + 600)
    assert not ten_minutes.allows(expected_seconds(ostudy, "bce", 1))
    assert expected_seconds(ostudy, "ce") == [60.0, 60.0]


def test_the_budget_expects_a_level_with_no_trial_yet_to_cost_the_slowest_trial():
    """M=64 codebooks had no finished trial, ran on the study's 22-minute median and took 69:
    before a level's first trial ends, the budget expects the slowest one here."""
    ostudy = optuna.create_study()
    for label, seed, secs in [("ce", 0, 60), ("ce", 1, 60), ("bce", 0, 3000)]:
        ostudy.add_trial(finished(label, seed, secs, {}))
    ostudy.add_trial(finished("bpr", 0, 0, {"shared_from": "x#1"}))  # took no time here
    assert expected_seconds(ostudy, "bpr") == [3000.0]
    assert not TimeBudget(deadline=time.time() + 600).allows(expected_seconds(ostudy, "bpr"))
    assert expected_seconds(optuna.create_study(), "bpr") == []  # the cost table's estimate


def test_a_level_with_no_trial_here_is_expected_at_its_cost_on_another_dataset():
    """``arch``'s ``encoder_decoder`` took 6x ``decoder`` on Beauty: on Sports, after a decoder
    trial, its first trial is expected at its own Beauty cost scaled, not at the decoder's; a
    section with no trial here expects a level at that cost plus the seed's reused stages."""
    other = Elsewhere({"decoder": 1500.0, "encoder_decoder": 9600.0}, 1500.0, 1300.0, ("beauty",))
    empty = optuna.create_study()
    assert expected_seconds(empty, "encoder_decoder", 0, other) == [9600.0 + 1300.0]
    assert expected_seconds(empty, "new_level", 0, other) == [1500.0 + 1300.0]
    ostudy = optuna.create_study()
    ostudy.add_trial(finished("decoder", 0, 1600, {}))
    assert expected_seconds(ostudy, "encoder_decoder", 0, other) == [9600.0]
    assert expected_seconds(ostudy, "decoder", 1, other) == [1600.0]  # its own trial here first
    assert expected_seconds(ostudy, "encoder_decoder", 0) == [1600.0]  # without: the slowest here
    done = ran_here(ostudy)
    assert points_seconds(done, [("encoder_decoder", 1)], other) == 9600.0
    assert other.points([("decoder", 0), ("encoder_decoder", 0), ("decoder", 1)]) == (
        1500.0 + 9600.0 + 1500.0 + 2 * 1300.0
    )


def test_the_budget_adds_the_upstream_a_seed_would_train_again_on_this_machine(
    tmp_path, monkeypatch
):
    """A seed's first trial trained its SID LM (20 of its 25 minutes); the seed's other levels
    restore it from DVC's run-cache, unless this machine's cache lacks its outs (a fresh machine):
    then the next trial of the seed trains it again and the budget must expect that."""
    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path))
    sidlm = "ab" + "1" * 30 + ".dir"
    first = {"upstream_seconds": 1200.0, "upstream_spent_seconds": 1200.0}
    ostudy = optuna.create_study()
    for label, secs, spent in (("ce", 1500, 1200.0), ("bce", 300, 0.0)):
        attrs = {"grid_point": [label, 0], dvc_run.UPSTREAM_OUTS: [sidlm]}
        attrs["metrics"] = {**first, "upstream_spent_seconds": spent}
        ostudy.add_trial(complete_trial(secs, user_attrs=attrs))
    assert expected_seconds(ostudy, "ce", 0) == [1500.0]  # own 300 s + the SID LM again
    assert expected_seconds(ostudy, "bce", 0) == [1500.0]
    (tmp_path / "files" / "md5" / "ab").mkdir(parents=True)
    (tmp_path / "files" / "md5" / "ab" / sidlm[2:]).write_text("{}")
    assert expected_seconds(ostudy, "ce", 0) == [300.0]  # cached here: each level's own cost
    assert expected_seconds(ostudy, "bce", 0) == [300.0]
    assert expected_seconds(ostudy, "ce", 1) == [1500.0]  # a new seed trains its own
    # a plan pays a seed's upstream once, however many of its levels are open
    assert points_seconds(ran_here(ostudy), [("ce", 1), ("bce", 1), ("bce", 2)]) == 3300.0
    older = optuna.create_study()  # trials from before the record: their durations hold it
    older.add_trial(finished("ce", 0, 1500, {}))
    assert expected_seconds(older, "ce", 1) == [1500.0]


ASKER = """
import sys, time, optuna
from sidrec_core.studies.storage import make_storage, sections
optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="race", storage=make_storage(sys.argv[1]))
while time.time() < float(sys.argv[2]):
    pass
print(*(study.ask().number for _ in range(10)))
"""


def test_two_workers_asking_at_once_never_take_the_same_queued_trial(tmp_path):
    """The journal's lock hands each queued trial to one of two processes asking at the same
    moment (SQLite, which has no row lock, gave some to both: experiments/measured.md)."""
    url = str(tmp_path / "race.jsonl")
    study = optuna.create_study(study_name="race", storage=make_storage(url, create=True))
    for i in range(20):
        study.enqueue_trial({}, user_attrs={"i": i})
    start = str(time.time() + 8)  # both processes are up and spinning by then
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ASKER, url, start], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    taken = [int(n) for p in procs for n in p.communicate(timeout=120)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(taken) == list(range(20))


def test_the_index_lists_each_study_owed_a_second_dataset_and_whether_its_effect_held(tmp_path):
    """``lm_head_slicing``'s ``off`` is significantly better on Beauty: it is owed Sports, where
    it is significant the same way (held: yes); the studies the round-2 issue names are listed
    though they never ran; a study with no significant level and no name is not."""
    out = tmp_path / "exp"
    url = make_storage(str(out / "lm_head_slicing" / "optuna.jsonl"), create=True)
    for dataset, seeds, gap in (("beauty", (0, 1, 2), 0.005), ("sports", (0, 1, 2), 0.003)):
        ostudy = optuna.create_study(study_name=f"lm_head_slicing-{dataset}", storage=url)
        ostudy.set_user_attr("dataset", dataset)
        ostudy.set_user_attr("seeds", [0, 1, 2])
        for seed in seeds:
            for level, value in (
                ("on", 0.010 + 0.001 * seed),
                ("off", 0.010 + 0.001 * seed + gap + 1e-4 * seed),
            ):
                attrs = {"grid_point": [level, seed], "test/ndcg@10": value, "wall_seconds": 6.0}
                ostudy.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    lines = replication(out)
    rows = {ln.split(" | ")[0].split("`")[1]: ln.split(" | ")[1:] for ln in lines if "[`" in ln}
    assert set(rows) == {"lm_head_slicing", *REPLICATE}
    why, dataset, ran, held = rows["lm_head_slicing"]
    assert why == "significant: `off` +0.0051" and ran == "6 of 6 trials"
    assert dataset == "sports (`lm_head_slicing-sports`)"
    assert held == "`off` yes (0.0051 → 0.0031) |"
    assert rows["tokenizer"] == [REPLICATE["tokenizer"], "—", "no section yet", "— |"]
    assert "## Replication on a second dataset" in write_index(out).read_text()


def test_the_replication_table_counts_the_default_and_the_significant_levels_apart(tmp_path):
    """A Sports section that ran ``similarity``'s dot and cosine on every seed (what a launch
    runs first) and one other point reads as 7 of 15 trials, its first part 6 of 6."""
    out = tmp_path / "exp"
    url = make_storage(str(out / "similarity" / "optuna.jsonl"), create=True)
    study = STUDIES["similarity"]
    for dataset, levels in (("beauty", study.labels), ("sports", ("dot", "cosine"))):
        ostudy = optuna.create_study(study_name=f"similarity-{dataset}", storage=url)
        ostudy.set_user_attr("dataset", dataset)
        ostudy.set_user_attr("seeds", [0, 1, 2])
        points = [(lv, s) for lv in levels for s in (0, 1, 2)]
        for level, seed in points + ([("scaled", 0)] if dataset == "sports" else []):
            value = 0.04 + 0.001 * seed - (0.01 + 1e-4 * seed) * (level == "cosine")
            attrs = {"grid_point": [level, seed], "test/ndcg@10": value, "wall_seconds": 6.0}
            ostudy.add_trial(optuna.trial.create_trial(value=value, user_attrs=attrs))
    row = next(ln for ln in replication(out) if ln.startswith("| [`similarity`]"))
    assert "| 7 of 15 trials (the default and those levels: 6 of 6) |" in row
    assert row.endswith("`cosine` yes (-0.0101 → -0.0101) |")
