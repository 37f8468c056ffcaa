"""Tuning mode: a seeded TPE search over a model's declared space (:mod:`~.spaces`) on the ablation
machinery (:func:`~.runner.run_stages`: DVC stages, nested MLflow runs, resume).

The objective is ``valid/ndcg@10``, reported at every validation so the pruner (median, Hyperband)
stops weak trials, never before a quarter of their epochs. Every model gets the same budget of
finished (complete + pruned) trials (``MaxTrialsCallback``); concurrent workers sample apart (TPE's
constant liar). The published starts, then the launch's default, are queued first. The best trial
and the default are retrained over the same seeds, each seed a queued trial of the sibling study
``<search>-retrain``, and compared pairwise; the best overrides are written as a params file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from sidrec_core.callbacks import Callback
from sidrec_core.config import flatten
from sidrec_core.metrics import OBJECTIVE
from sidrec_core.metrics import TEST_KEYS as STUDY_TEST_KEYS
from sidrec_core.stages import resolve_params
from sidrec_core.stages.context import TRIAL_ENV
from sidrec_core.studies import dvc_run
from sidrec_core.studies.budget import trial_seconds
from sidrec_core.studies.profiles import get_dotted, with_overrides
from sidrec_core.studies.runner import (
    StudyOptions,
    base_params,
    optimize_while,
    parent_run,
    run_stages,
    seeds_for,
)
from sidrec_core.studies.spaces import Tunable, get_tunable
from sidrec_core.studies.storage import (
    JOURNAL,
    WORKER,
    check_storage,
    fail_dead_trials,
    is_journal,
    load_or_create,
    make_storage,
    read_storage,
    worker_id,
)

log = logging.getLogger(__name__)
PRUNER = "pruner"  # trial user attr: the pruner the trial ran under
START = "start"  # trial user attr: why the trial was queued rather than sampled
DEFAULT_START = "the launch's default (params.yaml with the profile and --set overrides applied)"
DUPLICATE_OF = "duplicate_of"  # trials of older searches pruned as twins of a running trial
TEST_KEYS = STUDY_TEST_KEYS[::-1]  # hr@5 first: the tuning tables' column order
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # the states the budget counts
WARMUP_FRACTION = 0.25  # no trial is pruned before this share of its epochs
RETRAINED = {"best": "retrain", "default": "retrain_default"}  # folder per configuration


@dataclasses.dataclass
class TuneOptions(StudyOptions):
    """A tuning launch: ``n_trials`` finished trials in all (resumable), pruner, retrain seeds."""

    n_trials: int = 20
    pruner: str = "median"  # median | hyperband | none
    retrain_seeds: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_trials < 1 or self.retrain_seeds < 1:
            raise ValueError("--n-trials and --retrain-seeds must be >= 1")
        if self.pruner not in ("median", "hyperband", "none"):
            raise ValueError(f"--pruner must be median|hyperband|none, got {self.pruner!r}")

    def folder(self, model: str) -> Path:
        return Path(self.out_dir) / "tune" / model

    def tune_storage(self, model: str) -> str:
        return self.storage or str(self.folder(model).resolve() / JOURNAL)


def first_prunable_epoch(epochs: int) -> int:
    """A quarter of the training, at least epoch 3: on a decaying schedule a smaller learning
    rate starts slower and may finish higher, and an earlier cut prunes exactly those trials."""
    return max(3, math.ceil(WARMUP_FRACTION * epochs))


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """The ``--pruner`` for trials of ``epochs`` epochs (steps are epoch numbers, from 1)."""
    first = first_prunable_epoch(epochs)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=max(epochs, first))
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=first)


def pruner_text(name: str, epochs: int) -> str:
    first = first_prunable_epoch(epochs)
    return "none" if name == "none" else f"{name}, from epoch {first} of {epochs}"


def trial_epochs(tun: Tunable, params: dict[str, Any]) -> int:
    return int(flatten(resolve_params(params))[tun.epochs_key]) if tun.epochs_key else 0


def longest_training(tun: Tunable, params: dict[str, Any]) -> int:
    """The most epochs a sampled trial may train: the top of the space's epochs domain, else the
    launch's (1 for a model without ``epochs_key``: a trial is then one unit of cost)."""
    top = [max(p.choices) if p.choices else p.high for p in tun.space if p.key == tun.epochs_key]
    return int(top[0]) if top else max(trial_epochs(tun, params), 1)


