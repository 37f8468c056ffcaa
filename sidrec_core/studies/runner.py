"""Optuna driver of the ablation studies, on Optuna's public API: named studies in one storage per
study (an Optuna journal under ``experiments/<study>/`` by default, committed so a study moves
between machines; see :mod:`~sidrec_core.studies.storage`), every (level x seed) grid point queued
with ``enqueue_trial``, one MLflow parent run per study and a nested run per trial
(optuna/optuna-examples; STYLE.md).

Resume: a launch queues each grid point that has no COMPLETE, RUNNING or WAITING trial, so only
the remaining points run. A worker is ``study.optimize`` over the queued trials, stopped by a
callback when none is left, ``--max-trials`` is reached or the next would overrun the time budget;
``--workers N`` is N such processes on the one storage. A killed worker's trial is failed by the
next launch (its process is gone, or on an RDB storage its heartbeat stopped) and its point queued
again. Two workers never take one queued trial (the storage's lock); two launches queueing the
same point at once (the race ``enqueue_trial(skip_if_exists=True)`` documents) leave a twin that
is pruned before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import multiprocessing
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sidrec_core.config import apply_overrides, flatten, load_params
from sidrec_core.perf import code_state
from sidrec_core.stages import resolve_params
from sidrec_core.studies import dvc_run
from sidrec_core.studies.budget import TimeBudget
from sidrec_core.studies.profiles import get_dotted, load_profile, profile_path, with_overrides
from sidrec_core.studies.registry import get_study
from sidrec_core.studies.storage import (
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    WORKER,
    check_storage,
    fail_dead_trials,
    load_or_create,
    make_storage,
    study_journal,
    worker_id,
)
from sidrec_core.studies.study import (
    Study,
    grid_point,
    is_shared,
    level_spec,
    live_point,
    trial_level,
)
from sidrec_core.tracking import PARENT_ENV, start_run

log = logging.getLogger(__name__)
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
GRID_SEED = 0


@dataclasses.dataclass
class StudyOptions:
    """Everything a launch of ``bench/ablate.py --study NAME`` decides."""

    profile: str = "smoke"
    storage: str | None = None  # RDB URL or journal path; default <out_dir>/<study>/optuna.jsonl
    new_storage: bool = False  # create ``storage`` when it does not exist (--new-storage)
    n_seeds: int = 3
    workers: int = 1
    max_trials: int | None = None  # per worker and launch (None: until the grid is done)
    budget: TimeBudget = dataclasses.field(default_factory=TimeBudget)  # --time-budget
    out_dir: str = str(EXPERIMENTS_DIR)
    params_file: str = "params.yaml"
    sets: list[str] = dataclasses.field(default_factory=list)
    profiles_dir: str | None = None
    retry_failed: bool = True
    report: bool = True
    heartbeat_seconds: int = HEARTBEAT_SECONDS
    grace_seconds: int = GRACE_SECONDS

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
        """The storage at ``location``; a missing one is created for a study's own journal (the
        default) or with ``--new-storage``, never for a mistyped ``--storage``."""
        create = self.storage is None or self.new_storage
        return make_storage(location, self.heartbeat_seconds, self.grace_seconds, create=create)


def optuna_name(study: Study, profile: str) -> str:
    return f"{study.name}-{profile}"


def base_params(opts: StudyOptions) -> dict[str, Any]:
    """params file (missing: all defaults) + profile overrides + ``--set`` overrides."""
    path = Path(opts.params_file)
    params = load_params(path) if path.exists() else {}
    return apply_overrides(load_profile(opts.profile, params, opts.profiles_dir), opts.sets)


def seeds_for(params: dict[str, Any], n_seeds: int) -> list[int]:
    """``n_seeds`` consecutive seeds from ``base.seed``: a study's grid, a search's retrains."""
    first = int(get_dotted(params, "base.seed", 0))
    return [first + i for i in range(n_seeds)]


@contextlib.contextmanager
def parent_run(
    ostudy: optuna.Study, kind: str, params: dict[str, Any], profile: str, dataset: str, **kw: Any
) -> Iterator[Any]:
    """The MLflow parent run of a study or search (``kw``: run_name, tags), one across launches:
    its id is kept as the Optuna study's ``mlflow_parent_run_id``."""
    parent_id = ostudy.user_attrs.get("mlflow_parent_run_id")
    with start_run(
        kind, params, dataset=dataset, profile=profile, metrics_dir=None, run_id=parent_id, **kw
    ) as parent:
        if parent.run_id and parent.run_id != parent_id:
            ostudy.set_user_attr("mlflow_parent_run_id", parent.run_id)
        yield parent


