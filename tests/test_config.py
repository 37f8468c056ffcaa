"""Strict config loading, overrides, device and seeds."""

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import torch

from sidrec_core.config import (
    SECTIONS,
    BaseConfig,
    ConfigError,
    apply_overrides,
    build,
    load_params,
)
from sidrec_core.data.dataset import DataConfig
from sidrec_core.evaluate import EvalConfig
from sidrec_core.train import TrainConfig
from sidrec_core.utils import resolve_device, seed_everything


@dataclasses.dataclass(frozen=True)
class _Model:
    loss: Literal["bce", "ce"] = "bce"
    dim: int = 8
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def test_defaults_and_overrides():
    cfg = build(_Model, {"loss": "ce", "train": {"lr": 0.01}}, "sasrec")
    assert cfg.loss == "ce" and cfg.dim == 8 and cfg.train.lr == 0.01 and cfg.train.epochs == 200
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dim = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "section, needle",
    [
        ({"los": "ce"}, "sasrec.los"),
        ({"loss": "mse"}, "sasrec.loss: expected one of ['bce', 'ce']"),
        ({"dim": "8"}, "sasrec.dim: expected an integer"),
        ({"dim": True}, "sasrec.dim: expected an integer"),
        ({"train": {"lr": "fast"}}, "sasrec.train.lr: expected a number"),
        ({"train": {"epochs": 0}}, "train.epochs must be >= 1"),
        ({"train": {"bogus": 1}}, "sasrec.train.bogus"),
    ],
)
def test_strict_errors_name_the_key(section, needle):
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        build(_Model, section, "sasrec")


def test_tuple_and_optional_fields():
    ev = build(EvalConfig, {"ks": [5, 10], "max_valid_users": None}, "eval")
    assert ev.ks == (5, 10)
    with pytest.raises(ConfigError, match="eval.ks"):
        build(EvalConfig, {"ks": 10}, "eval")
    with pytest.raises(ConfigError, match="data"):
        build(DataConfig, {"max_history": 0}, "data")


def test_load_params_and_set_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base:\n  seed: 3\ndata:\n  name: beauty\n")
    params = apply_overrides(
        load_params(p), ["data.max_history=50", "base.device=cpu", "eval.ks=[5,10]"]
    )
    assert params["data"] == {"name": "beauty", "max_history": 50}
    assert params["eval"]["ks"] == [5, 10]
    assert build(BaseConfig, params["base"], "base").seed == 3
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(params, ["data.name"])
    with pytest.raises(ConfigError, match="section.key"):
        apply_overrides(params, ["name=x"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'data' must be a mapping"):
        load_params(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_misspelled_section_is_rejected_in_file_and_set(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("base:\n  seed: 3\nsasrc:\n  train:\n    epochs: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown params section 'sasrc'") as exc:
        load_params(p)
    assert "\n" not in str(exc.value) and "sasrec" in str(exc.value)
    with pytest.raises(ConfigError, match=r"--set sasrc.train.epochs: .*'sasrc'"):
        apply_overrides({}, ["sasrc.train.epochs=1"])
    with pytest.raises(ConfigError, match="'dat'"):
        apply_overrides({}, ["dat.name=synthetic"])
    assert apply_overrides({}, ["sasrec.train.epochs=1"]) == {"sasrec": {"train": {"epochs": 1}}}


def test_repo_params_and_profiles_use_only_known_sections():
    root = Path(__file__).resolve().parents[1]
    files = [root / "params.yaml", *sorted((root / "experiments" / "profiles").glob("*.yaml"))]
    for f in files:
        assert set(load_params(f)) <= set(SECTIONS), f


def test_seed_zero_is_seeded_and_reproducible():
    seed_everything(0)
    a = torch.rand(3)
    seed_everything(0)
    assert torch.equal(a, torch.rand(3))
    seed_everything(1)
    assert not torch.equal(a, torch.rand(3))


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="base.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="base.device: .cuda"):
            resolve_device("cuda")


def test_config_time_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"base: seed must be >= 0 .* got -1"):
        build(BaseConfig, {"seed": -1}, "base")
    with pytest.raises(ConfigError, match=r"base.device: expected one of"):
        build(BaseConfig, {"device": "gpu"}, "base")
    with pytest.raises(ValueError, match=r"base.seed must be an integer >= 0"):
        seed_everything(-1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"base.device: 'cuda' requested"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match=r"base.device: expected one of"):
        resolve_device("gpu")


@pytest.mark.parametrize(
    "monitor",
    ["valid/ndgc@10", "test/ndcg@10", "valid/ndcg@x", "ndcg@10", "valid/", "valid/hr@0"],
)
def test_bad_train_monitor_fails_at_config_time(monitor):
    with pytest.raises(ConfigError, match=r"sasrec.train: train.monitor"):
        build(TrainConfig, {"monitor": monitor}, "sasrec.train")


@pytest.mark.parametrize("monitor", ["valid/ndcg@10", "valid/mrr@5", "valid/neg_recon_mse"])
def test_good_train_monitor(monitor):
    assert build(TrainConfig, {"monitor": monitor}, "sasrec.train").monitor == monitor


def test_artifacts_are_group_readable(tmp_path):
    from sidrec_core.io import save_npy, write_json

    write_json(tmp_path / "a" / "m.json", {"x": 1})
    save_npy(tmp_path / "a" / "e.npy", np.zeros(2))
    for name in ("m.json", "e.npy"):
        assert (tmp_path / "a" / name).stat().st_mode & 0o777 == 0o644


def test_make_clean_keeps_tracked_metrics():
    root = Path(__file__).resolve().parents[1]
    lines = (root / "Makefile").read_text().split("clean:", 1)[1].splitlines()
    recipe = " ".join(line for line in lines[1:] if line.startswith("\t"))
    assert "rm " in recipe and "metrics" not in recipe and "data/datasets" not in recipe


def test_every_known_section_has_its_config_class():
    from sidrec_core.stages import section_configs

    assert set(SECTIONS) == set(section_configs())
