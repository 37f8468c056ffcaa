"""SID tokenizers: determinism, checkpoint round trip, constrained sizes, bad input."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch

from sidrec_core.config import ConfigError, apply_overrides, build
from sidrec_core.sid.config import ConstrainedConfig, QuantizerConfig, RQVAEConfig, SIDConfig
from sidrec_core.sid.registry import TOKENIZERS, load_tokenizer, make_tokenizer
from sidrec_core.sid.rqkmeans import RQKMeans, RQKMeansConstrained
from sidrec_core.sid.rqvae import RQVAE, RQKMeansPlus
from sidrec_core.sid.tokenizer import CHECKPOINT_NAME

SMALL = dict(num_levels=2, codebook_size=8)
LEARNED = RQVAEConfig(hidden_dims=(16,), latent_dim=4, epochs=3, batch_size=64)


def _x(n: int = 200, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dim)) * 2
    return (centres[rng.integers(6, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)


def _tokenizer(method: str, seed: int = 0, **extra):
    return make_tokenizer(SIDConfig(method=method, **SMALL, rqvae=LEARNED, **extra), 8, seed)


METHODS = ["rqkmeans", "rqkmeans_constrained", "rqvae", "rqkmeans_plus"]


@pytest.mark.parametrize("method", METHODS)
def test_same_seed_same_sids(method):
    x = _x()
    a = _tokenizer(method, seed=3).fit(x)
    b = _tokenizer(method, seed=3).fit(x)
    assert a.shape == (200, 2) and a.dtype == np.int64
    assert np.array_equal(a, b)
    assert a.min() >= 0 and a.max() < 8


@pytest.mark.parametrize("method", METHODS)
def test_saved_tokenizer_reloads_and_encodes_identically(method, tmp_path):
    x, new = _x(), _x(50, seed=9)
    tok = _tokenizer(method)
    tok.fit(x)
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok)
    assert again.cfg == tok.cfg and again.args() == tok.args()
    assert np.array_equal(again.encode(new), tok.encode(new))
    codes = tok.encode(x)
    np.testing.assert_allclose(again.decode(codes), tok.decode(codes), rtol=1e-6)


@pytest.mark.parametrize("method", ["rqkmeans", "rqvae", "rqkmeans_plus"])
def test_fit_codes_are_the_encoding_and_decode_reconstructs(method):
    x = _x()
    tok = _tokenizer(method)
    codes = tok.fit(x)
    assert np.array_equal(codes, tok.encode(x))
    if method == "rqkmeans":  # the learned ones are barely trained here
        assert tok.reconstruction_mse(x, codes) < float(np.mean((x - x.mean(0)) ** 2))
    dist = tok.last_level_distances(x, codes)
    assert dist.shape == (200, 8)
    assert np.array_equal(dist.argmin(1), codes[:, -1])  # the chosen code is the nearest


def test_rqkmeans_plus_starts_as_rqkmeans():
    """Zero-initialised residual encoder: before training the codes are RQ-KMeans' codes."""
    x = _x()
    plus = RQKMeansPlus(8, **SMALL, cfg=RQVAEConfig(hidden_dims=(16,), epochs=1))
    plain = RQKMeans(8, **SMALL, normalize_residuals=False)
    ref = plain.fit(x)
    plus.quantizer.init_from_data(plus.latents(x).numpy(), batch_size=64)
    assert np.array_equal(plus.encode(x), ref)


def test_constrained_cluster_sizes_stay_in_band():
    x = _x(240)
    tok = RQKMeansConstrained(8, **SMALL, cfg=ConstrainedConfig(size_band=0.25))
    codes = tok.fit(x)
    for level in range(2):
        sizes = np.bincount(codes[:, level], minlength=8)
        assert sizes.min() >= 22 and sizes.max() <= 38  # 30 * (1 -/+ 0.25)
    plain = RQKMeans(8, **SMALL).fit(x)
    assert np.bincount(plain[:, 0]).std() >= np.bincount(codes[:, 0]).std()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_embeddings_fail(bad):
    x = _x()
    x[5, 2] = bad
    with pytest.raises(ValueError, match="NaN/inf"):
        RQKMeans(8, **SMALL).fit(x)