def run_stages(
    trial: optuna.Trial,
    stages: tuple[tuple[str, ...], tuple[str, ...]],
    params: dict[str, Any],
    trial_dir: Path,
    objective: str,
    mlflow: dict[str, Any],
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The one trial path of a study and a search: the stages ``(run, reuse)`` through DVC under
    ``params``, in a nested MLflow run (``mlflow``: kind, profile, parent_run_id, run_name,
    tags) -> their metrics. A stage the trial's pruner stopped prunes the trial; any other error
    is kept on the trial (:func:`record_error`)."""
    kind = mlflow.pop("kind")
    dataset = str(get_dotted(params, "data.name", "?"))
    try:
        with start_run(kind, params, dataset=dataset, metrics_dir=None, **mlflow) as run:
            nest = {PARENT_ENV: run.run_id} if run.run_id else {}
            try:
                metrics = dvc_run.run_trial(*stages, params, trial_dir, {**(env or {}), **nest})
            except dvc_run.StageFailed as exc:
                pruned = [line for line in exc.lines if "TrialPruned: " in line]
                if pruned:  # the stage's own message: "pruned after epoch N"
                    raise optuna.TrialPruned(pruned[-1].split("TrialPruned: ")[-1]) from None
                raise
            if metrics.get(objective) is None:
                raise KeyError(
                    f"objective {objective!r} missing from the metrics of "
                    f"{'+'.join(stages[0])}; got: {', '.join(sorted(metrics))}"
                )
            run.record(**{k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    except optuna.TrialPruned:
        raise
    except Exception as exc:
        record_error(trial, exc)
        log.error("trial %d of %s failed: %s", trial.number, trial.study.study_name, exc)
        raise
    return metrics


def record_error(trial: optuna.Trial, exc: BaseException) -> None:
    """A failing trial's error and the tail of its traceback, as user attrs (the reports and
    MLflow show them)."""
    trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
    trial.set_user_attr("traceback", traceback.format_exc()[-4000:])


def open_study(
    study: Study, opts: StudyOptions, seeds: list[int], params: dict[str, Any] | None = None
) -> optuna.Study:
    """Create or load the Optuna study; grid points are queued by :func:`enqueue_missing`.
    With ``params``, records the dataset and the profile's overrides for the report."""
    ostudy = load_or_create(
        opts.open_storage(opts.storage_url_for(study.name)),
        optuna_name(study, opts.profile),
        study.direction,
        optuna.samplers.RandomSampler(seed=GRID_SEED),
    )
    attrs = {
        "factor": study.factor,
        "profile": opts.profile,
        "levels": study.labels,
        "default": study.default,
        "objective": study.objective,
        "seeds": seeds,
    }
    if params is not None:
        attrs["dataset"] = resolve_params(params)["data"]["name"]
        attrs["profile_overrides"] = profile_overrides(opts)
    for key, value in attrs.items():
        if ostudy.user_attrs.get(key) != value:  # a launch that changes nothing appends nothing
            ostudy.set_user_attr(key, value)
    return ostudy


def profile_overrides(opts: StudyOptions) -> dict[str, Any]:
    """What the profile file and ``--set`` change, as flat ``{dotted key: value}``."""
    over = flatten(load_params(profile_path(opts.profile, opts.profiles_dir)))
    for item in opts.sets:
        key, _, value = item.partition("=")
        over[key] = value
    return over


def enqueue_missing(
    ostudy: optuna.Study, study: Study, seeds: list[int], retry_failed: bool = True
) -> int:
    """Queue (``enqueue_trial``) every grid point with no COMPLETE, RUNNING or WAITING trial
    (nor a FAILED one, with ``retry_failed`` off), the default level's first: every level is
    tested against it, so a study stopped part-way still pairs what it finished, and a default
    another study shares is taken at once. Returns how many were queued."""
    taken = {TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING}
    if not retry_failed:
        taken.add(TrialState.FAIL)
    # a trial of a level redefined since it ran takes nothing: its point is queued again
    busy = {live_point(study, t) for t in ostudy.get_trials(deepcopy=False) if t.state in taken}
    queued = 0
    for level in [study.default, *(lv for lv in study.labels if lv != study.default)]:
        for seed in seeds:
            if (level, seed) not in busy:
                # level and seed are a user attribute, not suggested params: a categorical's
                # choices are fixed for the life of a study, and a new level or --n-seeds may
                # grow them
                ostudy.enqueue_trial({}, user_attrs={"grid_point": [level, seed]})
                queued += 1
    return queued


