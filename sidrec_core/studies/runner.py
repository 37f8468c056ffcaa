"""Optuna driver of the ablation studies (optuna/optuna-examples): one storage per study
(:mod:`~.storage`), every (level x seed) grid point queued with ``enqueue_trial``, one MLflow
parent run per study and a nested run per trial; the tuner (:mod:`~.tuning`) shares the trial path.

A launch queues each grid point with no COMPLETE, RUNNING or WAITING trial, so a relaunch runs
only what is missing. A worker is ``study.optimize`` over the queued trials, stopped when none is
left, ``--max-trials`` ran, the next would overrun ``--time-budget`` or its trials failed in a
row (:mod:`~.budget`); ``--workers N`` is N such processes on one storage, whose lock hands each
queued trial to one worker. A killed worker's trial is failed by the next launch and its point
queued again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import multiprocessing
import traceback
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sidrec_core.config import flatten, load_params
from sidrec_core.perf import code_state
from sidrec_core.stages import resolve_params
from sidrec_core.studies import dvc_run, trial_resume
from sidrec_core.studies.budget import (
    FAILS_IN_A_ROW,
    STOP,
    FailureStreak,
    TimeBudget,
    expected_seconds,
    points_seconds,
    ran_here,
    stop_on_signal,
    trial_seconds,
)
from sidrec_core.studies.defaults import DEFAULTS, effective_defaults, optuna_name
from sidrec_core.studies.elsewhere import elsewhere, point_key
from sidrec_core.studies.index import write_index
from sidrec_core.studies.pipeline import PROJECT_ROOT
from sidrec_core.studies.profiles import get_dotted, launch_params, profile_path, with_overrides
from sidrec_core.studies.registry import get_study
from sidrec_core.studies.replicate import REFERENCE, first_part, owed_levels, replicated_levels
from sidrec_core.studies.report import write_study_report
from sidrec_core.studies.rerun import RERUN_OF, enqueue_unpaired
from sidrec_core.studies.restore import RESTORE_SECONDS, restorable_points
from sidrec_core.studies.seeds import COST_TABLE, estimated_minutes
from sidrec_core.studies.storage import (
    WORKER,
    check_storage,
    fail_dead_trials,
    is_journal,
    load_or_create,
    make_storage,
    study_journal,
    worker_id,
)
from sidrec_core.studies.study import (
    Study,
    grid_point,
    level_spec,
    live_point,
)
from sidrec_core.tracking import PARENT_ENV, start_run

log = logging.getLogger(__name__)
EXPERIMENTS_DIR = PROJECT_ROOT / "experiments"
GRID_SEED = 0
LIVE = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
STREAK_EXIT = 3  # a spawned worker's exit code when its trials failed in a row
FAILS_NOTE = f"{FAILS_IN_A_ROW} trials in a row failed (their errors are in the report)"
DEFERRED = "deferred"  # user attr of a trial pruned to queue its point again (owed_first)


@dataclasses.dataclass
class StudyOptions:
    """What a launch of ``bench/ablate.py`` decides."""

    profile: str = "smoke"
    storage: str | None = None  # RDB URL or journal path; default <out_dir>/<study>/optuna.jsonl
    new_storage: bool = False  # create ``storage`` when it does not exist (--new-storage)
    n_seeds: int = 3
    workers: int = 1
    # per worker and launch, points --replication-only passes over included (None: no limit)
    max_trials: int | None = None
    budget: TimeBudget = dataclasses.field(default_factory=TimeBudget)  # --time-budget
    out_dir: str = str(EXPERIMENTS_DIR)
    params_file: str = "params.yaml"
    sets: list[str] = dataclasses.field(default_factory=list)
    retry_failed: bool = True
    rerun_unpaired: bool = False  # re-run trials whose upstream inputs unpair them (rerun.py)
    replication_only: bool = False  # run only the levels a replication owes (replicate.py)
    report: bool = True

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"--n-seeds must be >= 1, got {self.n_seeds}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.storage is not None:
            check_storage(self.storage, self.new_storage)
            if self.workers > 1 and self.storage.startswith("sqlite"):
                raise ValueError(
                    "--workers > 1 with a sqlite:/// --storage: SQLite can hand one queued trial "
                    "to two workers; use the default journal or postgresql://"
                )

    def storage_url_for(self, study: str) -> str:
        """``--storage`` or the study's own journal (kept in the repository)."""
        return self.storage or study_journal(Path(self.out_dir), study)

    def open_storage(self, location: str) -> optuna.storages.BaseStorage:
        """A missing storage is created for a study's own journal or with ``--new-storage``."""
        return make_storage(location, create=self.storage is None or self.new_storage)


