"""The shared evaluator, reference recommenders, the training loop, tracking and the stages."""

import json

import numpy as np
import pytest
import torch

from sidrec_core.data.split import Split
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import path_sha256
from sidrec_core.models.base import Recommender, topk_items
from sidrec_core.models.baselines import MostPop, RandomRec
from sidrec_core.train import TrainConfig, fit


class _Fixed:
    """Always recommends items [3, 1, 2, 4, 5, ...]."""

    def recommend(self, batch, k):
        b = batch["history"].shape[0]
        ids = torch.tensor([3, 1, 2, 4, 5, 6, 7, 8, 9, 10][:k]).expand(b, -1)
        return ids, -torch.arange(k, dtype=torch.float32).expand(b, -1)


def _split():
    return Split("test", np.array([[0, 3], [1, 2], [0, 9]]), np.array([3, 2, 6]), np.arange(3))


def test_evaluate_hand_case():
    res = evaluate(_Fixed(), _split(), EvalConfig(ks=(1, 5), bootstrap=0), num_items=10)
    m = res.metrics
    assert m["test/hr@1"] == pytest.approx(1 / 3)
    assert m["test/hr@5"] == pytest.approx(2 / 3)
    assert m["test/ndcg@5"] == pytest.approx((1 + 1 / np.log2(4)) / 3)
    assert m["test/mrr@5"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["test/coverage"] == pytest.approx(0.5)
    assert res.per_user["hr@5"].tolist() == [1, 1, 0]


def test_exclude_seen_drops_history_items():
    res = evaluate(
        _Fixed(), _split(), EvalConfig(ks=(1, 5), bootstrap=0, exclude_seen=True), num_items=10
    )
    # user 0 saw item 3 (its own target), so it is removed; user 1 saw 1 and 2
    assert res.item_ids[0].tolist() == [1, 2, 4, 5, 6]
    assert res.item_ids[1].tolist() == [3, 4, 5, 6, 7]
    assert res.metrics["test/hr@5"] == pytest.approx(0.0)


def test_topk_items_pads_short_catalogue():
    ids, scores = topk_items(torch.tensor([[9.0, 1.0, 3.0]]), 4)
    assert ids.tolist() == [[2, 1, 0, 0]] and torch.isinf(scores[0, 2:]).all()


def test_mostpop_and_random(syn_loo):
    test = syn_loo.split("test", 20)
    pop = evaluate(MostPop(syn_loo), test, EvalConfig(bootstrap=0), num_items=syn_loo.num_items)
    top = np.argsort(-syn_loo.train_item_counts(), kind="stable")[:5]
    assert set(pop.item_ids[0, :5]) == set(top)
    r1 = evaluate(
        RandomRec(syn_loo.num_items, 0), test, EvalConfig(bootstrap=0), num_items=syn_loo.num_items
    )
    r2 = evaluate(
        RandomRec(syn_loo.num_items, 0), test, EvalConfig(bootstrap=0), num_items=syn_loo.num_items
    )
    assert np.array_equal(r1.item_ids, r2.item_ids)
    # random HR@10 ~ 10 / N
    assert abs(r1.metrics["test/hr@10"] - 10 / syn_loo.num_items) < 0.1


class _Bigram(Recommender):
    """Scores next items from the last history item: a learnable transition table."""

    def __init__(self, n):
        super().__init__()
        self.table = torch.nn.Embedding(n + 1, n + 1)

    def loss(self, batch):
        logits = self.table(batch["history"][:, -1])
        return torch.nn.functional.cross_entropy(logits, batch["target"])

    def recommend(self, batch, k):
        return topk_items(self.table(batch["history"][:, -1]), k)


def test_fit_learns_planted_transitions_and_keeps_best(syn_loo, tmp_path):
    n = syn_loo.num_items
    pairs = np.array(
        [(a, b) for s in syn_loo.train_sequences for a, b in zip(s[:-1], s[1:], strict=True)]
    )
    model = _Bigram(n)
    valid = syn_loo.split("valid", 5)
    ev = EvalConfig(ks=(10,), bootstrap=0)

    def batches(epoch):
        perm = np.random.default_rng(epoch).permutation(len(pairs))
        for i in range(0, len(perm), 64):
            p = pairs[perm[i : i + 64]]
            yield {"history": torch.as_tensor(p[:, :1]), "target": torch.as_tensor(p[:, 1])}

    res = fit(
        model,
        batches,
        lambda: evaluate(model, valid, ev, num_items=n).metrics,
        TrainConfig(epochs=6, lr=0.1, patience=3, schedule="cosine", warmup_steps=5),
        device=torch.device("cpu"),
        steps_per_epoch=len(pairs) // 64 + 1,
        checkpoint=tmp_path / "best.pt",
    )
    assert res.best_metric > 0.3  # random would be ~ 10 / 60 * 0.5
    assert (tmp_path / "best.pt").exists()
    assert res.history[-1]["train/loss"] < res.history[0]["train/loss"]
    after = evaluate(model, valid, ev, num_items=n).metrics["valid/ndcg@10"]
    assert after == pytest.approx(res.best_metric)


def test_prepare_embed_baselines_stages(syn_params, tmp_path):
    from sidrec_core.stages.baselines import run as run_baselines
    from sidrec_core.stages.embed import run as run_embed
    from sidrec_core.stages.prepare import run as run_prepare

    prep = run_prepare(syn_params)
    assert prep["num_users"] == 200 and prep["synthetic"] is True
    emb = run_embed(syn_params)
    assert emb["num_items"] == prep["num_items"] and emb["dim"] == 32
    assert np.load(syn_params["embed"]["output"]).shape == (prep["num_items"], 32)
    out = run_baselines(syn_params)
    assert out["mostpop/test/hr@10"] > out["random/test/hr@10"] * 0.5
    mdir = tmp_path / "metrics"
    prep_json = json.loads((mdir / "prepare.json").read_text())
    assert prep_json["dataset"] == "synthetic" and prep_json["num_interactions"] > 0
    assert "mlflow_run_id" in prep_json
    assert set(json.loads((mdir / "embed.json").read_text())) >= {"num_items", "dim"}
    saved = json.loads((mdir / "baselines.json").read_text())
    assert "test/ndcg@10" in saved["mostpop"]
    # the prepared data it read, so studies pair only trials on equal inputs
    assert saved["sha256/read/prepared"] == path_sha256(tmp_path / "prepared" / "dataset.npz")