def progress(ostudy: optuna.Study, study: Study, seeds: list[int]) -> str:
    """``trial k/N`` and an ETA: the remaining grid points, each at the median duration of its
    level's finished trials that ran here (of all of them for a level none of whose trials ran;
    a trial whose figures were taken from another study took no time and says nothing)."""
    points, done = grid(ostudy, study, seeds)
    todo = [p for p in points if p not in done]
    text = f"trial {len(done) + 1}/{len(points)}"
    secs = ran_seconds(ostudy)
    if secs:
        levels = [level for level, _ in todo]
        median = {lv: float(np.median(ran_seconds(ostudy, lv))) for lv in set(levels)}
        left = sum(median[lv] for lv in levels)
        text += f", ETA {left / 60:.0f} min (median {np.median(secs):.0f} s a trial)"
    return text


def ran_seconds(ostudy: optuna.Study, level: str | None = None) -> list[float]:
    """Durations of the complete trials that ran here (not taken from another study). With
    ``level``: those of that level's trials, when any ran (levels can differ in cost many times
    over, one row per target against one per user), else all of them."""
    done = [
        t
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not is_shared(t)
    ]
    mine = [t for t in done if level is not None and trial_level(t) == level]
    return [(t.datetime_complete - t.datetime_start).total_seconds() for t in mine or done]


def next_level(ostudy: optuna.Study) -> str | None:
    """The level of the queued trial a worker runs next (Optuna takes the lowest-numbered
    WAITING trial); None when nothing is queued."""
    waiting = ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    return trial_level(min(waiting, key=lambda t: t.number)) if waiting else None


def grid(
    ostudy: optuna.Study, study: Study, seeds: list[int]
) -> tuple[list[tuple[str, int]], set[tuple[str, int]]]:
    """(the grid points, those with a complete trial), from one read of the storage. The grid is
    the points of ``seeds`` and those of any other seed that another launch (with a larger
    ``--n-seeds``) queued, runs or finished: a worker takes whatever is queued, so its progress
    counts them too. Level order, then seed."""
    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    live = [
        (t.state, live_point(study, t)) for t in ostudy.get_trials(deepcopy=False, states=states)
    ]
    points = {(lv, s) for lv in study.labels for s in seeds} | {p for _, p in live if p}
    done = {p for state, p in live if p and state == TrialState.COMPLETE}
    order = {lv: i for i, lv in enumerate(study.labels)}
    return sorted(points, key=lambda p: (order[p[0]], p[1])), done


def remaining(ostudy: optuna.Study, study: Study, seeds: list[int]) -> list[tuple[str, int]]:
    """Grid points (:func:`grid`) without a complete trial."""
    points, done = grid(ostudy, study, seeds)
    return [p for p in points if p not in done]


class Objective:
    """One trial: build the params of (level, seed), run the stages, return the objective.
    Picklable, so spawned workers get their own copy."""

    def __init__(
        self,
        study_name: str,
        params: dict[str, Any],
        seeds: list[int],
        opts: StudyOptions,
        parent_run_id: str | None,
    ):
        self.study_name = study_name
        self.params = params
        self.seeds = seeds
        self.opts = opts
        self.parent_run_id = parent_run_id

    def _duplicate(self, study: Study, trial: optuna.Trial, point: tuple[str, int]) -> bool:
        """Another worker queued the same point at the same time: the lower number runs it (a
        complete trial of the level's earlier definition does not count)."""
        for t in trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
        ):
            if t.number == trial.number:
                continue
            if t.state == TrialState.COMPLETE and live_point(study, t) == point:
                return True
            if t.state == TrialState.RUNNING and grid_point(t) == point and t.number < trial.number:
                return True
        return False

    def __call__(self, trial: optuna.Trial) -> float:
        study = get_study(self.study_name)
        point = grid_point(trial)
        if point is None:  # sampled, not queued: the grid was finished by another worker
            raise optuna.TrialPruned("no queued grid point left")
        label, seed = point
        if label not in study.labels:
            raise optuna.TrialPruned(f"level {label!r} is no longer in study {study.name}")
        if self._duplicate(study, trial, (label, seed)):
            raise optuna.TrialPruned(f"grid point ({label}, seed {seed}) taken by another trial")
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
        profile = self.opts.profile
        trial_dir = (
            Path(self.opts.out_dir)
            / study.name
            / profile
            / "trials"
            / f"{trial.number:04d}-{label}-s{seed}"
        )
        trial.set_user_attr("trial_dir", str(trial_dir))
        params_trial = with_overrides(
            self.params, {**study.fixed, "base.seed": seed, **study.level(label).overrides}
        )
        mlflow = {
            "kind": f"trial/{study.name}",
            "profile": profile,
            "parent_run_id": self.parent_run_id,
            "run_name": f"{study.name}/{label}/seed{seed}",
            "tags": {
                "study": study.name,
                "level": label,
                "seed": seed,
                "trial": trial.number,
                "factor": study.factor,
            },
        }
        stages = (study.run, study.reuse)
        metrics = run_stages(trial, stages, params_trial, trial_dir, study.objective, mlflow)
        # Headline figures as their own attrs (visible in optuna-dashboard), everything in one
        # "metrics" attr: one storage commit each, so keep their number small.
        for key in (*study.secondary, *(f"{st}/wall_seconds" for st in study.run)):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        trial.set_user_attr("metrics", metrics)
        return float(metrics[study.objective])