def epoch_seconds(tun: Tunable, t: optuna.trial.FrozenTrial, params: dict[str, Any]) -> float:
    """A complete trial's seconds per epoch it trained, its last reported epoch (early stopping
    ends some before their count); the whole trial for a model without ``epochs_key``."""
    if not tun.epochs_key:
        return trial_seconds(t)
    count = trial_epochs(tun, with_overrides(params, t.params))
    return trial_seconds(t) / max(max(t.intermediate_values, default=0) or count, 1)


def expected_seconds(
    tun: Tunable, ostudy: optuna.Study, params: dict[str, Any], point: dict | None = None
) -> list[float]:
    """What the time budget weighs before the next trial. A sampled trial's cost (width x epochs)
    is drawn only as it starts, so it is expected to run the space's longest training at the
    slowest epoch any trial ran; a given ``point`` (a retrain) costs what its trials cost at
    their own epochs, the sampled estimate where none ran."""
    done = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    same = [t for t in done if point is not None and t.params == point]
    if same:
        epochs = max(trial_epochs(tun, with_overrides(params, same[0].params)), 1)
        return [epoch_seconds(tun, t, params) * epochs for t in same]
    paces = [epoch_seconds(tun, t, params) for t in done]
    return [max(paces) * longest_training(tun, params)] if paces else []


def _finished(ostudy: optuna.Study) -> int:
    return len(ostudy.get_trials(deepcopy=False, states=FINISHED))


def enqueue_once(ostudy: optuna.Study, params: dict, attrs: dict) -> None:
    """Queue ``params`` unless a trial with ``attrs`` exists, again when every such trial failed
    (``skip_if_exists`` alone would leave a killed trial's point unmeasured)."""
    tried = [
        t.state
        for t in ostudy.get_trials(deepcopy=False)
        if all(t.user_attrs.get(k) == v for k, v in attrs.items())
    ]
    if not tried or all(s == TrialState.FAIL for s in tried):
        ostudy.enqueue_trial(params, user_attrs=attrs, skip_if_exists=not tried)


def queued_starts(tun: Tunable, params: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The published starts, then the launch's default when it is a new point of the space."""
    starts, default = list(tun.starts), tun.default_point(params)
    if default is None:
        log.info("%s: the launch's default lies outside the search space; not queued", tun.name)
    elif all(default != start for start, _ in starts):
        starts.append((default, DEFAULT_START))
    return starts


def open_search(
    tun: Tunable, opts: TuneOptions, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    """Create or resume the search. TPE's seed is ``base.seed`` + the trials stored: a fresh
    search is reproducible and a joining worker does not replay the first one's suggestions."""
    storage = opts.open_storage(opts.tune_storage(tun.name))
    name = f"tune-{tun.name}-{opts.profile}"
    stored = load_or_create(storage, name, "maximize", optuna.samplers.RandomSampler())
    params = base_params(opts)
    seed = int(get_dotted(params, "base.seed", 0)) + len(stored.get_trials(deepcopy=False))
    ostudy = optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=seed, constant_liar=True),
        pruner=pruner or make_pruner(opts.pruner, trial_epochs(tun, params)),
    )
    for start, source in queued_starts(tun, params):
        enqueue_once(ostudy, start, {START: source})
    return ostudy


