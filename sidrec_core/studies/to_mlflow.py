"""``--to-mlflow`` of bench/ablate.py and bench/tune.py: MLflow rebuilt from the committed Optuna
storage, an experiment per study folder, a parent run per study and profile (report as artifacts,
description), nested runs per trial and search retrain. Idempotent (:func:`tracking.sync_runs`)."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from sidrec_core.metrics import HEADLINE
from sidrec_core.studies.defaults import profile_of
from sidrec_core.studies.index import last_commit
from sidrec_core.studies.provenance import LANDED_IN, read_backfill, trial_key_of
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import report_sections, scalar_attrs
from sidrec_core.studies.storage import JOURNAL, read_storage
from sidrec_core.studies.study import trial_level, trial_seed
from sidrec_core.studies.tuning import RETRAINED
from sidrec_core.tracking import RunRecord, headline_first, sync_runs, tracking_uri

NOT_RECORDED = "not recorded"
STATUS = {"COMPLETE": "FINISHED", "FAIL": "FAILED", "PRUNED": "KILLED", "WAITING": "SCHEDULED"}
TAG_KEYS = "trial_key shared_from worker start pruner duplicate_of restored error".split()
COUNTS = ("runs", "created", "updated", "replaced", "unchanged", "deleted")


class Source(NamedTuple):
    """A study folder (``label``: ``tokenizer``, ``tune/sidlm``), its Optuna storage, the
    prefix of its Optuna study names (``<study>-``, ``tune-<model>-``), whether a search."""

    label: str
    folder: Path
    storage: Any
    prefix: str
    tuning: bool = False


def open_storage(folder: Path) -> Any:
    """The journal committed in ``folder`` (an Optuna storage), or None."""
    return read_storage(str(p.resolve())) if (p := Path(folder) / JOURNAL).exists() else None


def study_sources(out_dir: Path, names: list[str], storage: Any = None) -> list[Source]:
    """The ablation studies ``names`` that have a storage (``storage``: one given for all)."""
    found = [(n, Path(out_dir) / n) for n in names]
    return [Source(n, f, s, f"{n}-") for n, f in found if (s := storage or open_storage(f))]


def tune_sources(out_dir: Path, models: list[str], storage: Any = None) -> list[Source]:
    """Each model's search in ``<out_dir>/tune/<model>`` and any kept in a subfolder of it (a
    confirmatory retrain's copy, ``tune/sidlm/confirm``)."""
    out = []
    for root in (Path(out_dir) / "tune" / m for m in models):
        for folder in [root, *sorted(p for p in root.glob("*") if p.is_dir())]:
            found = storage if storage and folder == root else open_storage(folder)
            label = folder.relative_to(out_dir).as_posix()
            out += [Source(label, folder, found, f"tune-{root.name}-", True)] if found else []
    return out


