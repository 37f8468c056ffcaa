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
