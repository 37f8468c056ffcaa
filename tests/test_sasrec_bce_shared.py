"""SASRec's cornac-style options: the ``bce_shared`` loss and its negative pool, ``item_bias``,
``emb_scale`` and the optimiser's ``train.betas``."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sidrec_core.config import ConfigError, build
from sidrec_core.data.negatives import NegativeSampler
from sidrec_core.data.synthetic import planted_successor
from sidrec_core.models.losses import bce_shared_loss
from sidrec_core.models.sasrec import SASRec, SASRecConfig
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.train import TrainConfig, fit
from tests.test_sasrec import SMALL

NO_USERS = [np.array([], dtype=np.int64)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_bce_shared_equals_the_hand_computed_mean_over_kept_entries():
    scores = torch.tensor([[2.0, -1.0, 0.5, 1.0], [0.0, 1.0, -2.0, 3.0]])
    # row 0's target (item 3) comes back as the sampled negative in column 3: left out
    candidates = torch.tensor([3, 5, 7, 3])
    entries = [
        _softplus(-2.0), _softplus(-1.0), _softplus(0.5),  # row 0: positive, 2 negatives
        _softplus(0.0), _softplus(-1.0), _softplus(-2.0), _softplus(3.0),  # row 1
    ]  # fmt: skip
    expected = sum(entries) / len(entries)
    assert float(bce_shared_loss(scores, candidates)) == pytest.approx(expected, rel=1e-6)
    # balanced: per row, the positive plus the mean of the kept negatives, then over rows
    row0 = entries[0] + (entries[1] + entries[2]) / 2
    row1 = entries[4] + (entries[3] + entries[5] + entries[6]) / 3
    balanced = bce_shared_loss(scores, candidates, balanced=True)
    assert float(balanced) == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_bce_shared_without_duplicates_is_cornacs_plain_mean():
    scores = torch.randn(3, 7)
    candidates = torch.tensor([1, 2, 3, 10, 11, 12, 13])
    labels = torch.zeros(3, 7)
    labels[[0, 1, 2], [0, 1, 2]] = 1.0
    expected = F.binary_cross_entropy_with_logits(scores, labels)
    assert float(bce_shared_loss(scores, candidates)) == pytest.approx(float(expected), rel=1e-6)


def test_bce_shared_gives_no_gradient_to_left_out_entries():
    scores = torch.zeros(2, 4, requires_grad=True)
    bce_shared_loss(scores, torch.tensor([4, 4, 9, 4])).backward()
    # every non-diagonal column holding the row's own target (item 4) is left out
    assert scores.grad[0, 1] == 0 and scores.grad[0, 3] == 0 and scores.grad[1, 0] == 0
    assert scores.grad[1, 3] == 0 and scores.grad[0, 2] > 0 and scores.grad[0, 0] < 0


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_shared_pool_follows_popularity_to_the_alpha(alpha):
    counts = np.array([0, 400, 100, 0, 25, 1])  # index 0 = padding, item 3 never trained on
    sampler = NegativeSampler("popular", counts, NO_USERS, alpha=alpha, seed=0)
    draws = sampler.draw(200_000)
    weights = np.where(counts[1:] > 0, counts[1:].astype(float) ** alpha, 0.0)
    freq = np.bincount(draws, minlength=len(counts)) / len(draws)
    assert np.abs(freq[1:] - weights / weights.sum()).max() < 0.005
    # never the padding id, never an item without training interactions
    assert freq[0] == 0 and freq[3] == 0


def test_stage_batches_carry_one_unfiltered_pool_larger_than_the_catalogue(syn_loo):
    k = 3 * syn_loo.num_items  # drawn with replacement, so K may exceed the catalogue
    cfg = SASRecConfig(**SMALL, loss="bce_shared", bce_shared_negatives=k)
    batches = make_batches(cfg, syn_loo, seed=0)
    batch = next(iter(batches(1)))
    assert batch["negatives"].shape == (k,) and "negative_valid" not in batch
    # unfiltered: with K >> N, some pool item is bound to be a positive of some row's user
    positives = np.concatenate([syn_loo.train_sequences[u] for u in batch["user"].tolist()])
    assert np.isin(batch["negatives"].numpy(), positives).any()
    assert cfg.negatives_per_step == k


def test_item_bias_adds_the_items_scalar_to_its_score(syn_loo):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(**SMALL, loss="ce", item_bias=True), syn_loo.num_items).eval()
    history = torch.as_tensor(syn_loo.split("test", SMALL["max_history"]).histories[:4])
    before = model.score_all(history)
    with torch.no_grad():
        model.item_bias[7] = 2.5
    after = model.score_all(history)
    assert torch.allclose(after[:, 7] - before[:, 7], torch.full((4,), 2.5))
    others = torch.arange(after.shape[1]) != 7
    assert torch.equal(after[:, others], before[:, others])
    table = model.item_table()
    h = model.encode(history, table)[:, -1]
    ids = torch.tensor([7, 3])
    assert torch.allclose(model.score(h, table, ids), h @ table[ids].T + model.item_bias[ids])


def test_emb_scale_multiplies_the_input_embeddings_by_sqrt_dim_only(syn_loo):
    torch.manual_seed(0)
    plain = SASRec(SASRecConfig(**SMALL), syn_loo.num_items).eval()
    scaled = SASRec(SASRecConfig(**SMALL, emb_scale=True), syn_loo.num_items).eval()
    scaled.load_state_dict(plain.state_dict())
    history = torch.as_tensor(syn_loo.split("test", SMALL["max_history"]).histories[:4])
    table = plain.item_table()
    factor = SMALL["hidden_dim"] ** 0.5
    with torch.no_grad():
        expected = plain.encode(history, table * factor)
        assert torch.allclose(scaled.encode(history, table), expected, atol=1e-5)
        assert not torch.allclose(scaled.encode(history, table), plain.encode(history, table))
        # the output side is the unscaled table
        assert torch.equal(scaled.item_table(), plain.item_table())


def test_bad_combinations_fail_naming_the_key():
    with pytest.raises(ValueError, match="sasrec.item_bias"):
        SASRecConfig(loss="bce", item_bias=True)
    with pytest.raises(ValueError, match="sasrec.bce_shared_negatives"):
        SASRecConfig(loss="bce_shared", num_negatives=8)
    with pytest.raises(ConfigError, match="train.betas"):
        build(TrainConfig, {"betas": [0.9, 1.5]}, "train")
    assert build(TrainConfig, {"betas": [0.9, 0.98]}, "train").betas == (0.9, 0.98)


def test_betas_reach_the_optimiser(syn_loo, monkeypatch):
    seen = {}
    real = torch.optim.AdamW

    def spy(params, **kw):
        seen.update(kw)
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", spy)
    cfg = SASRecConfig(**SMALL, train=TrainConfig(epochs=1, max_steps=1, betas=(0.9, 0.98)))
    model = SASRec(cfg, syn_loo.num_items)
    batches = make_batches(cfg, syn_loo, seed=0)
    fit(model, batches, lambda: {"valid/ndcg@10": 0.0}, cfg.train, device=torch.device("cpu"))
    assert seen["betas"] == (0.9, 0.98)


def test_bce_shared_with_bias_and_scale_learns_the_planted_successor(syn_ds, syn_loo, syn_cfg):
    torch.manual_seed(0)
    cfg = SASRecConfig(
        **SMALL,
        loss="bce_shared",
        bce_shared_negatives=64,
        item_bias=True,
        emb_scale=True,
        # the loss weighs each positive 1 / (P + K): it idles on a plateau before it ranks, so
        # small batches (small P) and many steps
        train=TrainConfig(epochs=30, batch_size=8, lr=5e-3, grad_clip=0, betas=(0.9, 0.98)),
    )
    model, batches = SASRec(cfg, syn_loo.num_items), make_batches(cfg, syn_loo, seed=0)
    key_to_id = {k: i for i, k in enumerate(syn_ds.item_keys)}
    succ = planted_successor(syn_cfg.synthetic_items, syn_cfg.synthetic_clusters, seed=0)
    succ_id = {
        key_to_id[f"SYN{i:06d}"]: key_to_id[f"SYN{s:06d}"]
        for i, s in enumerate(succ)
        if f"SYN{i:06d}" in key_to_id and f"SYN{s:06d}" in key_to_id
    }
    histories = torch.as_tensor(syn_loo.split("test", SMALL["max_history"]).histories)

    def top1_plant_rate() -> float:
        model.eval()
        ids, _ = model.recommend({"history": histories}, 1)
        wanted = [succ_id[int(item)] for item in histories[:, -1]]
        return float(np.mean([int(i) == w for i, w in zip(ids[:, 0], wanted, strict=True)]))

    start = top1_plant_rate()
    epochs = itertools.count()
    result = fit(
        model,
        batches,
        lambda: {"valid/ndcg@10": next(epochs)},  # rising: the last epoch is kept
        cfg.train,
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
    )
    losses = [row["train/loss"] for row in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert start < 0.1 and top1_plant_rate() > 0.6  # the data follow the plant 78% of the time
