"""``bench/ablate.py --remaining``: the open grid points of the section a launch writes to today,
costed at each level's median duration there, else from the study's trials on another dataset
scaled by interactions, else at the committed cost table's median; on a second dataset, the part a
launch runs first."""

from __future__ import annotations

import dataclasses
import functools

import optuna
import pytest
from smoke_studies import complete_trial, opts

from bench.ablate import main as ablate_main
from sidrec_core.studies import dvc_run, runner
from sidrec_core.studies.budget import TimeBudget
from sidrec_core.studies.defaults import DEFAULTS, effective_defaults
from sidrec_core.studies.elsewhere import point_key, reused_key, reused_seconds
from sidrec_core.studies.plan import (
    OWN,
    SCALED,
    TABLE,
    Left,
    left_to_run,
    remaining_table,
    shared_seconds,
)
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.replicate import REPLICATE, owed_levels, replicated_levels
from sidrec_core.studies.runner import base_params, open_study, run_study
from sidrec_core.studies.seeds import COST_TABLE
from sidrec_core.studies.storage import make_storage
from sidrec_core.studies.study import grid_point

STUDY = STUDIES["exclude_seen"]  # levels off (default), on
SEEDS = [0, 1]


def test_a_study_never_run_has_every_point_open_and_no_estimate_without_a_cost_row(tmp_path):
    left = left_to_run(STUDY, opts(tmp_path), len(SEEDS))
    assert (left.section, left.new, left.points, left.todo) == (
        "exclude_seen-smoke",
        "never ran",
        4,
        4,
    )
    assert left.seconds is None
    assert "| unknown |" in remaining_table([left], "smoke")[4]


def test_open_points_cost_their_levels_median_here_and_new_defaults_open_a_new_section(
    tmp_path, capsys
):
    o = opts(tmp_path)
    defaults = effective_defaults(STUDY, base_params(o))
    ostudy = open_study(STUDY, o, SEEDS, defaults)
    ostudy.add_trial(complete_trial(600, user_attrs={"grid_point": ["on", 0]}))
    ostudy.add_trial(complete_trial(300, user_attrs={"grid_point": ["off", 0]}))
    left = left_to_run(STUDY, o, len(SEEDS))
    assert (left.new, left.points, left.todo, left.basis) == ("", 4, 2, OWN)
    assert left.seconds == 900.0  # (off, 1) at off's 300 s, (on, 1) at on's 600 s

    # the section's defaults are not today's: a launch opens a new one, costed by the table
    key = next(iter(defaults))
    ostudy.set_user_attr(DEFAULTS, {**defaults, key: "another value"})
    row = "| `exclude_seen` | 3 | 2.0 | [1.0, 3.0] | 5 | measured |\n"
    (tmp_path / "exp" / COST_TABLE).write_text(row)
    left = left_to_run(STUDY, o, len(SEEDS))
    assert left.section.startswith("exclude_seen-smoke@") and left.new == "its defaults changed"
    assert (left.todo, left.seconds, left.basis) == (4, 480.0, TABLE)

    out = str(tmp_path / "exp")
    argv = ["--remaining", "--profile", "smoke", "--n-seeds", "2", "--out", out]
    assert ablate_main([*argv, "--study", "exclude_seen"]) == 0
    printed = capsys.readouterr().out
    assert "| 0 of 4 | 0.1 |" in printed and "(new: its defaults changed)" in printed
    assert "Total: 0.1 CPU-h in 4 trials; 0 of 1 studies complete." in printed


def test_a_study_whose_set_up_finds_its_input_missing_is_blocked_and_left_out_of_the_total(
    tmp_path,
):
    """``load_mode`` on real data needs a local pretrained checkpoint nothing downloads: a plan
    that counted its 12 trials would promise hours no launch can spend."""
    o = opts(tmp_path, profile="beauty")
    left = left_to_run(STUDIES["load_mode"], o, 3)
    assert left.blocked.startswith("study load_mode needs a local pretrained causal-LM checkpoint")
    assert (left.todo, left.seconds) == (12, None)
    runnable = left_to_run(STUDY, o, 3)
    lines = remaining_table([left, runnable], "beauty")
    assert f"| 0 of 12 | blocked | {left.blocked} |" in lines[4]
    assert lines[-1].startswith("Total: 0.0 CPU-h in 6 trials (1 studies without an estimate)")
    assert lines[-1].endswith("; blocked, not counted: `load_mode`; 0 of 2 studies complete.")
    assert not left_to_run(STUDIES["load_mode"], opts(tmp_path), 2).blocked  # smoke: a tiny LM
    assert not (tmp_path / "exp" / "cache").exists()  # a plan writes nothing


