"""Rebuilding MLflow from a study's committed storage: one run per trial with the stored figures,
nothing added by a second rebuild, only the new trial by a rebuild after one was added; a
search's pruned trials with their validation curves and its retrains; the CLI; live runs log
the headline first (MLflow's compare view opens on a run's first metric)."""

import json
import shutil
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from bench.ablate import main as ablate_main
from sidrec_core.studies.provenance import LANDED_IN, SIDECAR, read_backfill, trial_key_of
from sidrec_core.studies.report import scalar_attrs
from sidrec_core.studies.to_mlflow import open_storage, rebuild, study_sources, tune_sources
from sidrec_core.tracking import KEY_TAG, headline_first, mlflow_key, start_run

STUDY = "kmeans_init"  # a committed study with a 6-trial smoke section
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _trial_runs(client: MlflowClient, parent_id: str) -> dict[str, object]:
    exp = client.get_experiment_by_name(f"findings/{STUDY}")
    runs = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'", max_results=1000
    )
    return {r.data.tags[KEY_TAG]: r for r in runs}


def test_headline_first_orders_test_ndcg_objective_hr():
    keys = ["best_epoch", "test/hr@10", "valid/ndcg@5", "sasrec/test/ndcg@10", "test/ndcg@10"]
    assert headline_first(keys, "valid/ndcg@5") == [
        "sasrec/test/ndcg@10",
        "test/ndcg@10",
        "valid/ndcg@5",
        "test/hr@10",
        "best_epoch",
    ]


def test_rebuild_smoke_study_is_one_run_per_trial_and_idempotent(tmp_path):
    folder = tmp_path / STUDY
    shutil.copytree(EXPERIMENTS / STUDY, folder)
    shutil.copy(EXPERIMENTS / SIDECAR, tmp_path / SIDECAR)
    backfill = read_backfill(tmp_path)
    storage = open_storage(folder)
    assert storage is not None, f"no storage found in {folder}"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sources = study_sources(tmp_path, [STUDY])

    first = rebuild(sources, uri, profiles=["smoke"])
    ostudy = optuna.load_study(study_name=f"{STUDY}-smoke", storage=storage)
    trials = ostudy.get_trials(deepcopy=False)
    assert [r["study"] for r in first] == [f"{STUDY}-smoke"]
    assert first[0]["created"] == len(trials) + 1  # the parent and one run per trial

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(f"findings/{STUDY}")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`sidrec.kind` = 'study'")
    assert parent.data.tags["profile"] == "smoke" and parent.data.tags["dataset"] == "synthetic"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert artifacts == {"report/report.md", "report/smoke.png"}
    runs = _trial_runs(client, parent.info.run_id)
    assert sorted(runs) == sorted(f"{STUDY}:{STUDY}-smoke#{t.number}" for t in trials)
    objective = ostudy.user_attrs["objective"]
    for t in trials:
        run = runs[f"{STUDY}:{STUDY}-smoke#{t.number}"]
        assert run.data.tags["level"] == t.user_attrs["grid_point"][0]
        assert run.data.tags["seed"] == str(t.user_attrs["grid_point"][1])
        assert run.data.tags["commit"] == "not recorded"  # landed_in is a bound, not it
        landed = backfill[trial_key_of(f"{STUDY}-smoke", t)][LANDED_IN]
        assert landed and run.data.tags[LANDED_IN] == landed
        recorded = (t.user_attrs.get("metrics") or {}).get("trial_key", "not recorded")
        assert run.data.tags["trial_key"] == recorded
        assert run.data.params["level"] == t.user_attrs["grid_point"][0]
        metrics = run.data.metrics
        assert metrics[mlflow_key(objective)] == pytest.approx(t.value, abs=0)
        stored = scalar_attrs(t.user_attrs)
        assert {k for k in metrics} == {mlflow_key(k) for k in stored} | {mlflow_key(objective)}
        for key, value in stored.items():
            if key != objective:
                assert metrics[mlflow_key(key)] == pytest.approx(value, abs=0), key
        assert next(iter(metrics)) == "test/ndcg_at_10"  # logged first: the compare view's pick

    again = rebuild(sources, uri, profiles=["smoke"])
    assert again[0]["created"] == again[0]["replaced"] == again[0]["deleted"] == 0
    assert again[0]["unchanged"] == len(trials) + 1
    ids = {k: r.info.run_id for k, r in runs.items()}
    assert {k: r.info.run_id for k, r in _trial_runs(client, parent.info.run_id).items()} == ids

    # a trial added to the storage since: only its run is created, the parent's tags follow
    ostudy.add_trial(
        optuna.trial.create_trial(
            value=0.5, user_attrs={"grid_point": ["extra", 9], "test/ndcg@10": 0.25}
        )
    )
    third = rebuild(sources, uri, profiles=["smoke"])
    assert (third[0]["created"], third[0]["updated"]) == (1, 1)
    assert third[0]["unchanged"] == len(trials)
    runs = _trial_runs(client, parent.info.run_id)
    new = runs[f"{STUDY}:{STUDY}-smoke#{len(trials)}"]
    assert new.data.metrics[mlflow_key(objective)] == 0.5 and new.data.tags["level"] == "extra"
    assert {k: r.info.run_id for k, r in runs.items() if k in ids} == ids


