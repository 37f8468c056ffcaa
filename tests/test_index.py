"""The index's reading of a study: best level chosen on the validation objective, a level named
best only when significant, copies of one run spotted, departures from the pipeline default, and
study notes whose figures come from the stored table."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from sidrec_core.studies.defaults import departures, pipeline_params
from sidrec_core.studies.index import best_cell, read_finding
from sidrec_core.studies.literature import claim_reading
from sidrec_core.studies.notes import fill_note, seeds_are_copies, study_notes
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import Cell, write_study_report
from sidrec_core.studies.stats import mean_ci
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import Claim, Note

VALID, TEST = "valid/ndcg@10", "test/ndcg@10"
STUDY = STUDIES["collision"]  # levels knn (default), random, suffix; objective valid/ndcg@10


def _cell(values: dict[int, float]) -> Cell:
    return Cell(values, *mean_ci(list(values.values())))


def _table(valid: dict[str, list[float]], test: dict[str, list[float]]) -> dict:
    """{level: {metric: Cell}} with one value per seed 0, 1, 2, ..."""
    return {
        lv: {
            VALID: _cell(dict(enumerate(valid.get(lv, [])))),
            TEST: _cell(dict(enumerate(test.get(lv, [])))),
        }
        for lv in STUDY.labels
    }


def test_best_level_is_chosen_on_the_validation_objective_not_on_test():
    # random leads on valid, suffix on test: random is the level compared with the default
    valid = {"knn": [0.030, 0.031, 0.032], "random": [0.040, 0.041, 0.042], "suffix": [0.020] * 3}
    test = {"knn": [0.020, 0.021, 0.022], "random": [0.019, 0.020, 0.021], "suffix": [0.05] * 3}
    f = read_finding(STUDY, [VALID, TEST], _table(valid, test))
    assert f is not None and f.best == "random" and f.metric == TEST and f.objective == VALID
    assert f.diff == pytest.approx(-0.001)  # its test difference, whatever its sign
    assert f.default_value == pytest.approx(0.021) and f.seeds == 3


def test_a_tie_on_valid_goes_to_the_default_and_is_not_tested():
    same = [0.030, 0.031, 0.032]
    test = {"knn": [0.020, 0.021, 0.022], "random": [0.03, 0.031, 0.032]}
    f = read_finding(STUDY, [VALID, TEST], _table({"knn": same, "random": same}, test))
    assert f.best == "knn" and f.tied == ("random",) and f.diff is None and f.holm_p is None
    assert f.levels == ("knn", "random")  # suffix has no trial


def test_a_level_is_named_best_only_when_significant():
    valid = {"knn": [0.030, 0.031, 0.032], "random": [0.040, 0.041, 0.042]}
    noisy = {"knn": [0.020, 0.021, 0.022], "random": [0.025, 0.017, 0.026]}
    f = read_finding(STUDY, [VALID, TEST], _table(valid, noisy))
    assert f.best == "random" and f.holm_p is not None and f.holm_p >= 0.05
    assert not f.significant and best_cell(STUDY, f) == "n.s."
    steady = {"knn": [0.020, 0.021, 0.022], "random": [0.025, 0.0261, 0.0269]}
    f = read_finding(STUDY, [VALID, TEST], _table(valid, steady))
    assert f.significant and f.holm_p < 0.05 and best_cell(STUDY, f) == "`random`"
    # significant, but the valid winner does worse on test: no level is named best
    worse = dataclasses.replace(f, diff=-0.005)
    assert best_cell(STUDY, worse).startswith("none")


def test_seeds_that_repeat_one_run_are_copies_and_untested():
    valid = {"knn": [0.030] * 3, "random": [0.031] * 3}
    test = {"knn": [0.020] * 3, "random": [0.021] * 3}
    f = read_finding(STUDY, [VALID, TEST], _table(valid, test))
    assert f.copies and f.best == "random" and f.holm_p is None and not f.significant
    assert f.diff == pytest.approx(0.001)
    assert not seeds_are_copies([_cell({0: 0.1, 1: 0.1}), _cell({0: 0.1, 1: 0.2})])
    assert not seeds_are_copies([_cell({0: 0.1})])  # one seed repeats nothing


def test_only_the_default_measured_names_no_best_level():
    f = read_finding(STUDY, [VALID, TEST], _table({"knn": [0.03] * 2}, {"knn": [0.02, 0.021]}))
    assert (f.best, f.levels, f.seeds, f.diff) == ("knn", ("knn",), 2, None)
    assert f.default_value == pytest.approx(0.0205) and best_cell(STUDY, f) == "—"


def test_departures_are_the_fixed_overrides_off_the_pipeline_default():
    assert departures(STUDIES["sinkhorn"]) == {"sid.method": "rqvae"}
    assert STUDIES["sinkhorn"].pipeline_default == ("tokenizer", "rqkmeans")
    assert departures(STUDIES["tokenizer"]) == {}
    # a fixed override equal to params.yaml is no departure
    same = dataclasses.replace(STUDIES["sinkhorn"], fixed={"sid.method": "rqkmeans"})
    assert departures(same) == {}


def test_a_section_departs_where_its_recorded_defaults_differ_from_the_pipeline_now():
    """A section that ran on a pinned value, or on a default changed since, says so after the pin
    is lifted; the profile's own values are no departure."""
    study = dataclasses.replace(STUDIES["sasrec_loss"], fixed={}, formerly_fixed=({},))
    section = optuna.create_study()
    section.set_user_attr("profile_overrides", {"sasrec.train.epochs": 3, "base.profile": "x"})
    pipeline = pipeline_params()
    now = {k: pipeline[k] for k in ("sasrec.train_rows", "sasrec.train.lr", "sasrec.loss")}
    now |= {"sasrec.train.epochs": 3}
    section.set_user_attr("defaults", now)
    assert departures(study, section) == {}
    section.set_user_attr("defaults", {**now, "sasrec.train_rows": "sequence"})
    assert departures(study, section) == {"sasrec.train_rows": "sequence"}
    assert departures(study) == {}  # the study itself no longer pins it


