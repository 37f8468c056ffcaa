"""Running the stages of one ablation trial from a content-addressed cache: upstream stages at
the defaults, the factor's stages at the trial's level. The stage graph, what each stage reads
and what it writes all come from ``dvc.yaml`` (:mod:`sidrec_core.studies.pipeline`).

Cache key of a stage = the params it reads (locations left out) + the content of every dep no
stage produces (code folders, raw data) + the keys of its upstream stages: DVC's stage hash, so
editing any file under ``sidrec_core/sid`` rebuilds ``build_sids`` and everything after it.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidrec_core.config import ConfigError, params_hash
from sidrec_core.io import write_json
from sidrec_core.stages import resolve_params
from sidrec_core.studies.pipeline import (
    PROJECT_ROOT,
    Stage,
    file_hash,
    load_pipeline,
    location_keys,
    ordered,
    producer_of,
    relocate,
    rerouted_inputs,
    source_deps,
    stage_settings,
    upstream,
)
from sidrec_core.studies.profiles import set_dotted
from sidrec_core.utils import peak_rss_mb

log = logging.getLogger(__name__)


def reset_peak_rss() -> None:
    """Reset this process's RSS high-water mark (Linux ``clear_refs``) so each trial gets its
    own peak, not the worker's lifetime maximum; a no-op where unsupported."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def current_peak_rss_mb() -> float:
    """RSS high-water mark since the last :func:`reset_peak_rss`, in MiB."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return peak_rss_mb()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two workers never build the same cache entry at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cache_key(
    stage: Stage,
    params: dict[str, Any],
    dep_keys: dict[str, str],
    pipeline: dict[str, Stage],
    root: Path = PROJECT_ROOT,
) -> str:
    """Hash of what determines ``stage``'s outputs (settings, code and data, upstream keys),
    not where they go. ``params`` must be resolved (defaults filled in)."""
    settings = stage_settings(stage, params, location_keys(pipeline))
    sources = {d: file_hash(root / d) for d in source_deps(stage, pipeline)}
    ups = {u: dep_keys[u] for u in upstream(stage.name, pipeline) if u in dep_keys}
    for key, path in rerouted_inputs(stage, params, pipeline).items():
        settings[key] = path
        producer = producer_of(path, pipeline)
        if producer is None:
            sources[path] = file_hash(root / path)
        elif producer in dep_keys:
            ups[producer] = dep_keys[producer]
        else:
            raise ConfigError(
                f"{key}={path} is an out of stage '{producer}', which this trial neither runs "
                f"nor reuses before '{stage.name}': add it to the study's reuse"
            )
    return params_hash({"stage": stage.name, "params": settings, "deps": sources, "up": ups})


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Numbers, strings and lists of numbers (what metrics JSON and user attrs can hold)."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = float(v) if math.isfinite(v) else None
        elif isinstance(v, str):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(x) for x in v]
    return out


def call_stage(stage: Stage, params: dict[str, Any], metrics_dir: Path) -> dict[str, Any]:
    """Run one stage with its metrics JSON in ``metrics_dir``; adds its own wall time and peak
    RSS (since this call) under ``wall_seconds`` / ``peak_rss_mb``."""
    fn = stage.function()
    call = copy.deepcopy(params)
    set_dotted(call, "base.metrics_dir", str(metrics_dir))
    reset_peak_rss()
    start = time.perf_counter()
    out = _jsonable(fn(call))
    out["wall_seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = current_peak_rss_mb()
    return out


def place(stage: Stage, folder: Path, *params: dict[str, Any]) -> None:
    """Move ``stage``'s outs into ``folder`` in every params dict given (in place)."""
    for out in stage.outs:
        for p in params:
            relocate(p, out, str(folder / out))