def base_params(opts: StudyOptions) -> dict[str, Any]:
    """params file (missing: all defaults) + profile overrides + ``--set`` overrides."""
    return launch_params(opts.profile, opts.params_file, opts.sets)


def seeds_for(params: dict[str, Any], n_seeds: int) -> list[int]:
    """``n_seeds`` consecutive seeds from ``base.seed``: a study's grid, a search's retrains."""
    first = int(get_dotted(params, "base.seed", 0))
    return [first + i for i in range(n_seeds)]


@contextlib.contextmanager
def parent_run(ostudy: optuna.Study, kind: str, params: dict, profile: str, **kw: Any) -> Iterator:
    """The MLflow parent run of a study or search (``kw``: run_name, tags), one across launches:
    its id is the Optuna study's ``mlflow_parent_run_id``."""
    parent_id = ostudy.user_attrs.get("mlflow_parent_run_id")
    dataset = str(get_dotted(params, "data.name", "beauty"))
    with start_run(
        kind, params, dataset=dataset, profile=profile, metrics_dir=None, run_id=parent_id, **kw
    ) as parent:
        if parent.run_id and parent.run_id != parent_id:
            ostudy.set_user_attr("mlflow_parent_run_id", parent.run_id)
        yield parent


def run_stages(
    trial: optuna.Trial,
    stages: tuple,
    params: dict,
    trial_dir: Path,
    objective: str,
    mlflow: dict,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The one trial path of studies and searches: the stages ``(run, reuse)`` through DVC in a
    nested MLflow run (``mlflow``: kind, profile, parent_run_id, run_name, tags) -> their
    metrics. A stage its pruner stopped prunes the trial; other errors are kept on the trial."""
    kind = mlflow.pop("kind")
    dataset = str(get_dotted(params, "data.name", "?"))
    try:
        with start_run(kind, params, dataset=dataset, metrics_dir=None, **mlflow) as run:
            nest = {PARENT_ENV: run.run_id} if run.run_id else {}
            try:
                metrics = dvc_run.run_trial(*stages, params, trial_dir, {**(env or {}), **nest})
            except dvc_run.StageFailed as exc:
                if exc.pruned:  # the stage's own message: "pruned after epoch N"
                    raise optuna.TrialPruned(exc.pruned) from None
                raise
            if metrics.get(objective) is None:
                raise KeyError(
                    f"objective {objective!r} missing from the metrics of "
                    f"{'+'.join(stages[0])}; got: {', '.join(sorted(metrics))}"
                )
            run.record(**{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    except optuna.TrialPruned:
        raise
    except Exception as exc:  # shown by the reports and MLflow
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        log.error("trial %d of %s failed: %s", trial.number, trial.study.study_name, exc)
        raise
    return metrics


def optimize_while(
    ostudy: optuna.Study, objective: Callable, go_on: Callable, n_trials=None, callbacks=()
) -> str | None:
    """``optimize`` while ``go_on(study)`` holds (checked before each trial), no stop signal
    came (:func:`~.budget.stop_on_signal`) and the worker's trials have not failed
    ``FAILS_IN_A_ROW`` times in a row -> why it stopped on failures (one line), else None."""
    streak = FailureStreak()

    def stop(s: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        streak(s, trial)
        if streak.tripped:
            log.error("%s: %s; stopping this worker", s.study_name, streak.reason())
            s.stop()
        elif STOP.is_set() or not go_on(s):
            s.stop()

    if not STOP.is_set() and go_on(ostudy):
        ostudy.optimize(
            objective, n_trials=n_trials, catch=(Exception,), callbacks=[*callbacks, stop]
        )
    return streak.reason()


def open_study(
    study: Study,
    opts: StudyOptions,
    seeds: list[int],
    defaults: dict[str, Any],
    params: dict[str, Any] | None = None,
) -> optuna.Study:
    """Create or load the Optuna study that recorded ``defaults`` (:mod:`~.defaults`); with
    ``params``, note the dataset and the profile's overrides for the report."""
    storage = opts.open_storage(opts.storage_url_for(study.name))
    ostudy = load_or_create(
        storage,
        optuna_name(storage, study.name, opts.profile, defaults),
        study.direction,
        optuna.samplers.RandomSampler(seed=GRID_SEED),
    )
    attrs = {"factor": study.factor, "profile": opts.profile, "levels": study.labels}
    attrs |= {"default": study.default, "objective": study.objective, "seeds": seeds}
    attrs |= {DEFAULTS: defaults}
    if params is not None:
        over = flatten(load_params(profile_path(opts.profile)))
        over |= dict(item.partition("=")[::2] for item in opts.sets)
        attrs |= {"dataset": resolve_params(params)["data"]["name"], "profile_overrides": over}
    for key, value in attrs.items():
        if ostudy.user_attrs.get(key) != value:  # a launch that changes nothing appends nothing
            ostudy.set_user_attr(key, value)
    return ostudy


def enqueue_missing(
    ostudy: optuna.Study,
    study: Study,
    seeds: list[int],
    retry_failed: bool = True,
    first: Collection[str] = (),
) -> int:
    """Queue every grid point with no live trial (nor a FAILED one without ``retry_failed``),
    seed by seed and the default level first at each: a study stopped part-way pairs every seed
    it finished, and the upstream stages a seed reuses (a trained SID LM, a SASRec) are built
    once and restored by DVC's run-cache for its other levels while the machine keeps that
    cache. Levels in ``first`` (a replication's, :mod:`~.replicate`) come with the default on
    every seed before the other levels on any. Level and seed are a user attr, not params: a
    categorical's choices could not grow. -> how many."""
    taken = {*LIVE, *(() if retry_failed else (TrialState.FAIL,))}
    # a trial of a level redefined since it ran takes nothing (live_point is None)
    busy = {live_point(study, t) for t in ostudy.get_trials(deepcopy=False) if t.state in taken}
    order = list(dict.fromkeys([study.default, *study.labels]))
    lead = [lv for lv in order if lv in first_part(study, list(first))] or order
    rest = [lv for lv in order if lv not in lead]
    todo = [(lv, s) for levels in (lead, rest) for s in seeds for lv in levels]
    todo = [p for p in todo if p not in busy]
    for point in todo:
        ostudy.enqueue_trial({}, user_attrs={"grid_point": list(point)})
    return len(todo)


def grid(ostudy: optuna.Study, study: Study, seeds: list[int]) -> tuple[list, set]:
    """(the grid points, those complete): ``seeds``' points and any other seed another launch
    queued, runs or finished (a worker takes whatever is queued), in level then seed order."""
    live = [(t.state, live_point(study, t)) for t in ostudy.get_trials(False, states=LIVE)]
    points = {(lv, s) for lv in study.labels for s in seeds} | {p for _, p in live if p}
    done = {p for state, p in live if p and state == TrialState.COMPLETE}
    return sorted(points, key=lambda p: (study.labels.index(p[0]), p[1])), done


def remaining(ostudy: optuna.Study, study: Study, seeds: list[int]) -> list[tuple[str, int]]:
    points, done = grid(ostudy, study, seeds)
    return [p for p in points if p not in done]


def progress(ostudy: optuna.Study, study: Study, seeds: list[int]) -> str:
    """``trial k/N`` and an ETA: each remaining point and queued re-run as
    :func:`~sidrec_core.studies.budget.points_seconds` costs it (a re-run's point is complete
    already: it counts once more in N)."""
    points, done = grid(ostudy, study, seeds)
    reruns = [t for t in ostudy.get_trials(False, states=LIVE) if RERUN_OF in t.user_attrs]
    pending = [p for p in points if p not in done]
    pending += [grid_point(t) for t in reruns if t.state != TrialState.COMPLETE]
    text = f"trial {len(points) + len(reruns) - len(pending) + 1}/{len(points) + len(reruns)}"
    if done_here := ran_here(ostudy):
        left = points_seconds(done_here, pending)
        median = np.median([trial_seconds(t) for t in done_here])
        text += f", ETA {left / 60:.0f} min (median {median:.0f} s a trial)"
    return text


def left_after(ostudy: optuna.Study, study: Study, seeds: list[int]) -> dict[str, int]:
    """The grid points left undone (``remaining_after``) and those another machine's worker is
    running (``running_elsewhere``: not left undone, that worker ends them)."""
    trials = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    busy = {live_point(study, t) for t in trials}
    left = remaining(ostudy, study, seeds)
    return {
        "remaining_after": sum(p not in busy for p in left),
        "running_elsewhere": sum(p in busy for p in left),
    }


def queued_points(ostudy: optuna.Study) -> list[tuple[str, int]]:
    """The (level, seed) of each queued trial, in the order Optuna hands them out (the
    lowest-numbered WAITING one first)."""
    waiting = ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return [p for t in sorted(waiting, key=lambda t: t.number) if (p := grid_point(t))]


def owed_first(objective: Callable, only: frozenset[str] | None) -> Callable:
    """``objective``, except that under ``only`` (the levels a replication owes) a trial of
    another level is queued again at the queue's end and pruned (``DEFERRED``), so a point the
    replication owes that waits behind it (a failed one, queued again after the rest) runs:
    Optuna hands out the lowest-numbered WAITING trial and cannot reorder the queue."""
    if only is None:
        return objective

    def run(trial: optuna.Trial) -> float:
        point = grid_point(trial)
        if point is not None and point[0] not in only:
            trial.study.enqueue_trial({}, user_attrs=dict(trial.user_attrs))
            trial.set_user_attr(DEFERRED, True)
            raise optuna.TrialPruned(f"{point} is no level the replication owes: queued again")
        return objective(trial)

    return run


class Objective:
    """One trial: the params of its (level, seed), the stages, the objective. Picklable."""

    def __init__(self, study_name: str, params: dict, seeds: list[int], opts: StudyOptions, parent):
        self.study_name, self.params, self.seeds = study_name, params, seeds
        self.opts, self.parent_run_id = opts, parent

    def __call__(self, trial: optuna.Trial) -> float:
        study = get_study(self.study_name)
        point = grid_point(trial)
        if point is None:  # sampled, not queued: the grid was finished by another worker
            raise optuna.TrialPruned("no queued grid point left")
        label, seed = point
        if label not in study.labels:
            raise optuna.TrialPruned(f"level {label!r} is no longer in study {study.name}")
        # two launches queueing one point at once (enqueue_trial's documented race) leave a twin:
        # a complete trial of the point (past the one a re-run replaces), or a running one
        # numbered lower, takes it
        replaces = trial.user_attrs.get(RERUN_OF, -1)
        for t in trial.study.get_trials(False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            complete = t.state == TrialState.COMPLETE
            if (live_point(study, t) if complete else grid_point(t)) == point and (
                t.number > replaces if complete else t.number < trial.number
            ):
                raise optuna.TrialPruned(
                    f"grid point ({label}, seed {seed}) taken by another trial"
                )
        trial.set_user_attr(WORKER, worker_id())
        trial.set_user_attr("level_spec", level_spec(study, label))
        trial.set_user_attr("provenance", code_state())
        log.info(
            "%s: %s level %s seed %d",
            study.name,
            progress(trial.study, study, self.seeds),
            label,
            seed,
        )
        section = trial.study.study_name.removeprefix(f"{study.name}-")  # profile[@defaults]
        out = Path(self.opts.out_dir) / study.name / section / "trials"
        trial_dir = out / f"{trial.number:04d}-{label}-s{seed}"
        trial.set_user_attr("trial_dir", str(trial_dir))
        tags = {"study": study.name, "level": label, "seed": seed, "trial": trial.number}
        mlflow = {
            "kind": f"trial/{study.name}",
            "profile": self.opts.profile,
            "parent_run_id": self.parent_run_id,
            "run_name": f"{study.name}/{label}/seed{seed}",
            "tags": {**tags, "factor": study.factor},
        }
        stages = (study.run, study.reuse)
        params = point_params(study, self.params, label, seed)
        metrics = run_stages(trial, stages, params, trial_dir, study.objective, mlflow)
        # headline figures as their own attrs (optuna-dashboard shows them), all in "metrics"
        for key in (*study.secondary, *(f"{st}/wall_seconds" for st in study.run)):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        for key in (dvc_run.UPSTREAM_OUTS, dvc_run.OUTS):  # hashes, not figures
            if (outs := metrics.pop(key, None)) is not None:
                trial.set_user_attr(key, outs)
        trial.set_user_attr("metrics", metrics)
        return float(metrics[study.objective])


def point_params(study: Study, params: dict, label: str, seed: int) -> dict[str, Any]:
    """The params of ``study``'s trial at grid point (``label``, ``seed``): ``params`` with the
    study's fixed overrides, the seed and the level's overrides."""
    over = {**study.fixed, "base.seed": seed, **study.level(label).overrides}
    return with_overrides(params, over)


def _work(
    study_name: str,
    params: dict,
    seeds: list[int],
    opts: StudyOptions,
    defaults: dict[str, Any],
    parent_run_id: str | None,
    only: frozenset[str] | None = None,
    go_on: Callable[[optuna.Study], bool] | None = None,
) -> str | None:
    """A worker: ``optimize`` over the queued trials, stopped when none is queued, the next is
    of a level outside ``only``, ``max_trials`` ran, the next one would overrun the time budget
    (``go_on``, else :func:`next_trial_check`) or its trials failed in a row (-> why, else
    None)."""
    study = get_study(study_name)
    ostudy = open_study(study, opts, seeds, defaults)
    objective = Objective(study_name, params, seeds, opts, parent_run_id)
    go_on = go_on or next_trial_check(study, params, opts, only)
    return optimize_while(ostudy, owed_first(objective, only), go_on, opts.max_trials)


def next_trial_check(
    study: Study, params: dict, opts: StudyOptions, only: frozenset[str] | None = None
) -> Callable[[optuna.Study], bool]:
    """Whether a worker starts the next queued trial: one is queued (with ``only``, the levels a
    replication owes, :func:`~.replicate.owed_levels`: one of those, which :func:`owed_first`
    brings forward) and it ends before the time budget's deadline (its expected seconds from the
    study's trials here and on other datasets and machines, :mod:`~.elsewhere`; where none ran
    anywhere, the committed cost table's median for the study). Looked up only where that would
    overrun: less the training an earlier attempt of the point left in its resume state
    (:mod:`~.trial_resume`), else, for a point DVC's run-cache would restore whole
    (:mod:`~.restore`), :data:`~.restore.RESTORE_SECONDS`."""
    minutes = estimated_minutes(EXPERIMENTS_DIR / COST_TABLE, study.name)
    estimate = [] if minutes is None else [60.0 * minutes]
    data = resolve_params(params)["data"]
    url = opts.storage_url_for(study.name)
    other = elsewhere(url, study, data) if opts.budget.deadline else None

    def restored(level: str, seed: int) -> bool:
        if study.setup:  # its key holds the hook's inputs (a local checkpoint)
            return False
        found = restorable_points(params, opts.profile, opts.storage_url_for)
        if (point_key(study, level, params), seed) not in found:
            return False
        log.info("%s: %s at seed %d is a run-cache restore here", study.name, level, seed)
        return True

    def resumed(expected: list[float], level: str, seed: int) -> list[float]:
        trial = point_params(study, params, level, seed)
        saved = trial_resume.saved_seconds(dvc_run.resume_folder(study.run, study.reuse, trial))
        if saved:
            log.info(
                "%s: %s at seed %d resumes %.0f min of training",
                study.name,
                level,
                seed,
                saved / 60,
            )
        return [max(x - saved, 0.0) for x in expected]

    def go_on(s: optuna.Study) -> bool:
        queued = queued_points(s)
        point = next((p for p in queued if only is None or p[0] in only), None)
        if point is None:
            if queued:
                log.info(
                    "%s: %d queued, none a level the replication owes", study.name, len(queued)
                )
            return False
        expected = expected_seconds(s, *point, other) or estimate
        if not opts.budget.fits(expected):
            expected = resumed(expected, *point)
        if not opts.budget.fits(expected) and restored(*point):
            expected = [RESTORE_SECONDS]
        return opts.budget.allows(expected)

    return go_on


def _spawned_work(*args: Any) -> None:
    """A spawned worker: :func:`_work` (ended after its trial by a stop signal the launch passes
    on), exiting with ``STREAK_EXIT`` when it stopped on failures."""
    with stop_on_signal():
        why = _work(*args)
    if why:
        raise SystemExit(STREAK_EXIT)


def set_up(study: Study, params: dict, out_dir: Path) -> dict[str, Any]:
    """The overrides ``study``'s set-up hook gives (a local checkpoint); it raises ValueError,
    one line, when an input it needs is missing."""
    if not study.setup:
        return {}
    module, fn = study.setup.split(":")
    return getattr(importlib.import_module(module), fn)(params, out_dir)


def run_study(name: str, opts: StudyOptions) -> dict[str, Any]:
    """Run (or resume) study ``name``; write its report. Returns a summary dict."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = get_study(name)
    params = base_params(opts)
    defaults = effective_defaults(study, params)  # a set-up hook's local paths are no default
    params = with_overrides(params, set_up(study, params, Path(opts.out_dir)))
    seeds = seeds_for(params, opts.n_seeds)
    ostudy = open_study(study, opts, seeds, defaults, params)
    fail_dead_trials(ostudy, journal=is_journal(opts.storage_url_for(study.name)))
    before = len(remaining(ostudy, study, seeds))
    dataset = str(ostudy.user_attrs.get("dataset", REFERENCE))
    first = replicated_levels(opts.storage_url_for(study.name), study, dataset)
    if first:
        log.info("%s: %s first on every seed (significant on %s)", name, first, REFERENCE)
    queued = enqueue_missing(ostudy, study, seeds, opts.retry_failed, first)
    if opts.rerun_unpaired:
        queued += enqueue_unpaired(ostudy, study)
    state = Counter(t.state for t in ostudy.get_trials(deepcopy=False))
    summary: dict[str, Any] = {
        "study": ostudy.study_name,
        "storage": opts.storage_url_for(study.name),
        "grid_points": len(study.labels) * len(seeds),
        "remaining_before": before,
        "queued": queued,
    }
    if before == 0 and not queued and not state[TrialState.WAITING] + state[TrialState.RUNNING]:
        # nothing to run: storage, reports and MLflow stay as they are (no empty parent run)
        done = {"remaining_after": 0, "complete": state[TrialState.COMPLETE], "up_to_date": True}
        return summary | done
    # --replication-only: the levels the replication owes (none where it owes none)
    only = frozenset(owed_levels(study, dataset, first) or ()) if opts.replication_only else None
    go_on = next_trial_check(study, params, opts, only)  # this process's worker asks it again
    if STOP.is_set() or not go_on(ostudy):
        # no trial starts (a stop signal, the budget, the replication's levels): the report,
        # the index and MLflow stay as they are; the queued points wait for the next launch
        stop = {"complete": state[TrialState.COMPLETE], "no_trial_started": True}
        return summary | left_after(ostudy, study, seeds) | stop
    with parent_run(
        ostudy,
        f"study/{study.name}",
        params,
        opts.profile,
        run_name=f"study/{ostudy.study_name}",
        tags={"study": study.name, "factor": study.factor},
    ) as parent:
        # --workers N: this process and N - 1 spawned ones, each an optimize on the one storage
        args = (name, params, seeds, opts, defaults, parent.run_id, only)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_spawned_work, args=args) for _ in range(opts.workers - 1)]
        for proc in procs:
            proc.start()
        why = _work(*args, go_on=go_on)
        for proc in procs:
            proc.join()
        spawned = sum(proc.exitcode == STREAK_EXIT for proc in procs)
        if why or spawned:
            summary["stopped_on_failures"] = why or f"{spawned} spawned worker(s): {FAILS_NOTE}"
        state = Counter(t.state for t in ostudy.get_trials(deepcopy=False))
        summary |= left_after(ostudy, study, seeds)
        summary["complete"] = state[TrialState.COMPLETE]
        summary["failed"] = state[TrialState.FAIL]
        summary["pruned_duplicates"] = state[TrialState.PRUNED]
        parent.record(**{k: v for k, v in summary.items() if isinstance(v, int)})
        if opts.report:
            paths = write_study_report(
                study, opts.storage_url_for(study.name), Path(opts.out_dir), opts.storage_url_for
            )
            write_index(Path(opts.out_dir))
            for path in paths:
                parent.log_artifact(path, artifact_path="report")
            summary["report"] = str(paths[0]) if paths else None
    return summary