def _work(
    study_name: str,
    params: dict[str, Any],
    seeds: list[int],
    opts: StudyOptions,
    parent_run_id: str | None,
) -> None:
    """A worker: ``optimize`` over the queued trials, stopped when none is queued,
    ``max_trials`` ran or the next one would overrun the time budget (expected to last as long
    as its level's trials did)."""
    ostudy = open_study(get_study(study_name), opts, seeds)

    def go_on(s: optuna.Study) -> bool:
        level = next_level(s)
        return level is not None and opts.budget.allows(ran_seconds(s, level))

    if go_on(ostudy):
        ostudy.optimize(
            Objective(study_name, params, seeds, opts, parent_run_id),
            n_trials=opts.max_trials,
            catch=(Exception,),
            callbacks=[lambda s, _: go_on(s) or s.stop()],
        )


def run_study(name: str, opts: StudyOptions) -> dict[str, Any]:
    """Run (or resume) study ``name``; write its report. Returns a summary dict."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = get_study(name)
    params = base_params(opts)
    if study.setup:
        module, fn = study.setup.split(":")
        setup = getattr(importlib.import_module(module), fn)
        params = with_overrides(params, setup(params, Path(opts.out_dir)))
    seeds = seeds_for(params, opts.n_seeds)
    ostudy = open_study(study, opts, seeds, params)
    fail_dead_trials(ostudy)
    before = len(remaining(ostudy, study, seeds))
    queued = enqueue_missing(ostudy, study, seeds, opts.retry_failed)
    state = Counter(t.state for t in ostudy.get_trials(deepcopy=False))
    summary: dict[str, Any] = {
        "study": optuna_name(study, opts.profile),
        "storage": opts.storage_url_for(study.name),
        "grid_points": len(study.labels) * len(seeds),
        "remaining_before": before,
        "queued": queued,
    }
    if before == 0 and not queued and not state[TrialState.WAITING] + state[TrialState.RUNNING]:
        # nothing to run: the storage, the reports and MLflow stay as they are (a committed
        # study's files are tracked; an empty parent run would only clutter the UI)
        done = {"remaining_after": 0, "complete": state[TrialState.COMPLETE], "up_to_date": True}
        return summary | done
    with parent_run(
        ostudy,
        f"study/{study.name}",
        params,
        opts.profile,
        str(get_dotted(params, "data.name")),
        run_name=f"study/{optuna_name(study, opts.profile)}",
        tags={"study": study.name, "factor": study.factor},
    ) as parent:
        # --workers N: this process and N - 1 spawned ones, each an optimize on the one storage
        args = (name, params, seeds, opts, parent.run_id)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_work, args=args) for _ in range(opts.workers - 1)]
        for proc in procs:
            proc.start()
        _work(*args)
        for proc in procs:
            proc.join()
        trials = ostudy.get_trials(deepcopy=False)
        state = Counter(t.state for t in trials)
        # a point another machine's worker is running is not left undone: that worker ends it
        busy = {live_point(study, t) for t in trials if t.state == TrialState.RUNNING}
        left = remaining(ostudy, study, seeds)
        summary["remaining_after"] = sum(p not in busy for p in left)
        summary["running_elsewhere"] = sum(p in busy for p in left)
        summary["complete"] = state[TrialState.COMPLETE]
        summary["failed"] = state[TrialState.FAIL]
        summary["pruned_duplicates"] = state[TrialState.PRUNED]
        parent.record(**{k: v for k, v in summary.items() if isinstance(v, int)})
        if opts.report:
            from sidrec_core.studies.index import write_index
            from sidrec_core.studies.report import write_study_report

            paths = write_study_report(
                study, opts.storage_url_for(study.name), Path(opts.out_dir), opts.storage_url_for
            )
            write_index(Path(opts.out_dir))
            for path in paths:
                parent.log_artifact(path, artifact_path="report")
            summary["report"] = str(paths[0]) if paths else None
    return summary