def stage_keys(
    run: tuple[str, ...],
    reuse: tuple[str, ...],
    params_up: dict[str, Any],
    params_trial: dict[str, Any],
    pipeline: dict[str, Stage],
) -> dict[str, str]:
    """The cache key of every stage of a trial, upstream (``reuse``, at ``params_up``) then the
    factor's (``run``, at ``params_trial``), computed without building anything. Params must be
    resolved."""
    keys: dict[str, str] = {}
    for name in ordered(reuse, pipeline):
        keys[name] = cache_key(pipeline[name], params_up, keys, pipeline)
    for name in ordered(run, pipeline):
        keys[name] = cache_key(pipeline[name], params_trial, keys, pipeline)
    return keys


def trial_key(run: tuple[str, ...], keys: dict[str, str]) -> str:
    """What a trial's figures are a function of: the keys of the stages it runs (each covers
    its upstream stages, code and data). Two trials with the same key measure the same thing."""
    return params_hash({name: keys[name] for name in sorted(run)})


def build_cached(
    stage: Stage, params: dict[str, Any], key: str, cache_root: Path, *readers: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Point ``stage``'s outs (in ``params`` and every ``readers`` dict) at its cache folder
    ``<stage>-<key>`` and build it there at ``params`` unless a finished build exists. Returns
    (the stage's metrics as measured when it was built, whether it was cached)."""
    folder = cache_root / f"{stage.name}-{key}"
    place(stage, folder, params, *readers)
    with file_lock(cache_root / f".{stage.name}-{key}.lock"):
        if (folder / "done.json").exists():
            return cached_metrics(folder), True
        log.info("building cached %s -> %s", stage.name, folder)
        metrics = call_stage(stage, params, folder / "metrics")
        write_json(folder / "done.json", metrics)
        return metrics, False


def execute_trial(
    run: tuple[str, ...],
    reuse: tuple[str, ...],
    params_up: dict[str, Any],
    params_trial: dict[str, Any],
    trial_dir: Path,
    cache_root: Path,
    pipeline: dict[str, Stage] | None = None,
) -> dict[str, Any]:
    """Reuse (or build once) the upstream stages at ``params_up``, then the factor's stages at
    ``params_trial``. Every stage is content-addressed in ``cache_root``: a level two studies
    share (the RQ-VAE default of the tokenizer-flag studies), or a resumed trial's finished
    stages, is built once; its figures (wall time and memory included) are those measured when
    it was built. Returns the merged flat metrics of the run stages (a later stage's key wins),
    with ``<stage>/wall_seconds``, ``<stage>/peak_rss_mb``, the trial's total ``wall_seconds`` /
    ``peak_rss_mb``, ``cached_stages`` (how many run stages came from the cache),
    ``spent_seconds`` (the wall time of the stages this call built) and ``trial_key``
    (:func:`trial_key`); a copy of each run stage's metrics and the merged figures are written
    under ``trial_dir``."""
    pipeline = pipeline or load_pipeline()
    params_up, params_trial = resolve_params(params_up), resolve_params(params_trial)
    keys = stage_keys(run, reuse, params_up, params_trial, pipeline)
    for name in ordered(reuse, pipeline):
        build_cached(pipeline[name], params_up, keys[name], cache_root, params_trial)
    merged: dict[str, Any] = {}
    walls, peaks, cached, spent = [], [], 0, 0.0
    for name in ordered(run, pipeline):
        measured, hit = build_cached(pipeline[name], params_trial, keys[name], cache_root)
        metrics = dict(measured)
        write_json(trial_dir / "metrics" / f"{name}.json", metrics)
        walls.append(metrics.pop("wall_seconds"))
        peaks.append(metrics.pop("peak_rss_mb"))
        cached += hit
        spent += 0.0 if hit else walls[-1]
        merged.update(metrics)
        merged[f"{name}/wall_seconds"] = walls[-1]
        merged[f"{name}/peak_rss_mb"] = peaks[-1]
    merged["wall_seconds"] = float(sum(walls))
    merged["peak_rss_mb"] = float(max(peaks))
    merged["cached_stages"] = float(cached)
    merged["spent_seconds"] = spent
    merged["trial_key"] = trial_key(run, keys)
    write_json(trial_dir / "trial_metrics.json", merged)
    return merged


def cached_metrics(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "done.json").read_text())