def test_a_section_with_no_trial_is_costed_from_another_datasets_trials_scaled_by_interactions(
    tmp_path,
):
    """A Sports section never run takes the study's Beauty trials at Sports' 296,337 / 198,502
    interactions (its trials train on that many more rows), not Beauty's cost as it stands."""
    beauty = opts(tmp_path, profile="beauty")
    params = base_params(beauty)
    ostudy = open_study(STUDY, beauty, SEEDS, effective_defaults(STUDY, params), params)
    for secs, point in ((100.0, ["off", 0]), (300.0, ["on", 0]), (200.0, ["on", 1])):
        ostudy.add_trial(
            complete_trial(secs, user_attrs={"grid_point": point, "wall_seconds": secs})
        )
    left = left_to_run(STUDY, opts(tmp_path, profile="sports"), len(SEEDS))
    assert (left.section, left.new, left.todo) == ("exclude_seen-sports", "never ran", 4)
    assert left.basis == SCALED.format("beauty")
    # off at 100 s, on at 250 s a trial; each of the two seeds trains the reused stages once
    reused = reused_seconds(STUDY, 296_337)
    assert left.seconds == pytest.approx((2 * 100.0 + 2 * 250.0) * 296_337 / 198_502 + 2 * reused)
    assert left_to_run(STUDY, beauty, len(SEEDS)).basis == OWN  # its own trials come first


