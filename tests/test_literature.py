"""Published findings in study reports: verdicts from the paired CI, and bad claims refused."""

from __future__ import annotations

import pytest

from sidrec_core.studies.literature import claim_lines, claim_values, verdict
from sidrec_core.studies.report import Cell
from sidrec_core.studies.study import Claim, Study, one_key


def _cell(values: dict[int, float]) -> Cell:
    return Cell(values, sum(values.values()) / len(values), float("nan"))


@pytest.mark.parametrize(
    ("expect", "diff", "hw", "reading"),
    [
        ("better", 0.01, 0.005, "agrees"),
        ("better", -0.01, 0.005, "disagrees"),
        ("better", 0.01, 0.02, "not resolved at 3 seeds"),
        ("not_worse", 0.0, 0.02, "consistent (CI covers 0)"),
        ("not_worse", -0.03, 0.02, "disagrees"),
        ("equal", 0.03, 0.02, "disagrees"),
        ("equal", -0.01, 0.02, "consistent (CI covers 0)"),
        ("better", 0.0, 0.0, "not supported (identical at every seed)"),
        ("equal", 0.0, 0.0, "agrees (identical at every seed)"),
    ],
)
def test_verdict_reads_the_paired_ci(expect, diff, hw, reading):
    assert verdict(expect, diff, hw, 3) == reading


def test_one_seed_is_not_resolved():
    assert verdict("better", 0.5, float("nan"), 1) == "not resolved (1 paired seed)"


def test_claim_lines_pair_seeds_and_average_per_level_metrics():
    study = Study(
        "exclude_seen_claim",
        "x",
        one_key("eval.exclude_seen", [False, True]),
        "off",
        run=("baselines",),
        reuse=("prepare",),
        claims=(Claim("on helps", "a paper", "on", "off", "better", metric="utilization"),),
    )
    table = {
        "on": {
            "utilization/0": _cell({0: 1.0, 1: 0.9, 2: 1.0}),
            "utilization/1": _cell({0: 0.8, 1: 0.9, 2: 1.0}),
        },
        "off": {
            "utilization/0": _cell({0: 0.5, 1: 0.5, 2: 0.6}),
            "utilization/1": _cell({0: 0.5, 1: 0.4, 2: 0.5}),
        },
    }
    assert claim_values(study.claims[0], table["on"]) == pytest.approx({0: 0.9, 1: 0.9, 2: 1.0})
    (row,) = claim_lines(study, table)[-1:]
    assert "on - off: +0.4333" in row and "(n=3)" in row and row.endswith("| agrees |")


def test_a_claim_on_an_unknown_level_is_refused():
    with pytest.raises(ValueError, match="claim 'x' needs levels in"):
        Study(
            "bad",
            "x",
            one_key("eval.exclude_seen", [False, True]),
            "off",
            run=("baselines",),
            reuse=("prepare",),
            claims=(Claim("x", "src", "maybe", "off", "better"),),
        )


def test_index_lists_every_claim_even_before_a_real_run(tmp_path):
    from sidrec_core.studies.index import write_index
    from sidrec_core.studies.registry import STUDIES

    text = write_index(tmp_path).read_text()
    claims = [c for s in STUDIES.values() for c in s.claims]
    assert claims and text.count("| not run |") == len(claims)
    assert all(c.finding in text and c.source in text for c in claims)