def _ms(when: dt.datetime | None) -> int | None:
    """Optuna stores naive times; read as UTC so a rebuild gives the same times anywhere."""
    return None if when is None else int(when.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _str(values: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def record(key: str, name: str, figures: dict, tags: dict, params: dict, what: str, **fields):
    """A run logging the finite ``figures`` headline first, its description opening with them."""
    objective = tags["objective"]
    finite = {k: v for k, v in figures.items() if math.isfinite(v)}
    metrics = {k: finite[k] for k in headline_first(sorted(finite), objective)}
    shown = [f"{k} = {v:.4f}" for k, v in metrics.items() if k == objective or k.endswith(HEADLINE)]
    text = f"{what}: {'; '.join(shown) or 'no figures stored'}"
    return RunRecord(key, name, tags, params, metrics, description=text, **fields)


def trial_run(t: FrozenTrial, key: str, name: str, params: dict, tags: dict) -> RunRecord:
    """One trial: stored figures, validation curve (``intermediate/<objective>``), and as tags
    the provenance it stored (:data:`TAG_KEYS`, ``sha256/*``, ``level_spec``; else ``not
    recorded`` for ``commit`` and ``trial_key``)."""
    attrs, objective = t.user_attrs, tags["objective"]
    figures = {k: v for k, v in scalar_attrs(attrs).items() if k not in TAG_KEYS}
    figures |= {objective: float(t.value)} if t.value is not None else {}
    tags = {**tags, "sidrec.kind": "trial", "trial": str(t.number), "state": t.state.name}
    tags |= {"commit": NOT_RECORDED, "trial_key": NOT_RECORDED}
    for k, v in {**attrs, **(attrs.get("metrics") or {})}.items():
        if v is not None and (k in TAG_KEYS or k.startswith("sha256/")):
            tags[k.replace("/", ".")] = str(v)[:1000]
    if "commit" in (code := attrs.get("provenance") or {}):
        tags["commit"] = code["commit"] + (" (dirty)" if code.get("worktree_dirty") else "")
    if "level_spec" in attrs:
        tags["level_spec"] = json.dumps(attrs["level_spec"], sort_keys=True)
    when = {"start_ms": _ms(t.datetime_start), "end_ms": _ms(t.datetime_complete)}
    when["status"] = STATUS.get(t.state.name, t.state.name)
    what = f"Trial #{t.number} ({t.state.name.lower()})"
    history = {f"intermediate/{objective}": dict(c) for c in [t.intermediate_values] if c}
    return record(f"{key}#{t.number}", name, figures, tags, params, what, history=history, **when)


def ablation_run(t: FrozenTrial, key: str, base: dict, landed: dict) -> RunRecord:
    """An ablation trial: params its level, seed and the overrides it recorded; ``landed`` (the
    first commit whose storage held it, by trial) bounds its code and is never its ``commit``."""
    level, seed = str(trial_level(t)), str(trial_seed(t))
    spec = t.user_attrs.get("level_spec") or {}
    params = {"level": level, "seed": seed}
    params |= _str({**(spec.get("fixed") or {}), **(spec.get("level") or {})})
    tags = {**base, "level": level, "seed": seed}
    if commit := landed.get(trial_key_of(key.split(":", 1)[1], t)):
        tags[LANDED_IN] = commit
    return trial_run(t, key, f"{base['study']}/{level}/seed{seed}", params, tags)


def retrain_runs(storage: Any, key: str, study: str, base: dict) -> list[RunRecord]:
    """A search's retrains, one run per seed: the complete trials of ``<search>-retrain``
    (``config`` best: the best trial's overrides; default: the launch's)."""
    if f"{study}-retrain" not in optuna.get_all_study_names(storage):
        return []
    retrains = optuna.load_study(study_name=f"{study}-retrain", storage=storage)
    out = []
    for t in retrains.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        which, seed = str(t.user_attrs["config"]), t.user_attrs["seed"]
        point = {"retrain": which, "seed": str(seed)}
        params = point | _str(json.loads(t.user_attrs.get("overrides") or "{}"))
        tags = {**base, "sidrec.kind": "retrain", **point, "commit": NOT_RECORDED}
        run_key = f"{key}/{RETRAINED.get(which, which)}/s{seed}"
        name, what = f"{study}/retrain-{which}/s{seed}", f"Retrain of the {which} configuration"
        figures = scalar_attrs(t.user_attrs["metrics"])
        out.append(record(run_key, name, figures, tags, params, f"{what}, seed {seed}"))
    return out


def parent_run(src: Source, study: optuna.Study, base: dict) -> RunRecord:
    """The study x profile: its trial counts and launch attrs as tags, the folder's report and
    plots as artifacts, the report's section (a search: its report) as description."""
    attrs, trials, profile = study.user_attrs, study.get_trials(deepcopy=False), base["profile"]
    states = sorted(Counter(t.state for t in trials).items())
    tags = {**base, "sidrec.kind": "search" if src.tuning else "study"}
    tags["findings_commit"] = last_commit(src.folder)
    tags["trials"] = ", ".join(f"{n} {s.name.lower()}" for s, n in states)
    launch = ("levels", "default", "seeds", "profile_overrides")
    tags |= {k: json.dumps(attrs[k], sort_keys=True) for k in launch if k in attrs}
    stems = {"report", f"report_{profile}", profile, "README", "NOTES"}
    files = [p for p in sorted(src.folder.iterdir()) if p.suffix in (".md", ".png", ".yaml")]
    files = [p for p in files if p.stem in stems or p.stem.startswith(f"{profile}_")]
    text = report_sections(src.folder / "report.md").get(profile, "")
    if not text and (report := src.folder / f"report_{profile}.md").exists():
        text = report.read_text()
    # a report's images are files beside it: in MLflow they are the run's artifacts
    text = re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", r"(plot: artifact `report/\2`)", text)
    starts = [ms for t in trials if (ms := _ms(t.datetime_start)) is not None]
    ends = [ms for t in trials if (ms := _ms(t.datetime_complete)) is not None]
    return RunRecord(
        key=f"{src.label}:{study.study_name}",
        name=f"{'tune' if src.tuning else 'study'}/{study.study_name}",
        tags=tags,
        start_ms=min(starts, default=None),
        end_ms=max(ends, default=None),
        description=text,
        artifacts=tuple((p, "report") for p in files),
    )


def rebuild(sources: list[Source], uri: str | None, profiles=None, echo=False) -> list[dict]:
    """Sync each Optuna study (one per profile) of ``sources``; a summary each (``echo``: print)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    names = ((s, n) for s in sources for n in sorted(optuna.get_all_study_names(s.storage)))
    for src, study in names:
        profile, key = study.removeprefix(src.prefix), f"{src.label}:{study}"
        skip = profiles is not None and profile_of(profile) not in profiles
        if skip or not study.startswith(src.prefix) or (src.tuning and study.endswith("-retrain")):
            continue  # a search's retrain study is folded into the search's runs
        ostudy = optuna.load_study(study_name=study, storage=src.storage)
        attrs, spec = ostudy.user_attrs, None if src.tuning else STUDIES.get(src.prefix[:-1])
        objective = spec.objective if spec else str(attrs.get("objective", "valid/ndcg@10"))
        base = {"study": src.prefix[:-1], "profile": profile, "objective": objective}
        base |= {"dataset": str(attrs.get("dataset", NOT_RECORDED)), "sidrec.source": src.label}
        trials = ostudy.get_trials(deepcopy=False)
        if src.tuning:
            runs = [trial_run(t, key, f"{study}/{t.number}", _str(t.params), base) for t in trials]
            runs += retrain_runs(src.storage, key, study, base)
        else:
            base["factor"] = str(attrs.get("factor", spec.factor if spec else NOT_RECORDED))
            landed = {k: v.get(LANDED_IN) for k, v in read_backfill(src.folder.parent).items()}
            runs = [ablation_run(t, key, base, landed) for t in trials]
        counts = sync_runs(f"findings/{src.label}", parent_run(src, ostudy, base), runs, uri=uri)
        counts.pop("experiment_id")
        rows.append({"study": study, "source": src.label, "runs": len(runs), **counts})
        if echo:
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main(sources: list[Source], uri: str | None) -> int:
    """``--to-mlflow``: rebuild, print a JSON line per Optuna study, then the totals."""
    started = time.perf_counter()
    rows = rebuild(sources, uri, echo=True)
    totals = {k: sum(r[k] for r in rows) for k in COUNTS}
    totals["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"tracking_uri": uri or tracking_uri(), "studies": len(rows), **totals}))
    return 0