def test_a_seeds_first_trial_on_a_new_dataset_pays_the_stages_its_study_reuses(tmp_path):
    """``decoding`` only decodes: its trials on Beauty took a minute or two, but on a new dataset
    each seed first trains the SID LM it decodes (the committed pipeline's stage costs, scaled
    from the dataset they ran on); a stage with no metrics file costs nothing."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    (metrics / "prepare.json").write_text('{"num_interactions": 100, "wall_seconds": 1.0}')
    (metrics / "train_sidlm.json").write_text('{"wall_seconds": 50.0}')
    assert reused_seconds(STUDIES["decoding"], 200, metrics) == (1.0 + 50.0) * 2
    assert reused_seconds(STUDIES["sasrec_loss"], 200, metrics) == 1.0 * 2  # prepare only
    assert reused_seconds(STUDIES["decoding"], 200, tmp_path / "none") == 0.0


def cosine_worse_on_beauty(tmp_path) -> str:
    """A Beauty section of ``similarity`` whose ``cosine`` is significantly worse than ``dot``
    and whose other levels tie with it -> its storage URL."""
    study, seeds = STUDIES["similarity"], [0, 1, 2]
    beauty = opts(tmp_path, profile="beauty", n_seeds=3)
    params = base_params(beauty)
    ostudy = open_study(study, beauty, seeds, effective_defaults(study, params), params)
    for seed in seeds:
        for level in study.labels:
            value = 0.04 + 0.001 * seed - (0.01 + 1e-4 * seed) * (level == "cosine")
            attrs = {"grid_point": [level, seed], "test/ndcg@10": value, "wall_seconds": 100.0}
            ostudy.add_trial(complete_trial(100.0, user_attrs=attrs))
    return beauty.storage_url_for(study.name)


def test_a_replication_runs_the_default_and_the_levels_significant_on_the_reference_first(
    tmp_path, monkeypatch
):
    """``similarity``'s ``cosine`` is significantly worse than ``dot`` on Beauty, its other levels
    tie with it: a Sports launch queues dot and cosine on every seed before any other level, and
    the plan prices that part on its own; Beauty itself, or a study with no significant level,
    keeps the seed-by-seed order. ``--replication-only`` runs that part and leaves the rest
    queued."""
    study, seeds = STUDIES["similarity"], [0, 1, 2]
    url = cosine_worse_on_beauty(tmp_path)
    assert replicated_levels(url, study, "sports") == ["cosine"]
    assert replicated_levels(url, study, "beauty") == []
    assert replicated_levels(url, study, "synthetic") == []  # a pipeline check replicates nothing

    sports = opts(tmp_path, profile="sports", n_seeds=3)
    left = left_to_run(study, sports, 3)
    assert (left.todo, left.lead, left.lead_todo) == (15, ("cosine",), 6)
    reused = 3 * reused_seconds(study, 296_337)
    assert left.lead_seconds == pytest.approx(6 * 100.0 * 296_337 / 198_502 + reused)
    row = remaining_table([left], "sports")[4]
    assert row.endswith("| default + `cosine`: 6 trials, 0.2 CPU-h |")

    work = runner._work
    monkeypatch.setattr(runner, "_work", lambda *args, **kw: None)  # queue, run nothing
    run_study("similarity", dataclasses.replace(sports, report=False))
    section = optuna.load_study(
        study_name="similarity-sports", storage=make_storage(sports.storage_url_for(study.name))
    )
    points = [grid_point(t) for t in section.get_trials(deepcopy=False)]
    assert points[:6] == [(lv, s) for s in seeds for lv in ("dot", "cosine")]
    assert points[6:9] == [("scaled", 0), ("bilinear", 0), ("adaptive", 0)]

    monkeypatch.setattr(runner, "_work", work)
    monkeypatch.setattr(runner, "Objective", lambda *args: lambda trial: 0.1)  # instant trials
    only = dataclasses.replace(sports, report=False, replication_only=True)
    summary = run_study("similarity", only)
    assert (summary["complete"], summary["remaining_after"]) == (6, 9)
    states = {grid_point(t): t.state.name for t in section.get_trials(deepcopy=False)}
    assert {p for p, state in states.items() if state == "COMPLETE"} == set(points[:6])


def test_replication_only_runs_an_owed_point_queued_again_behind_levels_it_does_not_owe(
    tmp_path, monkeypatch
):
    """A failed ``cosine`` trial on Sports is queued again by the next launch after the levels
    the replication does not owe; ``--replication-only`` passes over those (each queued again
    and pruned) to run it, and leaves them queued."""
    study = STUDIES["similarity"]
    cosine_worse_on_beauty(tmp_path)
    sports = dataclasses.replace(
        opts(tmp_path, profile="sports", n_seeds=3), report=False, replication_only=True
    )

    def cosine_2_fails(trial):
        if grid_point(trial) == ("cosine", 2):
            raise RuntimeError("killed")
        return 0.1

    monkeypatch.setattr(runner, "Objective", lambda *args: cosine_2_fails)
    assert run_study("similarity", sports)["complete"] == 5
    monkeypatch.setattr(runner, "Objective", lambda *args: lambda trial: 0.1)
    summary = run_study("similarity", sports)
    assert (summary["complete"], summary["remaining_after"]) == (6, 9)
    section = optuna.load_study(
        study_name="similarity-sports", storage=make_storage(sports.storage_url_for(study.name))
    )
    trials = section.get_trials(deepcopy=False)
    complete = {grid_point(t) for t in trials if t.state.name == "COMPLETE"}
    assert complete == {(lv, s) for lv in ("dot", "cosine") for s in (0, 1, 2)}
    waiting = [grid_point(t) for t in trials if t.state.name == "WAITING"]
    assert sorted(waiting) == sorted(
        (lv, s) for lv in study.labels for s in (0, 1, 2) if lv not in ("dot", "cosine")
    )
    passed = [t for t in trials if t.user_attrs.get(runner.DEFERRED)]
    assert len(passed) == 9 and {t.state.name for t in passed} == {"PRUNED"}


def test_reused_stages_two_studies_train_at_one_seed_are_counted_once_in_the_total(tmp_path):
    """``decoding`` and ``beam_width`` decode the same SID LM (same stages, same params): a plan
    of both on a new dataset trains each seed's once; ``rpg_input`` reuses another upstream."""
    params = base_params(opts(tmp_path, profile="sports"))
    key = reused_key(STUDIES["decoding"], params)
    assert key == reused_key(STUDIES["beam_width"], params)
    assert key != reused_key(STUDIES["rpg_input"], params)
    row = Left("decoding", "decoding-sports", "never ran", 10, 10, 3000.0, "b", per_seed=1000.0)
    rows = [
        dataclasses.replace(row, shares=((key, 0), (key, 1))),
        dataclasses.replace(row, study="beam_width", shares=((key, 0), (key, 1), (key, 2))),
        dataclasses.replace(row, study="rpg_input", per_seed=500.0, shares=(("other", 0),)),
    ]
    assert shared_seconds(rows) == 2 * 1000.0
    total = remaining_table(rows, "sports")[-1]
    assert total.startswith("Total: 1.9 CPU-h in 30 trials (the rows less 0.6 CPU-h that two")


