"""Shared fixtures: a tiny synthetic corpus; MLflow tracking off for unit tests."""

from __future__ import annotations

import os

os.environ.setdefault("SIDREC_TRACKING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from sidrec_core.data.dataset import DataConfig, load_dataset, save_prepared  # noqa: E402
from sidrec_core.data.split import leave_one_out  # noqa: E402

torch.set_num_threads(2)

SYN = {"name": "synthetic", "synthetic_users": 200, "synthetic_items": 60, "synthetic_clusters": 4}


@pytest.fixture(scope="session")
def syn_cfg() -> DataConfig:
    return DataConfig(**SYN)


@pytest.fixture(scope="session")
def syn_ds(syn_cfg):
    return load_dataset(syn_cfg, seed=0)


@pytest.fixture(scope="session")
def syn_loo(syn_ds):
    return leave_one_out(syn_ds)


@pytest.fixture()
def syn_params(tmp_path, syn_cfg):
    """A params dict for the synthetic corpus with every output under tmp_path."""
    prepared = tmp_path / "prepared"
    return {
        "base": {
            "seed": 0,
            "device": "cpu",
            "profile": "test",
            "metrics_dir": str(tmp_path / "metrics"),
        },
        "data": {**SYN, "prepared_dir": str(prepared)},
        "embed": {"model": "synthetic", "output": str(tmp_path / "embeddings.npy")},
        "eval": {"bootstrap": 0},
    }


@pytest.fixture()
def syn_prepared(syn_params, syn_ds):
    save_prepared(syn_ds, syn_params["data"]["prepared_dir"])
    return syn_params


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine they lose a lot. A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def dvc_cache(tmp_path, monkeypatch):
    """A trial that runs DVC uses a cache of its own test, not the project's run-cache."""
    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path / "dvc-cache"))


@pytest.fixture()
def stages_in_process(monkeypatch):
    """Trials call their stages in this process, each in a fresh folder with nothing cached,
    instead of through DVC (``dvc_run.run_trial``): scheduler and report tests run in seconds;
    the tests marked slow run DVC itself (a spawned worker always does)."""
    import contextlib
    import copy

    from sidrec_core.config import params_hash
    from sidrec_core.stages import stage_function
    from sidrec_core.studies import dvc_run
    from sidrec_core.studies.pipeline import load_pipeline, ordered

    def run_trial(run, reuse, params, trial_dir, env=None):
        pipeline = load_pipeline()
        work = trial_dir / "work"
        work.mkdir(parents=True, exist_ok=True)
        with monkeypatch.context() as m, contextlib.chdir(work):
            for key, value in (env or {}).items():
                m.setenv(key, value)
            for name in ordered((*reuse, *run), pipeline):
                stage_function(name)(copy.deepcopy(params))
        targets = ordered(run, pipeline)
        return dvc_run.trial_metrics(work, targets, set(targets), params_hash(params), trial_dir)

    monkeypatch.setattr(dvc_run, "run_trial", run_trial)
