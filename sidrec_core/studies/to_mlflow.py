"""Rebuild MLflow from the committed study storage: ``bench/ablate.py --study all --to-mlflow``
and ``bench/tune.py --to-mlflow``.

The findings live in the committed Optuna storage; ``mlflow.db`` is local and not committed. This
module reads each storage through Optuna's public API only (:func:`open_storage` is the one place
that knows how a study folder holds its storage) and writes, through
:func:`sidrec_core.tracking.sync_runs`, one MLflow experiment per study folder
(``findings/<study>``, ``findings/tune/<model>``) holding one parent run per study and profile
(the report and plot as artifacts, the report's section as its description) and one nested run
per trial: its params, every figure it stored (the headline first), tags for what the storage
recorded (study, level, seed, profile, dataset, the trial's stage fingerprint ``trial_key``,
``shared_from``, the level's overrides) and ``not recorded`` for what it did not (the code
commit, before trials stored it), plus ``landed_in`` from the provenance sidecar (the first
commit whose storage held the trial: an upper bound on its code, never its commit). It runs
nothing and is idempotent: every run carries a stable key (``<folder label>:<optuna
study>#<trial number>``) and an unchanged run is left alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sidrec_core.metrics import HEADLINE
from sidrec_core.studies.index import last_commit
from sidrec_core.studies.provenance import LANDED_IN, read_backfill, trial_key_of
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import report_sections, scalar_attrs
from sidrec_core.studies.storage import JOURNAL, read_storage
from sidrec_core.studies.study import trial_level, trial_seed
from sidrec_core.studies.tuning import RETRAINED
from sidrec_core.tracking import RunRecord, headline_first, saved_view, sync_runs

EXPERIMENT_PREFIX = "findings/"
NOT_RECORDED = "not recorded"
STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.FAIL: "FAILED",
    TrialState.PRUNED: "KILLED",
    TrialState.WAITING: "SCHEDULED",
    TrialState.RUNNING: "RUNNING",
}
# user attrs that are bookkeeping, not figures or provenance
SKIP_ATTRS = {"duplicate_of"}
ARTIFACT_SUFFIXES = (".md", ".png", ".yaml")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def open_storage(folder: Path) -> str | None:
    """The committed storage of the study kept in ``folder`` (anything ``optuna.load_study``
    accepts as ``storage``), or None when the folder holds none."""
    path = Path(folder) / JOURNAL
    return read_storage(str(path.resolve())) if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Source:
    """A study folder and its storage: ``label`` names it (``tokenizer``, ``tune/sidlm``)."""

    label: str
    folder: Path
    storage: Any
    prefix: str  # the Optuna studies of this source: ``<study>-<profile>``, ``tune-<model>-``
    tuning: bool = False


def study_sources(out_dir: Path, names: Iterable[str], storage: Any = None) -> list[Source]:
    """The ablation studies ``names`` that have a storage (``storage``: one given for all)."""
    out = []
    for name in names:
        folder = Path(out_dir) / name
        found = storage or open_storage(folder)
        if found is not None:
            out.append(Source(name, folder, found, f"{name}-"))
    return out


def tune_sources(out_dir: Path, models: Iterable[str], storage: Any = None) -> list[Source]:
    """Each model's search under ``<out_dir>/tune/<model>`` and any search kept in a subfolder
    of it (e.g. a confirmatory retrain's copy, ``tune/sidlm/confirm``)."""
    out = []
    for model in models:
        root = Path(out_dir) / "tune" / model
        folders = [root, *sorted(p for p in root.glob("*") if p.is_dir())]
        for folder in folders:
            found = storage if storage and folder == root else open_storage(folder)
            if found is not None:
                label = folder.relative_to(Path(out_dir)).as_posix()
                out.append(Source(label, folder, found, f"tune-{model}-", tuning=True))
    return out


def _ms(when: dt.datetime | None) -> int | None:
    """Optuna stores naive local times; read as UTC so a rebuild gives the same times anywhere."""
    return None if when is None else int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _figures(values: dict[str, float], objective: str) -> dict[str, float]:
    """The finite ``values``, the headline first and the rest sorted."""
    finite = {k: v for k, v in values.items() if math.isfinite(v)}
    return {k: finite[k] for k in headline_first(sorted(finite), objective)}


def trial_metrics(trial: FrozenTrial, objective: str) -> dict[str, float]:
    """Every figure the trial stored, the objective as its value (:func:`_figures` order)."""
    figures = {k: v for k, v in scalar_attrs(trial.user_attrs).items() if k not in SKIP_ATTRS}
    if trial.value is not None:
        figures[objective] = float(trial.value)
    return _figures(figures, objective)


def _param(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def trial_tags(trial: FrozenTrial, base: dict[str, str]) -> dict[str, str]:
    """Provenance the trial recorded; ``not recorded`` where it recorded none."""
    stored = trial.user_attrs.get("metrics") or {}
    tags = {
        **base,
        "sidrec.kind": "trial",
        "trial": str(trial.number),
        "state": trial.state.name,
        "commit": NOT_RECORDED,
        "trial_key": str(stored.get("trial_key", NOT_RECORDED)),
    }
    code = trial.user_attrs.get("provenance") or {}
    if "commit" in code:
        dirty = " (dirty)" if code.get("worktree_dirty") else ""
        tags["commit"] = f"{code['commit']}{dirty}"
    tags.update({k.replace("/", "."): str(v) for k, v in stored.items() if k.startswith("sha256/")})
    for key in ("shared_from", "worker", "start", "pruner", "duplicate_of", "restored"):
        value = stored.get(key, trial.user_attrs.get(key))
        if value is not None:
            tags[key] = str(value)
    if "level_spec" in trial.user_attrs:
        tags["level_spec"] = json.dumps(trial.user_attrs["level_spec"], sort_keys=True)
    if "error" in trial.user_attrs:
        tags["error"] = str(trial.user_attrs["error"])[:1000]
    return tags


def headline_keys(keys: Iterable[str], objective: str) -> list[str]:
    """Of ``keys``: test NDCG@10, the objective, test HR@10 (a model's prefixed keys count), in
    :func:`headline_first` order."""
    order = headline_first(sorted(keys), objective)
    return [k for k in order if k == objective or k.endswith(HEADLINE)]


def _headline_text(metrics: dict[str, float], objective: str) -> str:
    shown = headline_keys(metrics, objective)
    return "; ".join(f"{k} = {metrics[k]:.4f}" for k in shown) or "no figures stored"


def trial_record(
    trial: FrozenTrial, source: str, name: str, objective: str, **fields: Any
) -> RunRecord:
    """The run of one stored trial: key ``<source>#<number>``, its figures (headline first),
    state, times and a one-line description; ``fields`` adds tags, params and history."""
    metrics = trial_metrics(trial, objective)
    return RunRecord(
        key=f"{source}#{trial.number}",
        name=name,
        metrics=metrics,
        status=STATUS[trial.state],
        start_ms=_ms(trial.datetime_start),
        end_ms=_ms(trial.datetime_complete),
        description=f"Trial #{trial.number} ({trial.state.name.lower()}): "
        + _headline_text(metrics, objective),
        **fields,
    )


def ablation_trial(
    trial: FrozenTrial,
    label: str,
    ostudy_name: str,
    base: dict[str, str],
    objective: str,
    landed_in: str | None = None,
) -> RunRecord:
    """One ablation trial: params are its level and seed and the overrides it recorded;
    ``landed_in`` (from the provenance sidecar) is the first commit whose storage held it, an
    upper bound on the code it ran, tagged as such and never as its ``commit``."""
    level, seed = trial_level(trial), trial_seed(trial)
    spec = trial.user_attrs.get("level_spec") or {}
    params = {"level": str(level), "seed": str(seed)}
    for part in ("fixed", "level"):
        params.update({k: _param(v) for k, v in (spec.get(part) or {}).items()})
    tags = trial_tags(trial, {**base, "level": str(level), "seed": str(seed)})
    if landed_in:
        tags[LANDED_IN] = landed_in
    return trial_record(
        trial,
        f"{label}:{ostudy_name}",
        f"{base['study']}/{level}/seed{seed}",
        objective,
        tags=tags,
        params=params,
    )


def tuning_trial(
    trial: FrozenTrial, label: str, ostudy_name: str, base: dict[str, str], objective: str
) -> RunRecord:
    """One search trial: its sampled params; the per-epoch validation it reported to the
    pruner as the series ``intermediate/<objective>``."""
    history = dict(trial.intermediate_values)
    return trial_record(
        trial,
        f"{label}:{ostudy_name}",
        f"{ostudy_name}/{trial.number}",
        objective,
        tags=trial_tags(trial, base),
        params={k: _param(v) for k, v in trial.params.items()},
        history={f"intermediate/{objective}": history} if history else {},
    )


def retrain_runs(
    ostudy: optuna.Study, storage: Any, label: str, base: dict[str, str], objective: str
) -> list[RunRecord]:
    """The search's retrains, one run per seed: the complete trials of its sibling study
    ``<search>-retrain`` (``config`` best: the best trial's overrides; default: the launch's)."""
    try:
        retrains = optuna.load_study(study_name=f"{ostudy.study_name}-retrain", storage=storage)
    except KeyError:
        return []
    out = []
    for t in retrains.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        which, seed = str(t.user_attrs["config"]), t.user_attrs["seed"]
        overrides = json.loads(t.user_attrs.get("overrides") or "{}")
        metrics = _figures(scalar_attrs(t.user_attrs["metrics"]), objective)
        point = {"retrain": which, "seed": str(seed)}
        out.append(
            RunRecord(
                key=f"{label}:{ostudy.study_name}/{RETRAINED.get(which, which)}/s{seed}",
                name=f"{ostudy.study_name}/retrain-{which}/s{seed}",
                tags={**base, "sidrec.kind": "retrain", **point, "commit": NOT_RECORDED},
                params={**point, **{k: _param(v) for k, v in overrides.items()}},
                metrics=metrics,
                description=f"Retrain of the {which} configuration, seed {seed}: "
                + _headline_text(metrics, objective),
            )
        )
    return out


def view_params(children: list[RunRecord], tuning: bool) -> list[str]:
    """The saved view's parallel-coordinates axes: an ablation's level, seed and the keys its
    levels set; a search's sampled params."""
    keys = sorted({k for c in children if c.tags["sidrec.kind"] == "trial" for k in c.params})
    if tuning:
        return keys
    return ["level", "seed", *(k for k in keys if k not in ("level", "seed"))]


def view_metrics(children: list[RunRecord], objective: str) -> list[str]:
    """The headline the trials stored: test NDCG@10, the objective, test HR@10 (or a model's
    prefixed keys), in :func:`headline_first` order."""
    return headline_keys({k for c in children for k in c.metrics}, objective) or [objective]


def artifacts(folder: Path, profile: str) -> tuple[tuple[Path, str], ...]:
    """The report and plots of ``profile`` kept in the study folder (and its notes)."""
    stems = {"report", f"report_{profile}", profile, "README", "NOTES"}
    return tuple(
        (path, "report")
        for path in sorted(folder.iterdir())
        if path.is_file()
        and path.suffix in ARTIFACT_SUFFIXES
        and (path.stem in stems or path.stem.startswith(f"{profile}_"))
    )


def description(source: Source, profile: str, objective: str, commit: str) -> str:
    """Where the runs come from (``commit``: the study folder's last), then the committed
    report's text for this profile (an ablation report's section, a search's whole report);
    MLflow renders it as markdown."""
    head = (
        f"Rebuilt from the committed storage of `{source.label}` (last changed in "
        f"{commit}); objective `{objective}`. The nested runs carry the "
        "stored figures; the report and plot are attached under `report/`.\n\n"
    )
    section = report_sections(source.folder / "report.md").get(profile, "")
    search_report = source.folder / f"report_{profile}.md"
    if not section and search_report.exists():
        section = search_report.read_text()
    # a report's images are files beside it: in MLflow they are the run's artifacts
    return head + IMAGE.sub(r"(plot: artifact `report/\2`)", section)


def rebuild_source(
    source: Source, uri: str | None, profiles: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """Sync every Optuna study (one per profile) of ``source`` into MLflow; one summary dict per
    study."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = set(profiles) if profiles else None
    summaries = optuna.get_all_study_summaries(source.storage, include_best_trial=False)
    commit = last_commit(source.folder)
    out = []
    for summary in sorted(summaries, key=lambda s: s.study_name):
        name = summary.study_name
        if not name.startswith(source.prefix) or (source.tuning and name.endswith("-retrain")):
            continue  # a search's retrain study is folded into the search's runs
        study = None if source.tuning else STUDIES.get(source.prefix[:-1])
        profile = name.removeprefix(source.prefix)
        if wanted is not None and profile not in wanted:
            continue
        ostudy = optuna.load_study(study_name=name, storage=source.storage)
        attrs = ostudy.user_attrs
        objective = study.objective if study else str(attrs.get("objective", "valid/ndcg@10"))
        base = {
            "study": source.prefix[:-1],
            "profile": profile,
            "dataset": str(attrs.get("dataset", NOT_RECORDED)),
            "objective": objective,
            "sidrec.source": source.label,
        }
        trials = ostudy.get_trials(deepcopy=False)
        if source.tuning:
            children = [tuning_trial(t, source.label, name, base, objective) for t in trials]
            children += retrain_runs(ostudy, source.storage, source.label, base, objective)
        else:
            base["factor"] = str(attrs.get("factor", study.factor if study else NOT_RECORDED))
            backfill = read_backfill(source.folder.parent)
            children = [
                ablation_trial(
                    t,
                    source.label,
                    name,
                    base,
                    objective,
                    (backfill.get(trial_key_of(name, t)) or {}).get(LANDED_IN),
                )
                for t in trials
            ]
        states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        parent_tags = {
            **base,
            "sidrec.kind": "search" if source.tuning else "study",
            "trials": ", ".join(f"{n} {s}" for s, n in states.items() if n),
            "findings_commit": commit,
        }
        for key in ("levels", "default", "seeds", "profile_overrides"):
            if key in attrs:
                parent_tags[key] = json.dumps(attrs[key], sort_keys=True)
        starts = [t.datetime_start for t in trials if t.datetime_start]
        ends = [t.datetime_complete for t in trials if t.datetime_complete]
        parent = RunRecord(
            key=f"{source.label}:{name}",
            name=f"{'tune' if source.tuning else 'study'}/{name}",
            tags=parent_tags,
            start_ms=_ms(min(starts)) if starts else None,
            end_ms=_ms(max(ends)) if ends else None,
            description=description(source, profile, objective, commit),
            artifacts=artifacts(source.folder, profile),
        )
        view = saved_view(
            profile,
            f"tags.`sidrec.kind` = 'trial' and tags.profile = '{profile}' "
            "and attributes.status = 'FINISHED'",
            view_params(children, source.tuning),
            view_metrics(children, objective),
            parent.end_ms or 0,
        )
        counts = sync_runs(
            f"{EXPERIMENT_PREFIX}{source.label}",
            parent,
            children,
            uri=uri,
            experiment_tags=dict([view]),
        )
        exp_id = counts.pop("experiment_id")
        out.append(
            {
                "study": name,
                "source": source.label,
                "runs": len(children),
                **counts,
                "view": f"#/experiments/{exp_id}/runs?viewStateShareKey={profile}"
                "&compareRunsMode=CHART",
            }
        )
    return out


def rebuild(
    sources: list[Source], uri: str | None, profiles: Iterable[str] | None = None
) -> list[dict[str, Any]]:
    """:func:`rebuild_source` over ``sources``."""
    return [row for source in sources for row in rebuild_source(source, uri, profiles)]


def main(sources: list[Source], uri: str | None) -> int:
    """The ``--to-mlflow`` command: rebuild, print one JSON line per Optuna study and the
    totals with the wall time."""
    import time

    from sidrec_core.tracking import tracking_uri

    started = time.perf_counter()
    rows = []
    for source in sources:
        for row in rebuild_source(source, uri):
            print(json.dumps(row), flush=True)
            rows.append(row)
    totals = {
        k: sum(r[k] for r in rows)
        for k in ("runs", "created", "updated", "replaced", "unchanged", "deleted")
    }
    totals["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"tracking_uri": uri or tracking_uri(), "studies": len(rows), **totals}))
    return 0