def test_fewer_items_than_codes_fails_naming_codebook_size():
    with pytest.raises(ValueError, match="sid.codebook_size"):
        RQKMeans(8, num_levels=2, codebook_size=16).fit(_x(10))


def test_infeasible_constrained_band_fails():
    with pytest.raises(ValueError, match="infeasible"):
        RQKMeansConstrained(8, **SMALL, cfg=ConstrainedConfig(size_min=30)).fit(_x(200))
    with pytest.raises(ValueError, match="infeasible"):
        RQKMeansConstrained(8, **SMALL, cfg=ConstrainedConfig(size_max=20)).fit(_x(200))


@pytest.mark.parametrize(
    ("section", "name"),
    [
        ({"quantizer": {"ema": True, "codebook_weight": 1.0}}, "quantizer.codebook_weight"),
        ({"quantizer": {"ema_decay": 1.5}}, "quantizer.ema_decay"),
        ({"quantizer": {"sinkhorn": True, "sinkhorn_epsilon": 0.0}}, "quantizer.sinkhorn_epsilon"),
        ({"quantizer": {"restart_threshold": -1.0}}, "quantizer.restart_threshold"),
        ({"clip": True, "clip_weight": 0.0}, "clip_weight"),
        ({"clip": True, "clip_window": 1}, "clip_window"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_nonsensical_flags_fail_naming_the_dotted_key(section, name):
    with pytest.raises(ConfigError, match=f"sid\\.rqvae\\.{name}"):
        build(SIDConfig, {"method": "rqvae", "rqvae": section}, "sid")


def test_rqkmeans_plus_without_kmeans_init_fails():
    cfg = RQVAEConfig(quantizer=QuantizerConfig(kmeans_init=False))
    with pytest.raises(ValueError, match="sid.rqvae.quantizer.kmeans_init"):
        RQKMeansPlus(8, **SMALL, cfg=cfg)


def test_gradient_codebook_accepts_codebook_weight():
    cfg = RQVAEConfig(quantizer=QuantizerConfig(ema=False, codebook_weight=0.5))
    tok = RQVAE(8, **SMALL, cfg=cfg)
    assert "codebooks" in dict(tok.quantizer.named_parameters())


def test_sid_config_is_strict():
    with pytest.raises(ConfigError, match="sid.methd"):
        build(SIDConfig, {"methd": "rqvae"}, "sid")
    with pytest.raises(ConfigError, match="sid.collision"):
        build(SIDConfig, {"collision": "nearest"}, "sid")
    with pytest.raises(ConfigError, match="max_per_bucket"):
        build(SIDConfig, {"max_per_bucket": 0}, "sid")
    with pytest.raises(ConfigError, match=r"sid\.rqvae\.epochs"):
        build(SIDConfig, {"rqvae": {"epochs": "many"}}, "sid")


def test_unknown_nested_key_fails_naming_the_dotted_key():
    params = apply_overrides({}, ["sid.rqvae.quantizer.sinkorn=true"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) sid\.rqvae\.quantizer\.sinkorn"):
        build(SIDConfig, params["sid"], "sid")
    with pytest.raises(ConfigError, match=r"sid\.constrained\.band"):
        build(SIDConfig, {"constrained": {"band": 0.2}}, "sid")


def test_one_override_reaches_the_quantizer():
    params = apply_overrides({}, ["sid.method=rqvae", "sid.rqvae.quantizer.sinkhorn=true"])
    tok = make_tokenizer(build(SIDConfig, params["sid"], "sid"), dim=8, seed=0)
    assert tok.quantizer.cfg.sinkhorn and tok.quantizer.cfg == tok.cfg.quantizer


def test_registry_covers_every_method():
    methods = typing.get_args(typing.get_type_hints(SIDConfig)["method"])
    assert sorted(methods) == sorted(TOKENIZERS)
    with pytest.raises(ValueError, match="sid.method: unknown tokenizer 'vq'"):
        make_tokenizer(dataclasses.replace(SIDConfig(), method="vq"), dim=8, seed=0)


def test_checkpoint_with_an_unknown_config_key_fails_naming_it(tmp_path):
    _tokenizer("rqvae").save(tmp_path)
    path = tmp_path / CHECKPOINT_NAME
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["quantizer"]["bogus"] = 1
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"sid\.rqvae\.quantizer\.bogus"):
        load_tokenizer(path)
