"""Optuna driver of the ablation studies: named studies in RDB storage, a seeded GridSampler
over (level x seed), resumable, parallel workers, one MLflow parent run per study and a nested
run per trial (optuna/optuna-examples; STYLE.md "Experiments").

Resume: a killed worker leaves its trial RUNNING; the next launch marks it FAIL (its pid is gone,
or, across machines, its heartbeat is stale) and the sampler offers again every grid point without
a complete trial, so only the remaining trials run. Two workers never duplicate a grid point:
trial numbers below the grid size map one-to-one to grid points (GridSampler), and a trial that
lands on a point already complete or running elsewhere is pruned as a duplicate before any work.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import logging
import multiprocessing
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.config import apply_overrides, load_params
from sidrec_core.studies.execute import execute_trial
from sidrec_core.studies.profiles import get_dotted, load_profile, with_overrides
from sidrec_core.studies.registry import Study, get_study
from sidrec_core.studies.stages import STAGES
from sidrec_core.tracking import start_run

log = logging.getLogger(__name__)
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
GRID_SEED = 0  # the same in every worker: fixes the grid's shuffle order


@dataclasses.dataclass
class StudyOptions:
    """Everything a launch of ``bench/ablate.py --study NAME`` decides."""

    profile: str = "smoke"
    storage: str | None = None  # default sqlite:///<out_dir>/optuna.db
    n_seeds: int = 3
    workers: int = 1
    max_trials: int | None = None  # per worker and launch (None: until the grid is done)
    out_dir: str = str(EXPERIMENTS_DIR)
    cache_dir: str | None = None  # default <out_dir>/cache
    params_file: str = "params.yaml"
    sets: list[str] = dataclasses.field(default_factory=list)
    profiles_dir: str | None = None
    retry_failed: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"--n-seeds must be >= 1, got {self.n_seeds}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out_dir).resolve() / 'optuna.db'}"

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir or Path(self.out_dir) / "cache")


def optuna_name(study: Study, profile: str) -> str:
    return f"{study.name}-{profile}"


def make_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage; SQLite waits on locks (several local workers), heartbeats fail dead trials
    of workers on other machines (PostgreSQL URL)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(
        url, engine_kwargs=kwargs, heartbeat_interval=60, grace_period=600
    )


def base_params(opts: StudyOptions) -> dict[str, Any]:
    """params file (missing: all defaults) + profile overrides + ``--set`` overrides."""
    path = Path(opts.params_file)
    params = load_params(path) if path.exists() else {}
    return apply_overrides(load_profile(opts.profile, params, opts.profiles_dir), opts.sets)


def seeds_for(params: dict[str, Any], n_seeds: int) -> list[int]:
    first = int(get_dotted(params, "base.seed", 0))
    return [first + i for i in range(n_seeds)]


class ResumableGridSampler(optuna.samplers.GridSampler):
    """GridSampler over (level x seed) that retries, in a later launch, grid points whose trial
    failed (a killed worker, a fixed bug), never in the launch where they failed (no retry loop).

    Visited = a COMPLETE, PRUNED or RUNNING trial, or a FAIL since this launch began (any FAIL
    when ``retry_failed`` is off). Unlike the base class it never falls back to re-sampling a
    running point; the objective prunes the rare race duplicate instead.
    """

    def __init__(self, search_space: dict[str, list[Any]], seed: int, retry_failed: bool = True):
        super().__init__(search_space, seed=seed)
        self._since = datetime.datetime.now() if retry_failed else datetime.datetime.min

    def _get_unvisited_grid_ids(self, study: optuna.Study) -> list[int]:
        visited = set()
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if "grid_id" not in t.system_attrs or not self._same_search_space(
                t.system_attrs["search_space"]
            ):
                continue
            started = t.datetime_start or self._since
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) or (
                t.state == TrialState.FAIL and started >= self._since
            ):
                visited.add(t.system_attrs["grid_id"])
        return sorted(set(range(self._n_min_trials)) - visited)

    def unvisited(self, study: optuna.Study) -> int:
        """Grid points no trial of this launch will find taken."""
        return len(self._get_unvisited_grid_ids(study))


def open_study(study: Study, opts: StudyOptions, seeds: list[int]) -> optuna.Study:
    sampler = ResumableGridSampler(
        {"level": study.labels, "seed": seeds}, seed=GRID_SEED, retry_failed=opts.retry_failed
    )
    ostudy = optuna.create_study(
        storage=make_storage(opts.storage_url),
        sampler=sampler,
        study_name=optuna_name(study, opts.profile),
        direction=study.direction,
        load_if_exists=True,
    )
    for key, value in {
        "factor": study.factor,
        "profile": opts.profile,
        "levels": study.labels,
        "default": study.default,
        "objective": study.objective,
        "seeds": seeds,
    }.items():
        ostudy.set_user_attr(key, value)
    return ostudy


def _point(t: optuna.trial.FrozenTrial) -> tuple[str, int] | None:
    if "level" not in t.params or "seed" not in t.params:
        return None
    return (t.params["level"], int(t.params["seed"]))


def _pid_alive(worker: str | None) -> bool:
    if not worker or ":" not in worker:
        return True  # unknown owner: leave it to the heartbeat
    host, pid = worker.rsplit(":", 1)
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def recover(ostudy: optuna.Study) -> dict[str, int]:
    """Mark FAIL the RUNNING trials whose worker process on this host is gone (killed), so
    the sampler offers their grid points again; trials of live or remote workers are left to
    the storage heartbeat."""
    storage = ostudy._storage
    interrupted = 0
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _pid_alive(t.user_attrs.get("worker")):
            storage.set_trial_user_attr(t._trial_id, "error", "interrupted: worker process gone")
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            interrupted += 1
    return {"interrupted": interrupted}


def remaining(ostudy: optuna.Study, study: Study, seeds: list[int]) -> list[tuple[str, int]]:
    """Grid points without a complete trial."""
    done = {_point(t) for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    return [(lv, s) for lv in study.labels for s in seeds if (lv, s) not in done]


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

    def _duplicate(self, trial: optuna.Trial, point: tuple[str, int]) -> bool:
        me = trial.number
        for t in trial.study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)
        ):
            if (
                t.number != me
                and _point(t) == point
                and (t.state == TrialState.COMPLETE or t.number < me)
            ):
                return True
        return False

    def __call__(self, trial: optuna.Trial) -> float:
        study = get_study(self.study_name)
        label = trial.suggest_categorical("level", study.labels)
        seed = trial.suggest_categorical("seed", self.seeds)
        if self._duplicate(trial, (label, seed)):
            raise optuna.TrialPruned(f"grid point ({label}, seed {seed}) taken by another trial")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        profile = self.opts.profile
        trial_dir = (
            Path(self.opts.out_dir)
            / study.name
            / profile
            / "trials"
            / f"{trial.number:04d}-{label}-s{seed}"
        )
        trial.set_user_attr("trial_dir", str(trial_dir))
        params_up = with_overrides(self.params, {**study.fixed, "base.seed": seed})
        params_trial = with_overrides(params_up, study.level(label).overrides)
        try:
            with start_run(
                f"trial/{study.name}",
                params_trial,
                dataset=str(get_dotted(params_trial, "data.name", "?")),
                profile=profile,
                metrics_dir=None,
                parent_run_id=self.parent_run_id,
                run_name=f"{study.name}/{label}/seed{seed}",
                tags={
                    "study": study.name,
                    "level": label,
                    "seed": seed,
                    "trial": trial.number,
                    "factor": study.factor,
                },
            ) as run:
                metrics = execute_trial(
                    study.run, study.reuse, params_up, params_trial, trial_dir, self.opts.cache_root
                )
                if metrics.get(study.objective) is None:
                    raise KeyError(
                        f"objective {study.objective!r} missing from the metrics of "
                        f"{'+'.join(study.run)}; got: {', '.join(sorted(metrics))}"
                    )
                run.record(**{k: v for k, v in metrics.items() if not isinstance(v, str)})
            # Headline figures as their own attrs (visible in optuna-dashboard), everything in
            # one "metrics" attr: one storage commit each, so keep their number small.
            for key in (*study.secondary, *(f"{st}/wall_seconds" for st in study.run)):
                if key in metrics:
                    trial.set_user_attr(key, metrics[key])
            trial.set_user_attr("metrics", metrics)
            return float(metrics[study.objective])
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            log.error("trial %d (%s, seed %d) failed: %s", trial.number, label, seed, exc)
            raise


def _work(
    study_name: str,
    params: dict[str, Any],
    seeds: list[int],
    opts: StudyOptions,
    parent_run_id: str | None,
) -> None:
    """A worker: take trials until the grid is done (or ``max_trials``)."""
    study = get_study(study_name)
    ostudy = open_study(study, opts, seeds)
    objective = Objective(study_name, params, seeds, opts, parent_run_id)
    count = 0
    while ostudy.sampler.unvisited(ostudy):
        if opts.max_trials is not None and count >= opts.max_trials:
            break
        ostudy.optimize(objective, n_trials=1, catch=(Exception,))
        count += 1


def check_stages(study: Study) -> None:
    """Import every stage the study needs; raise naming the first missing module."""
    for name in (*study.reuse, *study.run):
        STAGES[name].load()


def run_study(name: str, opts: StudyOptions) -> dict[str, Any]:
    """Run (or resume) study ``name``; write its report. Returns a summary dict."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = get_study(name)
    check_stages(study)
    params = base_params(opts)
    if study.setup:
        module, fn = study.setup.split(":")
        setup = getattr(importlib.import_module(module), fn)
        params = with_overrides(params, setup(params, Path(opts.out_dir)))
    seeds = seeds_for(params, opts.n_seeds)
    ostudy = open_study(study, opts, seeds)
    recovered = recover(ostudy)
    before = len(remaining(ostudy, study, seeds))
    parent_id = ostudy.user_attrs.get("mlflow_parent_run_id")
    with start_run(
        f"study/{study.name}",
        params,
        dataset=str(get_dotted(params, "data.name")),
        profile=opts.profile,
        metrics_dir=None,
        run_id=parent_id,
        run_name=f"study/{optuna_name(study, opts.profile)}",
        tags={"study": study.name, "factor": study.factor},
    ) as parent:
        if parent.run_id and not parent_id:
            ostudy.set_user_attr("mlflow_parent_run_id", parent.run_id)
        if opts.workers == 1:
            _work(name, params, seeds, opts, parent.run_id)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [
                ctx.Process(target=_work, args=(name, params, seeds, opts, parent.run_id))
                for _ in range(opts.workers)
            ]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
        trials = ostudy.get_trials(deepcopy=False)
        summary = {
            "study": optuna_name(study, opts.profile),
            "storage": opts.storage_url,
            "grid_points": len(study.labels) * len(seeds),
            "remaining_before": before,
            "remaining_after": len(remaining(ostudy, study, seeds)),
            "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "pruned_duplicates": sum(t.state == TrialState.PRUNED for t in trials),
            **recovered,
        }
        parent.record(**{k: v for k, v in summary.items() if isinstance(v, int)})
        if opts.report:
            from sidrec_core.studies.report import write_index, write_study_report

            paths = write_study_report(study, opts.storage_url, Path(opts.out_dir))
            write_index(opts.storage_url, Path(opts.out_dir))
            for path in paths:
                parent.log_artifact(path, artifact_path="report")
            summary["report"] = str(paths[0]) if paths else None
    return summary
