"""Collision resolution (pure functions) and SID quality statistics, on hand-made codes."""

from __future__ import annotations

import numpy as np
import pytest

from sidrec_core.sid.collisions import resolve, resolve_capped, resolve_suffix
from sidrec_core.sid.quality import (
    collision_rate,
    distinct_prefixes,
    gini,
    max_bucket,
    perplexity,
    sid_quality,
    utilization,
)

K = 4
# items 0-2 share (0, 1, 2); items 3-4 share (1, 0, 0); item 5 is alone
CODES = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 0, 0], [1, 0, 0], [2, 2, 2]])


def _distances(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((len(CODES), K)).astype(np.float32)


def test_suffix_appends_dedup_level():
    out = resolve_suffix(CODES)
    assert out.shape == (6, 4)
    assert out[:, -1].tolist() == [0, 1, 2, 0, 1, 0]
    assert np.array_equal(out[:, :3], CODES)
    assert collision_rate(out) == 0.0


def test_suffix_honours_max_per_bucket():
    out = resolve_suffix(CODES, max_per_bucket=2)
    assert out[:, -1].tolist() == [0, 0, 1, 0, 0, 0]
    assert max_bucket(out) == 2


@pytest.mark.parametrize("mode", ["knn", "random"])
@pytest.mark.parametrize("cap", [1, 2])
def test_capped_modes_are_unique_and_honour_cap(mode, cap):
    out = resolve(CODES, mode, K, cap, distances=_distances(), seed=3)
    assert out.shape == CODES.shape
    assert np.array_equal(out[:, :2], CODES[:, :2])  # only the last level moves
    assert max_bucket(out) <= cap
    if cap == 1:
        assert collision_rate(out) == 0.0
    # items that were alone never move
    assert out[5].tolist() == CODES[5].tolist()


@pytest.mark.parametrize("mode", ["knn", "random"])
def test_capped_modes_are_deterministic_for_a_seed(mode):
    a = resolve(CODES, mode, K, 1, distances=_distances(), seed=7)
    b = resolve(CODES, mode, K, 1, distances=_distances(), seed=7)
    assert np.array_equal(a, b)


def test_knn_keeps_the_closest_member_and_moves_others_to_nearest_free_code():
    codes = np.array([[0, 1], [0, 1], [0, 1]])
    dist = np.array(
        [
            [0.9, 0.5, 0.8, 0.7],  # moves: codes 0 and 1 are taken, 3 (0.7) beats 2 (0.8)
            [9.0, 0.1, 0.2, 9.0],  # closest to code 1 -> keeps it
            [0.3, 0.4, 9.0, 0.35],  # moves to its nearest free code, 0
        ]
    )
    out = resolve_capped(codes, 4, 1, distances=dist)
    assert out[1, 1] == 1
    assert out[2, 1] == 0
    assert out[0, 1] == 3  # codes 0, 1 taken; 3 (0.7) is nearer than 2 (0.8)


@pytest.mark.parametrize("mode", ["knn", "random"])
def test_overfull_prefix_spills_to_a_sibling_prefix(mode):
    codes = np.zeros((5, 2), dtype=np.int64)  # 5 items, one prefix, 4 last-level codes
    dist = np.random.default_rng(0).random((5, 4))
    out = resolve(codes, mode, 4, 1, distances=dist, seed=1)
    assert collision_rate(out) == 0.0
    assert (out[:, 0] == 0).sum() == 4  # the prefix stays full; one item moved elsewhere
    assert max_bucket(resolve_capped(codes, 4, 2)) == 2


def test_no_free_sid_left_fails_naming_the_parameter():
    codes = np.zeros((17, 2), dtype=np.int64)  # 17 items, only 4 x 4 = 16 SIDs exist
    with pytest.raises(ValueError, match="max_per_bucket"):
        resolve_capped(codes, 4, 1)


def test_bad_mode_and_cap():
    with pytest.raises(ValueError, match="sid.collision"):
        resolve(CODES, "magic", K)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_per_bucket"):
        resolve_suffix(CODES, max_per_bucket=0)
    with pytest.raises(ValueError, match="knn"):
        resolve(CODES, "knn", K, 1, distances=None)


def test_quality_statistics_by_hand():
    assert utilization(CODES, [K] * 3) == [3 / 4, 3 / 4, 2 / 4]
    # level 0 usage: 3, 2, 1 of 6 items
    p = np.array([3, 2, 1]) / 6
    assert perplexity(CODES)[0] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert perplexity(np.zeros((4, 1), dtype=np.int64)) == [pytest.approx(1.0)]
    assert collision_rate(CODES) == pytest.approx(5 / 6)
    assert max_bucket(CODES) == 3
    assert distinct_prefixes(CODES) == [3, 3, 3]
    assert gini(np.array([1, 1, 1])) == 0.0
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)
    assert gini(np.array([3, 2, 1])) == pytest.approx(2 / 9)


def test_sid_quality_reports_before_and_after():
    final = resolve_suffix(CODES)
    q = sid_quality(CODES, final, K, [K, K, K, 3])
    assert q["collision_rate_before"] == pytest.approx(5 / 6)
    assert q["collision_rate_after"] == 0.0
    assert q["max_bucket"] == 3 and q["max_bucket_after"] == 1
    assert q["num_levels_out"] == 4
    assert len(q["utilization"]) == 3 and len(q["utilization_after"]) == 4
