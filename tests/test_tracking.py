"""MLflow tracking behind tracking.py: a real sqlite-backed run, tags, metrics JSON with run id."""

import json
import os
from pathlib import Path

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


def _client(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("SIDREC_EXPERIMENT", "test-exp")
    return MlflowClient(uri)


def test_runs_of_killed_processes_are_marked_killed(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    from sidrec_core.lifecycle import HOST_TAG, PID_TAG, process_tags

    client = _client(tmp_path, monkeypatch)
    exp = client.create_experiment("other-exp")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    runs = {
        "dead": {PID_TAG: str(dead.pid), HOST_TAG: host},
        "alive": process_tags(),
        "elsewhere": {PID_TAG: str(dead.pid), HOST_TAG: host + "-other"},
        "untagged": {},
    }
    ids = {name: client.create_run(exp, tags=tags).info.run_id for name, tags in runs.items()}
    with start_run("prepare", {}, dataset="synthetic", metrics_dir=None, enabled=True) as run:
        tags = mlflow.get_run(run.run_id).data.tags
        assert tags[PID_TAG] == str(os.getpid()) and tags[HOST_TAG] == host
    status = {name: client.get_run(i).info.status for name, i in ids.items()}
    assert status == {
        "dead": "KILLED",
        "alive": "RUNNING",
        "elsewhere": "RUNNING",
        "untagged": "RUNNING",
    }


SIGTERM_CHILD = """
import sys, time
from sidrec_core.tracking import start_run
with start_run("train_sasrec", {}, dataset="synthetic", metrics_dir=None, enabled=True) as run:
    with start_run("child", {}, dataset="synthetic", metrics_dir=None, enabled=True) as kid:
        open(sys.argv[1], "w").write(run.run_id + " " + kid.run_id)
        time.sleep(120)
"""


def test_sigterm_ends_open_runs_as_killed(tmp_path, monkeypatch):
    import signal
    import subprocess
    import sys
    import time

    client = _client(tmp_path, monkeypatch)
    ids_file = tmp_path / "ids"
    env = {
        **os.environ,
        "SIDREC_TRACKING": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    child = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(ids_file)], env=env)
    deadline = time.time() + 120
    while not (ids_file.exists() and ids_file.read_text()) and time.time() < deadline:
        assert child.poll() is None, "child exited early"
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 128 + signal.SIGTERM
    for run_id in ids_file.read_text().split():
        assert client.get_run(run_id).info.status == "KILLED"


def test_reopening_a_run_absent_from_the_store_opens_a_new_one(tmp_path, monkeypatch):
    _client(tmp_path, monkeypatch)
    kw = {"dataset": "synthetic", "metrics_dir": None, "enabled": True}
    with start_run("study/x", {"a": 1}, **kw) as first:
        pass
    with start_run("study/x", {"a": 1}, run_id=first.run_id, **kw) as again:
        assert again.run_id == first.run_id
    absent = "0" * 32  # a parent run named by a storage committed on another machine
    with start_run("study/x", {"a": 1}, run_id=absent, **kw) as fresh:
        assert fresh.run_id not in (absent, first.run_id)
    assert mlflow.get_run(fresh.run_id).data.params["a"] == "1"


def test_benchmark_provenance_names_the_command_commit_and_whether_cores_were_idle(monkeypatch):
    from sidrec_core import perf
    from sidrec_core.perf import git_commit

    monkeypatch.setattr("sys.argv", ["bench/perf/sasrec_perf.py", "--steps", "40"])
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    made = perf.provenance(threads=1)
    assert made["command"] == "python bench/perf/sasrec_perf.py --steps 40"
    assert made["commit"] == git_commit() and made["threads"] == 1 and made["device"] == "cpu"
    assert made["idle"] is True and made["load_1m_before"] == 0.2
    assert json.loads(json.dumps(made)) == made  # goes into the JSON as it is
    monkeypatch.setattr(os, "getloadavg", lambda: (1.04, 0.9, 0.5))  # another job on a core
    assert perf.provenance(threads=1)["idle"] is False


def test_a_new_sqlite_store_is_created_by_one_process_at_a_time(tmp_path):
    """Two launches creating one new store at once raced on MLflow's migrations ("table ...
    already exists"); the second opening waits for the lock the first holds."""
    import fcntl
    import threading

    from sidrec_core.tracking import open_store

    open_store(f"sqlite:///{tmp_path / 'warm.db'}")  # imports done: the wait below is the lock's
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    with open(f"{db}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process creating the store
        opener = threading.Thread(target=open_store, args=(uri,))
        opener.start()
        opener.join(timeout=2.0)
        assert opener.is_alive() and not db.exists()  # queued, not migrating beside it
    opener.join(timeout=60)
    assert not opener.is_alive() and db.stat().st_size > 0


def test_a_store_that_cannot_be_opened_is_named_in_one_line(tmp_path, monkeypatch):
    """MLflow retries a store it cannot open for ~100 s before raising; the failure it raises
    then is what is stubbed here."""
    import mlflow.tracking
    import sqlalchemy.exc

    from sidrec_core.config import ConfigError
    from sidrec_core.tracking import open_store

    class Unopenable:
        def __init__(self, uri):
            raise sqlalchemy.exc.OperationalError("connect", {}, Exception("unable to open file"))

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Unopenable)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with pytest.raises(ConfigError, match=f"MLflow store {uri}: unable to open file"):
        open_store(uri)
