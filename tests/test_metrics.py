"""Metrics on hand-computed cases."""

import math

import numpy as np
import pytest

from sidrec_core.metrics import (
    bootstrap_ci,
    candidate_diagnostics,
    hit_rate,
    mrr,
    ndcg,
    per_user_metrics,
    summarize,
    target_ranks,
)


def test_target_ranks_hand_case():
    ids = np.array([[5, 3, 9], [1, 2, 3], [7, 7, 0], [4, 0, 0]])
    targets = np.array([3, 4, 7, 0])  # target 0 (padding) never counts as a hit
    ranks = target_ranks(ids, targets)
    assert ranks[0] == 1 and ranks[2] == 0
    assert math.isinf(ranks[1]) and math.isinf(ranks[3])


def test_hr_ndcg_mrr_values():
    ranks = np.array([0.0, 1.0, 4.0, np.inf])
    np.testing.assert_allclose(hit_rate(ranks, 5), [1, 1, 1, 0])
    np.testing.assert_allclose(hit_rate(ranks, 1), [1, 0, 0, 0])
    np.testing.assert_allclose(ndcg(ranks, 5), [1.0, 1 / math.log2(3), 1 / math.log2(6), 0.0])
    np.testing.assert_allclose(ndcg(ranks, 2), [1.0, 1 / math.log2(3), 0.0, 0.0])
    np.testing.assert_allclose(mrr(ranks, 5), [1.0, 0.5, 0.2, 0.0])


def test_summary_keys_and_means():
    ranks = np.array([0.0, 3.0, np.inf, 9.0])
    out = summarize(per_user_metrics(ranks, (1, 5, 10)), "test")
    assert out["test/hr@1"] == pytest.approx(0.25)
    assert out["test/hr@5"] == pytest.approx(0.5)
    assert out["test/hr@10"] == pytest.approx(0.75)
    assert out["test/ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 4)
    assert set(out) == {f"test/{m}@{k}" for m in ("hr", "ndcg", "mrr") for k in (1, 5, 10)}


def test_bootstrap_ci_brackets_mean_and_is_seeded():
    values = np.random.default_rng(0).random(500)
    lo, hi = bootstrap_ci(values, 300, seed=1)
    assert lo < values.mean() < hi
    assert hi - lo < 0.1
    assert (lo, hi) == bootstrap_ci(values, 300, seed=1)
    with_ci = summarize({"hr@10": values}, "valid", num_bootstrap=50)
    assert with_ci["valid/hr@10_ci_lo"] < with_ci["valid/hr@10"] < with_ci["valid/hr@10_ci_hi"]


def test_candidate_diagnostics():
    ids = np.array([[1, 2, 0], [2, 3, 0]])
    d = candidate_diagnostics(ids, num_items=10, num_generated=8, num_invalid=2, num_duplicate=1)
    assert d["coverage"] == pytest.approx(0.3)
    assert d["empty_slot_rate"] == pytest.approx(2 / 6)
    assert d["invalid_rate"] == pytest.approx(0.25)
    assert d["duplicate_rate"] == pytest.approx(0.125)


def test_ranks_record_round_trips_every_metric_up_to_its_cap():
    from sidrec_core.metrics import decode_ranks, encode_ranks, per_user_metrics

    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 80, size=5000).astype(np.float64)
    ranks[rng.random(5000) < 0.5] = np.inf
    back = decode_ranks(encode_ranks(ranks, 50))
    assert np.array_equal(back[ranks < 50], ranks[ranks < 50])
    assert np.isinf(back[ranks >= 50]).all()
    for key, values in per_user_metrics(ranks, (1, 10, 50)).items():
        np.testing.assert_array_equal(per_user_metrics(back, (1, 10, 50))[key], values)
    with pytest.raises(ValueError, match="unknown codec"):
        decode_ranks("f32:50:AAAA")
