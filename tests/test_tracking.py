"""MLflow tracking behind tracking.py: a real sqlite-backed run, tags, metrics JSON with run id."""

import json

import mlflow
import pytest

from sidrec_core.tracking import start_run


def test_stage_run_logs_to_sqlite(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SIDREC_EXPERIMENT", "test-exp")
    params = {"data": {"name": "synthetic", "max_history": 20}}
    with start_run(
        "prepare",
        params,
        dataset="synthetic",
        profile="smoke",
        metrics_dir=tmp_path / "m",
        enabled=True,
    ) as run:
        run.record(num_users=7, utilization=[0.5, 1.0])
        run.log_metrics({"train/loss": 1.0}, step=1)
        with start_run(
            "child", params, dataset="synthetic", metrics_dir=None, nested=True, enabled=True
        ) as child:
            child.log_metrics({"test/ndcg@10": 0.2})
    payload = json.loads((tmp_path / "m" / "prepare.json").read_text())
    assert payload["num_users"] == 7 and payload["utilization"] == [0.5, 1.0]
    assert payload["dataset"] == "synthetic" and payload["profile"] == "smoke"
    mlflow.set_tracking_uri(uri)
    r = mlflow.get_run(payload["mlflow_run_id"])
    assert r.data.tags["stage"] == "prepare" and r.data.tags["dataset"] == "synthetic"
    assert r.data.tags["synthetic"] == "True" and len(r.data.tags["params_hash"]) == 12
    assert r.data.params["data.max_history"] == "20"
    assert r.data.metrics["num_users"] == 7 and "wall_seconds" in r.data.metrics
    assert "peak_rss_mb" in r.data.metrics and r.data.metrics["utilization/1"] == 1.0
    kids = mlflow.search_runs(
        experiment_names=["test-exp"], filter_string=f"tags.mlflow.parentRunId = '{r.info.run_id}'"
    )
    assert len(kids) == 1 and kids.iloc[0]["metrics.test/ndcg_at_10"] == pytest.approx(0.2)


def test_failed_stage_writes_no_metrics(tmp_path):
    with pytest.raises(RuntimeError):
        with start_run("embed", {}, dataset="x", metrics_dir=tmp_path, enabled=False):
            raise RuntimeError("boom")
    assert not (tmp_path / "embed.json").exists()