def test_a_trial_two_studies_run_alike_at_one_seed_is_counted_once_in_the_total(tmp_path):
    """``similarity``'s ``dot`` is ``sasrec_loss``'s ``ce`` (same stages, same params): DVC's
    run-cache restores the second study's trial at a seed where the first ran; ``cosine`` and
    another seed are trials of their own."""
    params = base_params(opts(tmp_path, profile="sports"))
    ce = point_key(STUDIES["sasrec_loss"], "ce", params)
    assert ce == point_key(STUDIES["similarity"], "dot", params)
    assert ce != point_key(STUDIES["similarity"], "cosine", params)
    assert ce != point_key(STUDIES["sasrec_loss"], "bce", params)
    cosine = point_key(STUDIES["similarity"], "cosine", params)
    row = Left("sasrec_loss", "sasrec_loss-sports", "never ran", 12, 2, 2000.0, "b")
    rows = [
        dataclasses.replace(row, trials=((ce, 0, 1000.0, True), (ce, 1, 1000.0, False))),
        dataclasses.replace(
            row, study="similarity", trials=((ce, 0, 900.0, True), (cosine, 0, 800.0, True))
        ),
    ]
    assert shared_seconds(rows) == 900.0
    assert shared_seconds(rows, lead=True) == 900.0
    assert shared_seconds([rows[1], rows[0]]) == 1000.0  # the first row pays
    only_rest = dataclasses.replace(rows[1], trials=((ce, 1, 900.0, False),))
    assert shared_seconds([rows[0], only_rest], lead=True) == 0.0  # seed 1 is no lead point
    done = dataclasses.replace(row, trials=(), ran=((ce, 0),))  # sasrec_loss's ce ran at 0
    assert shared_seconds([done, rows[1]]) == 900.0  # similarity's dot at 0 is restored


def test_a_study_the_issue_names_owes_every_level_and_one_it_does_not_owes_none(
    tmp_path, monkeypatch
):
    """With no level significant on Beauty, ``rpg_codebooks`` (named by issue 38) still owes
    Sports its whole grid, which the plan prices as its first part and ``--replication-only``
    runs; ``similarity`` then owes nothing, and ``--replication-only`` starts none of its
    trials."""
    sports = opts(tmp_path, profile="sports", n_seeds=3)
    named, other = STUDIES["rpg_codebooks"], STUDIES["similarity"]
    assert owed_levels(named, "sports", []) == list(named.labels)
    assert owed_levels(named, "beauty", []) is None and owed_levels(other, "sports", []) is None
    left = left_to_run(named, sports, 3)
    assert (left.lead, left.whole, left.lead_todo) == ((), REPLICATE["rpg_codebooks"], left.todo)
    assert (
        f"| every level ({REPLICATE['rpg_codebooks']}): {left.todo} trials"
        in (remaining_table([left], "sports")[4])
    )
    assert left_to_run(other, sports, 3).whole == ""

    monkeypatch.setattr(runner, "Objective", lambda *args: lambda trial: 0.1)  # instant trials
    only = dataclasses.replace(sports, report=False, replication_only=True)
    assert run_study("rpg_codebooks", only)["complete"] == len(named.labels) * 3
    summary = run_study("similarity", only)
    assert summary["no_trial_started"] and summary["complete"] == 0
    assert summary["remaining_after"] == len(other.labels) * 3


def test_a_complete_point_is_restorable_only_while_this_machines_cache_holds_its_outs(
    tmp_path, monkeypatch
):
    """Another study's trial run alike is a run-cache restore only where the complete trial's
    outs are in this machine's DVC cache (a trial from another machine is trained again); a trial
    from before outs were recorded is assumed restorable."""
    held = "ab" + "c" * 30
    (tmp_path / "cache" / "files" / "md5" / "ab").mkdir(parents=True)
    (tmp_path / "cache" / "files" / "md5" / "ab" / ("c" * 30)).write_text("an out")
    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path / "cache"))
    study, sports = STUDIES["sasrec_loss"], opts(tmp_path, profile="sports", n_seeds=3)
    params = base_params(sports)
    ostudy = open_study(study, sports, [0, 1, 2], effective_defaults(study, params), params)
    for seed, outs in ((0, [held]), (1, ["0" * 32]), (2, None)):
        attrs = {"grid_point": ["ce", seed], "wall_seconds": 100.0}
        ostudy.add_trial(complete_trial(100.0, user_attrs=attrs | {dvc_run.OUTS: outs}))
    ce = point_key(study, "ce", params)
    assert set(left_to_run(study, sports, 3).ran) == {(ce, 0), (ce, 2)}


