"""``--rerun-unpaired``: a trial that read other upstream bytes than its seed's newest trial is
queued again once, runs (its complete twin does not prune it), and replaces it in the report."""

from __future__ import annotations

import dataclasses
import datetime as dt

import optuna
from smoke_studies import complete_trial, opts, trials_of

from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import trial_records
from sidrec_core.studies.rerun import RERUN_OF, counting, enqueue_unpaired, unpaired
from sidrec_core.studies.runner import progress, run_study
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import grid_point

TABLE = "sha256/read/sid_table"


def ran(label: str, seed: int, hour: int, table: str, **attrs) -> optuna.trial.FrozenTrial:
    """A complete trial of (label, seed), finished ``hour`` hours in, that read SID table
    ``table``."""
    metrics = {TABLE: table, "sha256/wrote/ranks": f"{label}{seed}"}
    return complete_trial(
        3600 * hour, user_attrs={"grid_point": [label, seed], "metrics": metrics, **attrs}
    )


def test_the_older_trials_that_read_other_bytes_than_their_seeds_newest_are_queued_once():
    study = STUDIES["sasrec_loss"]
    ostudy = optuna.create_study()
    for trial in [
        ran("ce", 0, 1, "old"),  # another machine's SID table
        ran("bce", 0, 2, "new"),  # the newest at seed 0
        ran("infonce", 0, 1, "new"),
        ran("ce", 1, 1, "new"),
        ran("bce", 1, 2, "new"),
    ]:
        ostudy.add_trial(trial)
    trials = ostudy.get_trials()
    assert {p: t.number for p, t in unpaired(study, trials).items()} == {("ce", 0): 0}
    # an input the levels read differently by design unpairs nothing
    varied = dataclasses.replace(study, varied_inputs=("sid_table",))
    assert unpaired(varied, trials) == {}
    assert enqueue_unpaired(ostudy, study) == 1
    assert enqueue_unpaired(ostudy, study) == 0  # queued already
    queued = ostudy.get_trials()[-1]
    assert grid_point(queued) == ("ce", 0) and queued.user_attrs[RERUN_OF] == 0
    assert progress(ostudy, study, [0, 1]).startswith("trial 6/9")  # 5 + the re-run of 9


def test_a_rerun_replaces_its_trial_and_is_not_rerun_itself_though_it_still_differs():
    study = STUDIES["sasrec_loss"]
    ostudy = optuna.create_study()
    ostudy.add_trial(ran("ce", 0, 1, "old"))
    ostudy.add_trial(ran("bce", 0, 2, "new"))
    ostudy.add_trial(ran("ce", 0, 3, "odd", **{RERUN_OF: 0}))  # the re-run read other bytes
    trials = ostudy.get_trials()
    assert counting(study, trials)[("ce", 0)].number == 2
    assert trial_records(study, trials)["ce"][0][TABLE] == "odd"
    # the re-run is now the seed's newest: bce, never re-run, is queued once; ce is not again
    assert {p: t.number for p, t in unpaired(study, trials).items()} == {("bce", 0): 1}


def test_a_queued_rerun_runs_beside_its_complete_twin_and_the_report_names_it(tmp_path):
    """exclude_seen on the smoke profile; a later trial at seed 0 that read another prepared
    dataset makes the real seed-0 trial of the other level stale."""
    o = opts(tmp_path)
    run_study("exclude_seen", o)
    storage = make_storage(o.storage_url_for("exclude_seen"))
    ostudy = optuna.load_study(study_name="exclude_seen-smoke", storage=storage)
    off = next(t for t in ostudy.get_trials() if grid_point(t) == ("off", 0))
    read = [k for k in off.user_attrs["metrics"] if k.startswith("sha256/read/")]
    assert read, "the smoke trials record their upstream fingerprints"
    later = complete_trial(0, user_attrs={"grid_point": ["on", 0], "metrics": {read[0]: "x"}})
    later.datetime_start = later.datetime_complete = dt.datetime.now() + dt.timedelta(hours=1)
    ostudy.add_trial(later)
    summary = run_study("exclude_seen", dataclasses.replace(o, rerun_unpaired=True))
    assert summary["queued"] == 1 and summary["failed"] == 0 and summary["pruned_duplicates"] == 0
    rerun = trials_of(o, "exclude_seen")[-1]
    assert rerun.state.name == "COMPLETE" and rerun.user_attrs[RERUN_OF] == off.number
    report = (tmp_path / "exp" / "exclude_seen" / "report.md").read_text()
    assert f"- #{off.number} off seed 0, re-run as #{rerun.number}" in report
    assert run_study("exclude_seen", dataclasses.replace(o, rerun_unpaired=True))["queued"] == 0