def test_rebuild_search_keeps_pruned_trials_curves_and_retrains(tmp_path):
    folder = tmp_path / "tune" / "sasrec"
    shutil.copytree(EXPERIMENTS / "tune" / "sasrec", folder)
    (source,) = tune_sources(tmp_path, ["sasrec"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (row,) = rebuild([source], uri)
    ostudy = optuna.load_study(study_name="tune-sasrec-beauty", storage=source.storage)
    trials = ostudy.get_trials(deepcopy=False)
    retrain_study = optuna.load_study(
        study_name="tune-sasrec-beauty-retrain", storage=source.storage
    )
    done = retrain_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    retrains = len(done)
    assert retrains > 0
    assert row["runs"] == len(trials) + retrains and row["created"] == row["runs"] + 1

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("findings/tune/sasrec")
    runs = {
        r.data.tags[KEY_TAG]: r for r in client.search_runs([exp.experiment_id], max_results=1000)
    }
    for t in trials:
        run = runs[f"tune/sasrec:tune-sasrec-beauty#{t.number}"]
        assert (
            run.info.status
            == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        )
        assert run.data.params == {
            k: json.dumps(v) if not isinstance(v, str) else v for k, v in t.params.items()
        }
        history = client.get_metric_history(run.info.run_id, "intermediate/valid/ndcg_at_10")
        assert {m.step: m.value for m in history} == t.intermediate_values
    first = next(t for t in done if t.user_attrs["config"] == "best")
    retrain = runs[f"tune/sasrec:tune-sasrec-beauty/retrain/s{first.user_attrs['seed']}"]
    figures = first.user_attrs["metrics"]
    assert retrain.data.metrics == {mlflow_key(k): float(v) for k, v in figures.items()}


def test_ablate_cli_rebuilds_and_prints_totals(tmp_path, capsys):
    shutil.copytree(EXPERIMENTS / STUDY, tmp_path / STUDY)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["--study", STUDY, "--to-mlflow", "--out", str(tmp_path), "--tracking-uri", uri]
    assert ablate_main(argv) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line.get("study") for line in lines[:-1]] == [f"{STUDY}-beauty", f"{STUDY}-smoke"]
    assert lines[-1]["tracking_uri"] == uri and lines[-1]["created"] == lines[-1]["runs"] + 2
    assert ablate_main(argv) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["created"] == 0


def test_a_live_run_logs_the_headline_first(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SIDREC_EXPERIMENT", "live")
    with start_run("eval_sidlm", {}, dataset="synthetic", metrics_dir=None, enabled=True) as run:
        run.record(**{"valid/hr@1": 0.1, "test/hr@10": 0.4, "valid/ndcg@10": 0.2})
        run.record(**{"test/ndcg@10": 0.3})  # a key logged later comes after the first batch
    logged = list(MlflowClient(uri).get_run(run.run_id).data.metrics)
    assert logged[:4] == ["valid/ndcg_at_10", "test/hr_at_10", "valid/hr_at_1", "test/ndcg_at_10"]
