"""SASRec family: losses, similarities, negative samplers, SID features, batching, the stage."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from sidrec_core.callbacks import EpochMetrics
from sidrec_core.config import ConfigError, build
from sidrec_core.data.batching import TrainBatches
from sidrec_core.data.negatives import NegativeSampler, shared_negatives
from sidrec_core.data.synthetic import planted_successor
from sidrec_core.models.losses import ce_loss, infonce_loss
from sidrec_core.models.sasrec import SASRec, SASRecConfig, load_sid_features
from sidrec_core.models.sasrec import training_batches as make_batches
from sidrec_core.models.similarity import Similarity
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.train_sasrec import run as run_train_sasrec
from sidrec_core.train import TrainConfig, fit

SMALL = {
    "hidden_dim": 32,
    "num_blocks": 1,
    "num_heads": 1,
    "ffn_dim": 32,
    "dropout": 0.0,
    "max_history": 16,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(loo, **kw) -> tuple[SASRec, TrainBatches]:
    torch.manual_seed(0)
    cfg = SASRecConfig(**{**SMALL, "train": TrainConfig(batch_size=64), **kw})
    return SASRec(cfg, loo.num_items), make_batches(cfg, loo, seed=0)


@pytest.mark.parametrize("block", ["pre_ln", "post_ln", "sasrec"])
@pytest.mark.parametrize("loss", ["bce", "infonce", "ce", "sampled_softmax"])
def test_each_loss_decreases_and_reaches_item_embeddings(syn_loo, loss, block):
    model, batches = _model(syn_loo, loss=loss, block=block, num_negatives=8)
    batch = next(batches(1))
    first = model.loss(batch)
    first.backward()
    assert model.item_emb.weight.grad is not None and model.item_emb.weight.grad.abs().sum() > 0
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(30):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert float(model.loss(batch).detach()) < 0.8 * float(first.detach())


def test_infonce_excludes_the_positive_and_its_duplicates():
    sim = Similarity("dot", 4)
    h, pos = torch.randn(3, 4), torch.randn(3, 4)
    # every column holds the row's own item (or the same user's item): nothing is a negative
    same_item = infonce_loss(sim, h, pos, torch.tensor([5, 5, 5]), torch.tensor([0, 1, 2]), 0.1)
    same_user = infonce_loss(sim, h, pos, torch.tensor([5, 6, 7]), torch.tensor([0, 0, 0]), 0.1)
    assert float(same_item) == pytest.approx(0.0, abs=1e-6)
    assert float(same_user) == pytest.approx(0.0, abs=1e-6)
    distinct = infonce_loss(sim, h, pos, torch.tensor([5, 6, 7]), torch.tensor([0, 1, 2]), 0.1)
    logits = h @ pos.T / 0.1
    expected = torch.nn.functional.cross_entropy(logits, torch.arange(3))
    assert float(distinct) == pytest.approx(float(expected), rel=1e-5)


def test_popular_sampler_follows_train_frequencies():
    counts = np.array([0, 400, 200, 100, 50, 25, 0, 125, 100])  # index 0 = padding
    sampler = NegativeSampler("popular", counts, [np.array([], dtype=np.int64)], seed=0)
    draws = sampler.sample(np.zeros(1), (200_000,)).ravel()
    freq = np.bincount(draws, minlength=len(counts))[1:] / len(draws)
    expected = counts[1:] / counts[1:].sum()
    assert np.abs(freq - expected).max() < 0.005
    assert freq[5] == 0  # an item never seen in training is never a popular negative
    sq = NegativeSampler("popular", counts, [np.array([], dtype=np.int64)], alpha=0.5)
    assert np.allclose(sq.probs, counts[1:] ** 0.5 / (counts[1:] ** 0.5).sum())


@pytest.mark.parametrize("name", ["uniform", "popular", "mixed"])
def test_samplers_never_return_a_users_positives(name):
    counts = np.array([0, 1000, 500, 10, 10, 10, 10])
    positives = [np.array([1, 2]), np.array([1, 3, 4]), np.array([6])]
    sampler = NegativeSampler(name, counts, positives, num_negatives=3, seed=1)
    users = np.array([0, 1, 2, 0, 1, 2])
    neg = sampler.sample(users, (50, 3))
    assert neg.shape == (6, 50, 3) and neg.min() >= 1 and neg.max() <= 6
    for row, user in enumerate(users):
        assert not np.isin(neg[row], positives[user]).any()
    items, valid = shared_negatives(sampler, users, 6)
    for row, user in enumerate(users):
        assert (valid[row] == ~np.isin(items, positives[user])).all()


def test_mixed_sampler_mixes_popular_and_uniform():
    counts = np.array([0, 1000] + [0] * 9)  # popular draws can only give item 1
    sampler = NegativeSampler("mixed", counts, [np.array([], dtype=np.int64)], popular_ratio=0.3)
    draws = sampler.sample(np.zeros(1), (50_000,)).ravel()
    share_item1 = (draws == 1).mean()
    assert share_item1 == pytest.approx(0.3 + 0.7 / 10, abs=0.01)


def test_batches_hold_next_items_and_exclude_positives(syn_loo):
    cfg = SASRecConfig(**SMALL, loss="bce", num_negatives=2)
    batches = make_batches(cfg, syn_loo, seed=0)
    seen_users = []
    for batch in batches(1):
        hist, tgt, users = batch["history"], batch["targets"], batch["user"]
        assert batch["negatives"].shape == (*tgt.shape, 2)
        for row, user in enumerate(users.tolist()):
            seq = syn_loo.train_sequences[user][-(SMALL["max_history"] + 1) :]
            n = len(seq) - 1
            assert tgt[row, -n:].tolist() == seq[1:].tolist()
            assert hist[row, -n:].tolist() == seq[:-1].tolist()
            assert not np.isin(batch["negatives"][row].numpy(), syn_loo.train_sequences[user]).any()
        seen_users += users.tolist()
    assert sorted(seen_users) == list(range(len(syn_loo.train_sequences)))


def test_adaptive_weights_get_gradients_and_are_logged_per_epoch(syn_loo):
    model, batches = _model(syn_loo, similarity="adaptive", loss="ce")
    assert model.epoch_metrics() == {
        "similarity/alpha": 0.5,
        "similarity/beta": pytest.approx(0.3),
        "similarity/gamma": pytest.approx(0.2),
        "similarity/temperature": 1.0,
    }
    model.loss(next(batches(1))).backward()
    for name in ("alpha", "beta", "gamma", "temperature"):
        assert getattr(model.similarity, name).grad.abs() > 0
    result = fit(
        model,
        batches,
        lambda: {"valid/ndcg@10": 0.0},
        TrainConfig(epochs=2, lr=1e-2),
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
        callbacks=[EpochMetrics(model.epoch_metrics)],
    )
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert all("similarity/alpha" in row for row in result.history)
    assert result.history[-1]["similarity/alpha"] != 0.5


def test_recommend_returns_the_planted_next_item(syn_ds, syn_loo, syn_cfg):
    model, batches = _model(syn_loo, loss="ce")
    epochs = itertools.count()  # rising "metric": fit keeps the last epoch as the best
    fit(
        model,
        batches,
        lambda: {"valid/ndcg@10": next(epochs)},
        TrainConfig(epochs=12, lr=1e-2),
        device=torch.device("cpu"),
        steps_per_epoch=len(batches),
    )
    key_to_id = {k: i for i, k in enumerate(syn_ds.item_keys)}
    succ = planted_successor(syn_cfg.synthetic_items, syn_cfg.synthetic_clusters, seed=0)
    succ_id = {
        key_to_id[f"SYN{i:06d}"]: key_to_id[f"SYN{s:06d}"]
        for i, s in enumerate(succ)
        if f"SYN{i:06d}" in key_to_id and f"SYN{s:06d}" in key_to_id
    }
    split = syn_loo.split("test", SMALL["max_history"])
    ids, scores = model.recommend({"history": torch.as_tensor(split.histories)}, 5)
    assert ids.shape == (len(split), 5) and (scores[:, :-1] >= scores[:, 1:]).all()
    last = split.histories[:, -1]
    hits = [ids[u, 0].item() == succ_id[int(item)] for u, item in enumerate(last)]
    assert np.mean(hits) > 0.85  # the data follow the plant 78% of the time


def test_bad_names_list_the_valid_choices(syn_loo):
    with pytest.raises(ValueError, match="bce, infonce, ce, sampled_softmax"):
        SASRecConfig(loss="bpr")
    with pytest.raises(
        ConfigError, match="sasrec.similarity.*dot, cosine, scaled, bilinear, adaptive"
    ):
        build(SASRecConfig, {"similarity": "euclid"}, "sasrec")
    with pytest.raises(ValueError, match="uniform, popular, mixed"):
        SASRecConfig(negatives="hard")
    with pytest.raises(ValueError, match="none, sum, concat"):
        SASRecConfig(sid_features="mean")


def test_num_negatives_larger_than_catalogue_fails(syn_loo):
    cfg = SASRecConfig(**SMALL, loss="bce", num_negatives=syn_loo.num_items + 1)
    with pytest.raises(ValueError, match="num_negatives .* exceeds the catalogue"):
        make_batches(cfg, syn_loo, seed=0)


def _sid_table(num_items: int) -> SIDTable:
    rng = np.random.default_rng(0)
    codes = np.vstack([-np.ones((1, 3), dtype=np.int64), rng.integers(0, 4, size=(num_items, 3))])
    return SIDTable(codes, (4, 4, 4))


@pytest.mark.parametrize("mode", ["sum", "concat"])
def test_sid_features_train(syn_loo, tmp_path, mode):
    _sid_table(syn_loo.num_items).save(tmp_path / "sids")
    cfg = SASRecConfig(**SMALL, sid_features=mode)
    model = SASRec(
        cfg, syn_loo.num_items, load_sid_features(cfg, tmp_path / "sids", syn_loo.num_items)
    )
    assert model.sid_mode == mode and model.item_table().shape == (syn_loo.num_items + 1, 32)
    model.loss(next(make_batches(cfg, syn_loo, 0)(1))).backward()
    assert model.sid_emb.weight.grad.abs().sum() > 0


def test_negatives_label_says_what_the_loss_draws():
    assert SASRecConfig(loss="ce").negatives_label == "none"
    assert SASRecConfig(loss="bce", negatives="mixed").negatives_label == "mixed"
    shared = SASRecConfig(loss="bce_shared", bce_shared_negatives=64, bce_shared_alpha=0.5)
    assert shared.negatives_label == "pop^0.5 x64 shared"


def test_missing_sid_table_and_mismatch_fail(syn_loo, tmp_path):
    cfg = SASRecConfig(**SMALL, sid_features="sum")
    message = r"sasrec.sid_features=sum needs a SID table, but sasrec.sid_dir \(.*nowhere\)"
    with pytest.raises(ValueError, match=message):
        load_sid_features(cfg, tmp_path / "nowhere", syn_loo.num_items)
    none = SASRecConfig(**SMALL)
    assert load_sid_features(none, tmp_path / "nowhere", syn_loo.num_items) is None
    _sid_table(syn_loo.num_items - 1).save(tmp_path / "sids")
    with pytest.raises(ValueError, match="covers .* items but the dataset has"):
        load_sid_features(cfg, tmp_path / "sids", syn_loo.num_items)


def test_stage_writes_metrics_curves_and_checkpoint(syn_prepared, tmp_path):
    params = {
        **syn_prepared,
        "sasrec": {
            **SMALL,
            "similarity": "adaptive",
            "checkpoint": str(tmp_path / "sasrec.pt"),
            "train": {"epochs": 2, "batch_size": 64},
        },
    }
    out = run_train_sasrec(params)
    metrics = json.loads((tmp_path / "metrics" / "train_sasrec.json").read_text())
    for key in (
        "valid/ndcg@10",
        "test/hr@5",
        "test/ndcg@10",
        "test/mrr@20",
        "epochs",
        "seconds_per_epoch",
        "peak_rss_mb",
        "similarity/alpha",
    ):
        assert key in metrics
    assert out["test/ndcg@10"] == metrics["test/ndcg@10"] and out["epochs"] == 2
    # the benchmark's protocol (history items removed) scored beside ours, on the same model
    assert 0 < metrics["test_unseen/hr@10"] <= 1 and "test_unseen/mrr@20" in metrics
    assert metrics["test_unseen/hr@10"] != metrics["test/hr@10"]
    curves = json.loads((tmp_path / "metrics" / "train_sasrec_curves.json").read_text())
    assert [row["epoch"] for row in curves] == [1, 2] and "valid/ndcg@10" in curves[0]
    assert (tmp_path / "sasrec.pt").exists()


def test_single_item_training_sequences_give_no_examples():
    batches = TrainBatches([np.array([3]), np.array([1, 2, 3]), np.array([4, 5])], 4, batch_size=8)
    batch = next(batches(1))
    assert sorted(batch["user"].tolist()) == [1, 2]
    assert batches.num_positions == 3


def test_chunked_ce_matches_full_ce():
    torch.manual_seed(0)
    sim = Similarity("dot", 8)
    h = torch.randn(10, 8, requires_grad=True)
    items = torch.randn(21, 8)
    targets = torch.randint(1, 21, (10,))
    full = ce_loss(sim, h, items, targets)
    (g_full,) = torch.autograd.grad(full, h)
    chunked = ce_loss(sim, h, items, targets, chunk=3)
    (g_chunk,) = torch.autograd.grad(chunked, h)
    assert float(chunked) == pytest.approx(float(full), rel=1e-5)
    assert torch.allclose(g_chunk, g_full, atol=1e-6)