def test_a_report_section_names_the_values_its_trials_ran_with_that_today_lacks(tmp_path):
    study = STUDIES["sasrec_loss"]  # round 2 lifted its pin on sequence rows
    url = str(tmp_path / study.name / "optuna.jsonl")
    section = optuna.create_study(
        study_name=f"{study.name}-beauty", storage=make_storage(url, create=True)
    )
    attrs = {"profile": "beauty", "dataset": "beauty", "seeds": [0], "profile_overrides": {}}
    for key, value in attrs.items():
        section.set_user_attr(key, value)
    today = {k: v for k, v in pipeline_params().items() if k.startswith("sasrec.")}
    section.set_user_attr("defaults", today)
    for level in study.labels:
        metrics = {"grid_point": [level, 0], "test/ndcg@10": 0.03, "valid/ndcg@10": 0.03}
        section.add_trial(optuna.trial.create_trial(value=0.03, user_attrs=metrics))
    line = "These trials ran with `sasrec.train_rows=sequence`"
    assert line not in write_study_report(study, url, tmp_path)[0].read_text()
    section.set_user_attr("defaults", {**today, "sasrec.train_rows": "sequence"})
    assert line in write_study_report(study, url, tmp_path)[0].read_text()


def test_note_figures_are_filled_from_the_table():
    study = STUDIES["collision"]
    table = _table({"knn": [0.03, 0.05], "random": [0.01, 0.02]}, {"knn": [0.2, 0.4]})
    note = "valid {knn:valid/ndcg@10}, range {*:valid/ndcg@10}, test {knn:test/ndcg@10:%}"
    assert fill_note(note, study, table) == "valid 0.0400, range 0.0150 to 0.0400, test 30%"
    assert fill_note("{suffix:test/ndcg@10}", study, table) == "n/a"
    noted = dataclasses.replace(study, notes=(note,))
    assert study_notes(noted, table, TEST, "beauty") == [fill_note(note, study, table)]
    gone = "Suffix {suffix:test/ndcg@10}."  # its every figure unmeasured
    mixed = "Random {random:valid/ndcg@10}, suffix {suffix:test/ndcg@10}."
    noted = dataclasses.replace(study, notes=(f"{note}. {gone} {mixed} No figure here.", gone))
    kept = f"{fill_note(note, study, table)}. Random 0.0150, suffix n/a. No figure here."
    assert study_notes(noted, table, TEST, "beauty") == [kept]  # the second note goes whole
    sports = Note("Sports only {knn:valid/ndcg@10}.", datasets=("sports",))
    noted = dataclasses.replace(study, notes=(sports, note))
    assert study_notes(noted, table, TEST, "beauty") == [fill_note(note, study, table)]
    assert study_notes(noted, table, TEST, "sports")[0] == "Sports only 0.0400."
    with pytest.raises(ValueError, match="note figure"):
        dataclasses.replace(study, notes=("{nope:valid/ndcg@10}",))
    with pytest.raises(ValueError, match="note figure"):
        dataclasses.replace(study, notes=("{knn:unmeasured}",))