class TrialPruning(Callback):
    """In a stage's process: reports ``valid/ndcg@10`` of each validation to the trial ``spec``
    names (storage, study, trial, pruner, epochs) and raises TrialPruned when pruned."""

    def __init__(self, spec: dict[str, Any]):
        storage = make_storage(spec["storage"])
        pruner = make_pruner(spec["pruner"], int(spec["epochs"]))
        study = optuna.load_study(study_name=spec["study"], storage=storage, pruner=pruner)
        study_id = storage.get_study_id_from_name(spec["study"])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(spec["trial"]))
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, epoch: int, record: dict[str, float]) -> None:
        if OBJECTIVE in record:
            self.trial.report(float(record[OBJECTIVE]), epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")


class TuneObjective:
    """One trial: suggest the overrides, run the model's stages with per-epoch reporting."""

    def __init__(self, tun: Tunable, params: dict[str, Any], opts: TuneOptions, parent: str | None):
        self.tun, self.params, self.opts, self.parent = tun, params, opts, parent
        self.epochs = trial_epochs(tun, params)

    def __call__(self, trial: optuna.Trial) -> float:
        tun, opts = self.tun, self.opts
        overrides = tun.suggest(trial)
        trial.set_user_attr(PRUNER, pruner_text(opts.pruner, self.epochs))
        trial.set_user_attr(WORKER, worker_id())
        trial_dir = opts.folder(tun.name) / opts.profile / "trials" / f"{trial.number:04d}"
        # the stages run in DVC's processes and report each validation to this trial
        spec = {"storage": opts.tune_storage(tun.name), "study": trial.study.study_name}
        spec |= {"trial": trial.number, "pruner": opts.pruner, "epochs": self.epochs}
        mlflow = {
            "kind": f"tune/{tun.name}",
            "profile": opts.profile,
            "parent_run_id": self.parent,
            "run_name": f"tune-{tun.name}/{trial.number}",
            "tags": {"tune": tun.name, "trial": trial.number},
        }
        params, env = with_overrides(self.params, overrides), {TRIAL_ENV: json.dumps(spec)}
        metrics = run_stages(trial, (tun.run, tun.reuse), params, trial_dir, OBJECTIVE, mlflow, env)
        for key in (*TEST_KEYS, "wall_seconds", *tun.secondary):
            if key in metrics:
                trial.set_user_attr(key, metrics[key])
        return float(metrics[OBJECTIVE])


def open_retrains(tun: Tunable, opts: TuneOptions) -> optuna.Study:
    """The sibling study ``tune-<model>-<profile>-retrain``: one trial per retrained seed."""
    name, sampler = f"tune-{tun.name}-{opts.profile}-retrain", optuna.samplers.RandomSampler()
    return load_or_create(opts.open_storage(opts.tune_storage(tun.name)), name, "maximize", sampler)


def retrain_point(which: str, seed: int, overrides: dict[str, Any]) -> dict[str, Any]:
    """What a retrain trial runs (its queued params and user attributes)."""
    return {"config": which, "seed": seed, "overrides": json.dumps(overrides, sort_keys=True)}


def retrained(retrains: optuna.Study, which: str, overrides: dict) -> dict[str, dict[str, float]]:
    """{seed: objective + test metrics} of the complete retrains of ``which`` with ``overrides``."""
    return {
        str(t.user_attrs["seed"]): t.user_attrs["metrics"]
        for t in retrains.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("config") == which
        and json.loads(t.user_attrs["overrides"]) == overrides
    }


def retrain(
    tun: Tunable, ostudy: optuna.Study, params: dict, opts: TuneOptions, which: str = "best"
) -> dict[str, dict[str, float]]:
    """Retrain the best trial's overrides or the ``default`` over ``opts.retrain_seeds`` seeds ->
    {seed: objective + test metrics}; each seed a queued trial any worker takes (from the cache
    where a trial ran its stages); a seed that would overrun the time budget waits."""
    overrides = ostudy.best_trial.params if which == "best" else {}
    retrains = open_retrains(tun, opts)
    fail_dead_trials(retrains, journal=is_journal(opts.tune_storage(tun.name)))
    for seed in seeds_for(params, opts.retrain_seeds):
        point = retrain_point(which, seed, overrides)
        enqueue_once(retrains, point, point)

    def run(trial: optuna.Trial) -> float:  # whichever queued seed the storage hands over
        if "config" not in trial.user_attrs:  # sampled, not queued: another worker took the last
            raise optuna.TrialPruned("no queued retrain left")
        trial.set_user_attr(WORKER, worker_id())
        config, seed = trial.user_attrs["config"], int(trial.user_attrs["seed"])
        over = {"base.seed": seed, **json.loads(trial.user_attrs["overrides"])}
        folder = opts.folder(tun.name) / opts.profile / RETRAINED[config] / f"s{seed}"
        metrics = dvc_run.run_trial(tun.run, tun.reuse, with_overrides(params, over), folder)
        kept = {k: metrics[k] for k in (OBJECTIVE, *TEST_KEYS, *tun.secondary) if k in metrics}
        trial.set_user_attr("metrics", kept)
        return float(metrics[OBJECTIVE])

    point = overrides if which == "best" else tun.default_point(params)
    cost = expected_seconds(tun, ostudy, params, point or {})

    def more(study: optuna.Study) -> bool:  # a queued seed, and time to run it
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        return bool(waiting) and opts.budget.allows(cost, "retrain")

    optimize_while(retrains, run, more)
    return retrained(retrains, which, overrides)


def best_is_default(ostudy: optuna.Study, params: dict[str, Any]) -> bool:
    """Whether the best trial's params are the launch's defaults (nothing to compare)."""
    resolved = flatten(resolve_params(params))
    return all(resolved.get(k) == v for k, v in ostudy.best_trial.params.items())


def open_report(name: str, opts: TuneOptions) -> tuple[Tunable, optuna.Study, dict[str, Any]]:
    """(the model, its stored search, the launch's params): what the report reads."""
    tun, location = get_tunable(name), opts.tune_storage(name)
    check_storage(location, flag="--storage" if opts.storage else "the search's storage")
    storage = read_storage(location)
    ostudy = optuna.load_study(study_name=f"tune-{name}-{opts.profile}", storage=storage)
    return tun, ostudy, base_params(opts)


def run_tuning(name: str, opts: TuneOptions) -> dict[str, Any]:
    """Run (or resume) the search for model ``name``, retrain the best, write the report."""
    from sidrec_core.studies.tune_report import write_tune_report

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tun, params = get_tunable(name), base_params(opts)
    ostudy = open_search(tun, opts)
    fail_dead_trials(ostudy, journal=is_journal(opts.tune_storage(tun.name)))
    before = _finished(ostudy)
    kw = {"run_name": f"tune/{name}-{opts.profile}", "tags": {"tune": name}}
    with parent_run(ostudy, f"tune/{name}", params, opts.profile, **kw) as parent:
        why = None
        if _finished(ostudy) < opts.n_trials:
            callbacks = (
                optuna.study.MaxTrialsCallback(opts.n_trials, FINISHED),
                lambda study, trial: log.info(progress_line(study, opts.n_trials, trial)),
            )
            objective = TuneObjective(tun, params, opts, parent.run_id)
            what = "trial (the slowest epoch seen x the space's longest training)"
            time_left = lambda study: opts.budget.allows(  # noqa: E731
                expected_seconds(tun, study, params), what
            )
            why = optimize_while(ostudy, objective, time_left, opts.max_trials, callbacks)
        summary: dict[str, Any] = {
            "study": ostudy.study_name,
            "storage": opts.tune_storage(name),
            "finished_before": before,
            "finished": _finished(ostudy),
            "pruned": len(ostudy.get_trials(deepcopy=False, states=(TrialState.PRUNED,))),
            "failed": len(ostudy.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        }
        if why:
            summary["stopped_on_failures"] = why
        complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete and _finished(ostudy) >= opts.n_trials:
            summary["retrain"] = retrain(tun, ostudy, params, opts, "best")
            if not best_is_default(ostudy, params):
                summary["retrain_default"] = retrain(tun, ostudy, params, opts, "default")
        if complete:
            summary |= {"best_value": ostudy.best_value, "best_params": ostudy.best_params}
            if opts.report:
                paths = write_tune_report(tun, ostudy, params, opts)
                summary["report"] = str(paths[0])
                for path in paths:
                    parent.log_artifact(path, artifact_path="tune")
        parent.record(**{k: v for k, v in summary.items() if isinstance(v, (int, float))})
    return summary


def progress_line(
    ostudy: optuna.Study, budget: int, trial: optuna.trial.FrozenTrial | None = None
) -> str:
    """After a trial: its (default: the newest's) state and value, the best so far, finished of
    ``budget``, ETA (median duration of the finished trials times those left)."""
    trials = ostudy.get_trials(deepcopy=False)
    last = trial or trials[-1]
    done = [t.duration.total_seconds() for t in trials if t.state in FINISHED and t.duration]
    left = max(budget - _finished(ostudy), 0)
    eta = f"{statistics.median(done) * left / 60:.0f} min" if done else "unknown"
    value = "—" if last.value is None else f"{last.value:.4f}"
    try:
        best = f"{ostudy.best_value:.4f} (#{ostudy.best_trial.number})"
    except ValueError:  # no complete trial yet
        best = "—"
    return (
        f"{ostudy.study_name}: trial #{last.number} {last.state.name.lower()} {value}; "
        f"best {best}; finished {_finished(ostudy)}/{budget}; ETA {eta}"
    )


def best_overrides_yaml(params: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the best overrides applied: a full params file for ``--params``."""
    out = with_overrides(params, best)
    out.setdefault("base", {}).pop("profile", None)
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}