def test_a_budget_starts_a_point_dvc_restores_whole_where_training_it_would_overrun(
    tmp_path, monkeypatch
):
    """``beam_width``'s default is ``decoding``'s ``constrained`` (same stages, same params): with
    10 minutes left and the default's training priced at 25, a Sports worker still starts it at
    a seed where ``decoding`` completed it with its outs in this machine's DVC cache (a
    restore); not another level, nor another seed, nor the default once the cache lacks the
    upstream's outs."""
    held, sidlm = "ab" + "c" * 30, "ab" + "d" * 30 + ".dir"
    for out in (held, sidlm):
        path = tmp_path / "cache" / "files" / "md5" / out[:2] / out[2:]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("an out")
    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path / "cache"))
    sports = opts(tmp_path, profile="sports", n_seeds=3, budget=TimeBudget.minutes(10))
    params = base_params(sports)
    decoding, beam = (
        open_study(STUDIES[n], sports, [0, 1, 2], effective_defaults(STUDIES[n], params), params)
        for n in ("decoding", "beam_width")
    )
    outs = {dvc_run.OUTS: [held], dvc_run.UPSTREAM_OUTS: [sidlm]}  # each seed trains its SID LM
    outs["metrics"] = {dvc_run.UPSTREAM: 1200.0, dvc_run.UPSTREAM_SPENT: 1200.0}
    decoding.add_trial(
        complete_trial(1500.0, user_attrs={"grid_point": ["constrained", 1], **outs})
    )
    beam.add_trial(complete_trial(1500.0, user_attrs={"grid_point": ["20", 0], **outs}))
    go_on = runner.next_trial_check(STUDIES["beam_width"], params, sports)

    starts = functools.partial(starts_next, go_on, beam)
    assert starts("20", 1)  # decoding's constrained at seed 1: restored
    assert not starts("5", 1)  # a level no study ran
    assert not starts("20", 2)  # a seed decoding did not run
    (tmp_path / "cache" / "files" / "md5" / "ab" / sidlm[2:]).unlink()
    assert not starts("20", 1)  # this machine's cache lacks the SID LM it decodes
    assert TimeBudget.minutes(30).fits([1500.0]) and not TimeBudget.minutes(20).fits([1500.0])


def test_a_budget_expects_a_point_to_cost_less_the_training_its_resume_state_holds(
    tmp_path, monkeypatch
):
    """An earlier attempt of ``ce`` at seed 1 was killed after 20 of its 25 minutes' training (its
    resume state on this machine): with 10 minutes left, a worker starts it; without that state
    (another seed, or a fresh machine) it does not."""
    import torch

    monkeypatch.setenv("SIDREC_DVC_CACHE", str(tmp_path / "cache"))
    study = STUDIES["sasrec_loss"]
    sports = opts(tmp_path, profile="sports", n_seeds=3, budget=TimeBudget.minutes(10))
    params = base_params(sports)
    ostudy = open_study(study, sports, [0, 1, 2], effective_defaults(study, params), params)
    ostudy.add_trial(complete_trial(1500.0, user_attrs={"grid_point": ["bce", 0]}))
    go_on = runner.next_trial_check(study, params, sports)
    trial = runner.point_params(study, params, "ce", 1)
    folder = dvc_run.resume_folder(study.run, study.reuse, trial)
    folder.mkdir(parents=True)
    torch.save({"loop": {"epoch": 4, "epoch_times": [300.0] * 4}}, folder / "sasrec.pt")

    starts = functools.partial(starts_next, go_on, ostudy)
    assert starts("ce", 1)  # 25 minutes less 20 trained
    assert not starts("ce", 2)
    (folder / "sasrec.pt").unlink()
    assert not starts("ce", 1)


def starts_next(go_on, ostudy: optuna.Study, level: str, seed: int) -> bool:
    """Whether a worker's check ``go_on`` starts ``ostudy``'s trial at (``level``, ``seed``)
    queued next (each point queued before it taken out as failed)."""
    waiting = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    for t in waiting:
        ostudy._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
    ostudy.enqueue_trial({}, user_attrs={"grid_point": [level, seed]})
    return go_on(ostudy)
