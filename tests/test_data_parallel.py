"""The README's data-parallel launch, for real: ``torchrun --nproc_per_node 2
bench/train_sidlm.py`` on CPU (gloo) trains one model from two processes, each on its own shard,
and saves one model that scores like any other."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidrec_core.stages.eval_sidlm import run as run_eval_sidlm
from tests.test_sidlm import TINY, _table

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params_for(syn_prepared: dict, tmp_path: Path, name: str) -> dict:
    return {
        **syn_prepared,
        "base": {**syn_prepared["base"], "metrics_dir": str(tmp_path / name / "metrics")},
        "sidlm": {
            **TINY,
            "sid_dir": str(tmp_path / "sids"),
            "output_dir": str(tmp_path / name / "model"),
            "predictions_dir": str(tmp_path / name / "pred"),
            "shuffle_buffer": 64,
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        },
        "decoding": {"strategy": "constrained", "beam_width": 10, "num_return_sequences": 10},
        "eval": {"bootstrap": 0, "ks": [1, 5, 10], "max_valid_users": 50},
    }


def launch(params: dict, path: Path, processes: int) -> dict:
    path.write_text(yaml.safe_dump(params))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI="")
    env.pop("MLFLOW_TRACKING_URI")
    script = [str(ROOT / "bench" / "train_sidlm.py"), "--params", str(path)]
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), *script]
    done = subprocess.run(cmd, cwd=path.parent, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((Path(params["base"]["metrics_dir"]) / "train_sidlm.json").read_text())


def test_two_process_training_shards_the_data_and_saves_one_scorable_model(
    syn_prepared, syn_ds, tmp_path
):
    _table(syn_ds.num_items).save(tmp_path / "sids")
    one = params_for(syn_prepared, tmp_path, "one")
    two = params_for(syn_prepared, tmp_path, "two")
    single = launch(one, tmp_path / "one.yaml", 1)
    parallel = launch(two, tmp_path / "two.yaml", 2)
    assert single["num_processes"] == 1 and parallel["num_processes"] == 2
    # each process streams half the rows: an epoch has half the optimiser steps
    per_epoch_1 = single["steps"] / single["epochs"]
    per_epoch_2 = parallel["steps"] / parallel["epochs"]
    assert per_epoch_2 == pytest.approx(per_epoch_1 / 2, abs=1)
    assert (Path(two["sidlm"]["output_dir"]) / "model.safetensors").exists()
    scored = run_eval_sidlm(two)
    assert scored["invalid_rate"] == 0.0 and 0.0 < scored["test/hr@10"] <= 1.0
