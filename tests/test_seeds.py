"""Seed counts (issue 33, item 4c): the rule, the measured basis the registry's declarations
follow, a launch's default, and the plain words of a report and the index when seeds are
missing."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from bench.ablate import main as ablate_main
from bench.ablate import seed_count
from bench.trial_costs import cost_table, measure_costs
from sidrec_core.studies.defaults import DEFAULTS, section_defaults
from sidrec_core.studies.index import write_index
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import write_study_report
from sidrec_core.studies.runner import StudyOptions
from sidrec_core.studies.seeds import (
    COST_TABLE,
    read_cost_table,
    seeds_for_minutes,
    seeds_held,
    shortfall_text,
)
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import live_point

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_five_seeds_up_to_ten_cpu_minutes_a_trial_three_above():
    assert seeds_for_minutes(0.1) == 5 and seeds_for_minutes(10.0) == 5
    assert seeds_for_minutes(10.01) == 3 and seeds_for_minutes(39.0) == 3


def test_every_declared_seed_count_follows_the_committed_cost_table():
    table = read_cost_table(EXPERIMENTS / COST_TABLE)
    assert set(table) == set(STUDIES)
    for name, study in STUDIES.items():
        minutes, seeds = table[name]
        assert minutes is not None and seeds == seeds_for_minutes(minutes), name
        assert study.seeds == seeds, name
    # a measured median behind a declaration (decoding is complete: its median is settled)
    assert table["decoding"][0] == pytest.approx(1.4) and STUDIES["decoding"].seeds == 5


def _store(out: Path, study: str, profile: str, dataset: str, trials: list[tuple]) -> optuna.Study:
    """``trials``: (level, seed, wall seconds) complete trials in ``<study>-<profile>``."""
    url = make_storage(str(out / study / "optuna.jsonl"), create=True)
    ostudy = optuna.create_study(study_name=f"{study}-{profile}", storage=url)
    ostudy.set_user_attr("profile", profile.split("@")[0])
    ostudy.set_user_attr("dataset", dataset)
    ostudy.set_user_attr("seeds", sorted({t[1] for t in trials}))
    for level, seed, wall in trials:
        ostudy.add_trial(
            optuna.trial.create_trial(
                value=0.01 + seed / 1000,
                user_attrs={
                    "grid_point": [level, seed],
                    "test/ndcg@10": 0.01 + seed / 1000,
                    "wall_seconds": wall,
                },
            )
        )
    return ostudy


def test_costs_are_the_median_of_the_reference_datasets_trials_and_peers_stand_in(tmp_path):
    out = tmp_path / "exp"
    walls = [60.0, 120.0, 900.0]  # median 2 minutes
    now = _store(
        out, "negatives", "beauty", "beauty", [("uniform", s, w) for s, w in enumerate(walls)]
    )
    now.set_user_attr(DEFAULTS, section_defaults(STUDIES["negatives"], now))  # today's: counted
    _store(out, "negatives", "smoke", "synthetic", [("uniform", 0, 99_999.0)])  # not counted
    # a replication on Sports (dearer trials there) does not move the reference's seed count
    sports = _store(out, "negatives", "sports", "sports", [("uniform", 0, 99_999.0)])
    sports.set_user_attr(DEFAULTS, section_defaults(STUDIES["negatives"], sports))
    # a section on earlier defaults (another SASRec loss then) trained another model: not counted
    then = _store(out, "negatives", "beauty@0ld", "beauty", [("uniform", 0, 99_999.0)])
    then.set_user_attr(DEFAULTS, {**now.user_attrs[DEFAULTS], "sasrec.loss": "earlier"})
    _store(out, "similarity", "beauty", "beauty", [("dot", 0, 1200.0)])  # 20 minutes
    metrics = tmp_path / "metrics"  # the pipeline's own runs of the SID-LM stages
    metrics.mkdir()
    for stage, wall in (("build_sids", 60.0), ("train_sidlm", 540.0), ("eval_sidlm", 120.0)):
        (metrics / f"{stage}.json").write_text(json.dumps({"wall_seconds": wall}))
    costs = {c.study: c for c in measure_costs(out, metrics)}
    assert costs["negatives"].trials == 3 and costs["negatives"].minutes == pytest.approx(2.0)
    assert (costs["negatives"].low, costs["negatives"].high) == pytest.approx((1.0, 15.0))
    assert costs["negatives"].seeds == 5 and costs["similarity"].seeds == 3
    # sasrec_loss runs the same stage (train_sasrec) and has no trial: the dearest peer's median
    assert costs["sasrec_loss"].trials == 0 and costs["sasrec_loss"].minutes == pytest.approx(20.0)
    assert costs["sasrec_loss"].seeds == 3
    # no trial of its own or of a peer: the pipeline's run of its three stages, 12 minutes
    assert costs["tokenizer"].trials == 0 and costs["tokenizer"].minutes == pytest.approx(12.0)
    assert costs["tokenizer"].seeds == 3 and "metrics/train_sidlm.json" in costs["tokenizer"].basis
    # nor has the pipeline run its stages here: not measured
    assert costs["etegrec"].minutes is None and costs["etegrec"].seeds is None
    path = tmp_path / COST_TABLE
    path.write_text(cost_table(list(costs.values()), "python bench/trial_costs.py"))
    assert read_cost_table(path)["negatives"] == (2.0, 5)
    assert read_cost_table(path)["tokenizer"] == (12.0, 3)
    assert read_cost_table(path)["etegrec"] == (None, None)


def test_seeds_held_counts_seeds_with_a_complete_trial_that_counts():
    trials = [
        optuna.trial.create_trial(value=0.1, user_attrs={"grid_point": [lv, s]})
        for lv, s in (("uniform", 0), ("mixed", 0), ("uniform", 1), ("gone", 7))
    ]
    study = STUDIES["negatives"]
    assert seeds_held(trials, lambda t: live_point(study, t)) == 2  # "gone" is no level
    assert shortfall_text(2, 5) == "2 of 5 declared seeds; the rest run in round 2"
    assert shortfall_text(5, 5) is None and shortfall_text(6, 5) is None


def test_a_launch_runs_the_declared_seeds_on_real_data_and_three_on_synthetic(capsys):
    assert ablate_main(["--list"]) == 0
    listing = capsys.readouterr().out.split("\n" + "decoding".ljust(16))[1]
    assert "objective valid/ndcg@10; 5 seeds declared" in listing.split("\n")[2]
    assert seed_count(STUDIES["decoding"], StudyOptions(profile="beauty"), None) == 5
    assert seed_count(STUDIES["tokenizer"], StudyOptions(profile="beauty"), None) == 3
    assert seed_count(STUDIES["negatives"], StudyOptions(profile="smoke"), None) == 3
    assert seed_count(STUDIES["decoding"], StudyOptions(profile="beauty"), 2) == 2  # --n-seeds


def test_report_and_index_say_how_many_declared_seeds_a_study_holds(tmp_path):
    out = tmp_path / "exp"
    trials = [(lv, s, 60.0) for lv in ("uniform", "popular", "mixed") for s in range(2)]
    _store(out, "negatives", "beauty", "beauty", trials)
    _store(out, "negatives", "smoke", "synthetic", trials)
    url = str(out / "negatives" / "optuna.jsonl")
    report = write_study_report(STUDIES["negatives"], url, out)[0].read_text()
    beauty, smoke = report.split("## Profile `smoke`")
    n = STUDIES["negatives"].seeds  # 3 or 5, as its measured cost has it
    assert f"Seeds: 2 of {n} declared seeds; the rest run in round 2" in beauty
    assert "declared seeds" not in smoke  # a pipeline check has no statistics to power
    row = next(ln for ln in write_index(out).read_text().splitlines() if "[`negatives`]" in ln)
    assert f"2 of {n} declared seeds; the rest run in round 2" in row
    studies_row = next(
        ln for ln in (out / "README.md").read_text().splitlines() if ln.startswith("| `negatives`")
    )
    assert f"| {n} |" in studies_row
