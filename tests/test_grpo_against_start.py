"""bench/grpo_against_start.py: GRPO retrains paired with their start models by seed."""

from __future__ import annotations

import pytest

from bench.grpo_against_start import starts, table


def _m(ndcg: float, start_valid: float | None = None, valid: float | None = None) -> dict:
    m = {"test/ndcg@10": ndcg, "test/hr@10": 2 * ndcg, "test/ndcg@5": ndcg, "test/hr@5": ndcg}
    if start_valid is not None:
        m["start_valid/ndcg@10"] = start_valid
    if valid is not None:
        m["valid/ndcg@10"] = valid
    return m


START = {0: _m(0.0300, valid=0.041), 1: _m(0.0280, valid=0.043), 2: _m(0.0290, valid=0.042)}


def test_a_start_that_is_not_the_same_model_is_refused():
    grpo = {0: _m(0.031, start_valid=0.041), 1: _m(0.029, start_valid=0.0431)}
    with pytest.raises(ValueError, match="seed 1: .*not the same model"):
        starts(grpo, START)
    with pytest.raises(ValueError, match="seed 3: no SID LM retrain"):
        starts({3: _m(0.03, start_valid=0.04)}, START)


def test_the_table_gives_the_paired_gain_and_whether_the_goal_is_inside_its_ci():
    # +.0010, +.0012, +.0014 over a start of mean .0290: +4.1%, CI [+.0005, +.0017]
    grpo = {
        "default": {
            0: _m(0.0310, start_valid=0.041),
            1: _m(0.0292, start_valid=0.043),
            2: _m(0.0304, start_valid=0.042),
        }
    }
    row = next(r for r in table(grpo, START, 0.03) if "`test/ndcg@10`" in r)
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2:4] == ["0.02900", "0.03020"]
    assert cells[4].startswith("+0.00120 [+0.00070, +0.00170]")
    assert cells[5] == "+4.1%"
    assert cells[7] == "0.00087: inside the CI"  # .0007 < .00087 < .0017
    assert cells[8] == "+0.00100, +0.00120, +0.00140"
    high = table(grpo, START, 0.10)
    assert "0.00290: above the CI: excluded" in next(r for r in high if "`test/ndcg@10`" in r)