def test_registry_notes_resolve_against_the_studies_levels_and_metrics():
    noted = {s.name for s in STUDIES.values() if s.notes}
    assert {"reward_mix", "lm_head_slicing", "exclude_seen", "etegrec"} <= noted
    for s in STUDIES.values():
        if s.pipeline_default is not None:
            name, level = s.pipeline_default
            assert level in STUDIES[name].labels and not departures(STUDIES[name])


def test_claim_reading_gives_each_seed_and_a_shared_direction():
    claim = Claim("a beats b", "src", "random", "knn", "better")
    table = _table({}, {"knn": [0.0261, 0.0267, 0.0268], "random": [0.0254, 0.0255, 0.0237]})
    measured, reading = claim_reading(claim, table)
    assert "per seed -0.0007, -0.0012, -0.0031" in measured
    assert reading.startswith("not resolved at 3 seeds") and "all 3 seeds below 0" in reading


def test_the_finding_leaves_out_seeds_whose_upstream_inputs_differ_and_carries_the_mde():
    valid = {"knn": [0.030, 0.031, 0.032, 0.033], "random": [0.040, 0.041, 0.042, 0.043]}
    test = {"knn": [0.020, 0.021, 0.022, 0.023], "random": [0.025, 0.017, 0.026, 0.040]}
    same, other = {"sha256/read/sids": "a"}, {"sha256/read/sids": "b"}
    records = {"knn": {s: same for s in range(4)}, "random": {0: same, 1: same, 2: same, 3: other}}
    f = read_finding(STUDY, [VALID, TEST], _table(valid, test), records)
    assert f.best == "random" and f.broken == (3,) and f.seeds == 3
    assert f.diff == pytest.approx((0.005 - 0.004 + 0.004) / 3)  # seed 3's +0.017 left out
    assert not f.significant and f.mde is not None and f.mde > abs(f.diff)
    assert f.seed_user is None  # no per-user ranks stored


def test_the_index_lists_every_published_row_with_its_dataset_protocol_and_source():
    from sidrec_core.stages.report import PUBLISHED, PUBLISHED_UNSEEN
    from sidrec_core.studies.index import PUBLISHED_SPORTS, PUBLISHED_SPORTS_UNSEEN, published

    rows = [
        line.split(" | ") for line in published() if line.startswith("| ") and "---" not in line
    ]
    body = rows[1:]  # the header first
    sports = len(PUBLISHED_SPORTS) + len(PUBLISHED_SPORTS_UNSEEN)
    assert len(body) == len(PUBLISHED) + len(PUBLISHED_UNSEEN) + sports
    by_name = {(r[0].removeprefix("| "), r[1]): r for r in body}
    esasrec = by_name["beauty", "eSASRec (LiGR blocks + sampled softmax; arXiv 2508.06450)"]
    assert esasrec[2:5] == ["history removed", "0.0928", "0.0523"]
    assert by_name["beauty", "TIGER"][2:5] == ["all items ranked", "0.0648", "0.0384"]
    assert by_name["sports", "TIGER"][2:5] == ["all items ranked", "0.0400", "0.0225"]
    ss = by_name["sports", "SASRec + sampled softmax (grid-searched on validation)"]
    assert ss[2:5] == ["history removed", "0.0569", "0.0314"]
    assert by_name["sports", "RPG (paper)"][2:5] == ["all items ranked", "0.0463", "0.0263"]
    assert all(r[5].strip(" |") for r in body)  # every row names its source
