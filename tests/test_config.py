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
from sidrec_core.models.sasrec import SASRecConfig
from sidrec_core.rl.grpo import RLConfig
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "sasrec:\n  loss: bce\n  hidden_dim: 8\n  loss: ce\n",
            r"p.yaml:4: duplicate key sasrec.loss \(first on line 2\)",
        ),
        (
            "sasrec:\n  loss: bce\nbase:\n  seed: 1\nsasrec:\n  loss: ce\n",
            r"p.yaml:5: duplicate key sasrec \(first on line 1\)",
        ),
        (
            "sasrec:\n  train:\n    lr: 0.1\n    lr: 0.2\n",
            r"p.yaml:4: duplicate key sasrec.train.lr",
        ),
    ],
)
def test_duplicate_yaml_key_names_key_and_lines(tmp_path, text, expected):
    # plain yaml.safe_load keeps the last value without a word
    p = tmp_path / "p.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=expected) as exc:
        load_params(p)
    assert "\n" not in str(exc.value)


def test_invalid_yaml_is_one_line_with_position(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("sasrec:\n  loss: [bce\n")
    with pytest.raises(ConfigError, match=r"p.yaml:3:1: invalid YAML: expected ',' or ']'") as exc:
        load_params(p)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("cls", "section", "prefix", "expected"),
    [
        (RLConfig, {"beta": -1}, "rl", "rl.beta must be >= 0 (0 = no KL term"),
        (RLConfig, {"weights": {"rule": -1}}, "rl", "rl.weights.rule must be a finite number"),
        (TrainConfig, {"lr": 0}, "sasrec.train", "sasrec.train.lr must be > 0, got 0.0"),
        (DataConfig, {"max_history": 0}, "data", "data: max_history must be >= 1"),
    ],
)
def test_config_errors_name_the_key_once(cls, section, prefix, expected):
    with pytest.raises(ConfigError) as exc:
        build(cls, section, prefix)
    assert str(exc.value).startswith(expected)


def test_monitor_and_cutoffs_checked_before_training(tmp_path, syn_prepared):
    from sidrec_core.stages.context import build_configs
    from sidrec_core.stages.train_sasrec import run as run_sasrec

    sections = {"eval": EvalConfig, "sasrec": SASRecConfig}
    with pytest.raises(ConfigError, match=r"sasrec.train.monitor 'valid/foo': .* eval.ks"):
        build_configs({"sasrec": {"train": {"monitor": "valid/foo"}}}, sections, "sasrec.train")
    with pytest.raises(ConfigError, match=r"sasrec.train.monitor 'valid/ndcg@10': .*\[500\]"):
        build_configs({"eval": {"ks": [500]}}, sections, "sasrec.train")
    # a stage reading sasrec without training it does not check its monitor
    assert build_configs({"eval": {"ks": [500]}}, sections)["eval"].ks == (500,)
    # the catalogue's size is known once the data loads: still before the first epoch
    params = {
        **syn_prepared,
        "eval": {"ks": [5, 500], "bootstrap": 0},
        "sasrec": {
            "hidden_dim": 8,
            "checkpoint": str(tmp_path / "sasrec.pt"),
            "train": {"epochs": 1, "monitor": "valid/ndcg@5"},
        },
    }
    with pytest.raises(
        ValueError, match=r"eval.ks: cut-off\(s\) \[500\] exceed the catalogue's 60"
    ):
        run_sasrec(params)
    assert not (tmp_path / "sasrec.pt").exists()


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
    with pytest.raises(ConfigError, match=r"sasrec.train.monitor (must look like|.* expected)"):
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
