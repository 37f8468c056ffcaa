"""Running the stages of one ablation trial: reused upstream stages from a content-addressed
cache, the factor's stages into the trial's own folder.

Cache key of a stage = the params sections it reads (locations excluded) + its module's source
+ the keys of the stages it consumes, like DVC's stage hash: a study whose factor does not touch
a stage finds that stage's artifacts already built (per seed) and shares them across studies.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import hashlib
import inspect
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sidrec_core.config import flatten, params_hash
from sidrec_core.io import write_json
from sidrec_core.studies.profiles import get_dotted, set_dotted
from sidrec_core.studies.stages import STAGES, StageSpec, all_output_keys
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


@functools.cache
def _source_hash(module_name: str) -> str:
    """Hash of the stage module's source, read once per process: the code this process runs,
    even if the file is edited while a study is under way."""
    module = sys.modules.get(module_name)
    try:
        src = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        src = ""
    return hashlib.sha256(src.encode()).hexdigest()[:12]


def cache_key(spec: StageSpec, params: dict[str, Any], dep_keys: dict[str, str]) -> str:
    """Hash of what determines ``spec``'s outputs (settings, code, upstream), not where they go."""
    locations = all_output_keys()
    content = flatten({sec: params.get(sec) or {} for sec in spec.reads})
    settings = {k: v for k, v in content.items() if k not in locations}
    deps = {d: dep_keys[d] for d in spec.deps if d in dep_keys}
    return params_hash(
        {"stage": spec.name, "params": settings, "code": _source_hash(spec.module), "deps": deps}
    )


def place(spec: StageSpec, params: dict[str, Any], folder: Path) -> None:
    """Point ``spec``'s output keys into ``folder`` (mutates ``params``)."""
    for key, name in spec.outputs.items():
        set_dotted(params, key, str(folder / name))


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


def call_stage(spec: StageSpec, params: dict[str, Any], metrics_dir: Path) -> dict[str, Any]:
    """Run one stage with its metrics JSON in ``metrics_dir``; adds its own wall time and peak
    RSS (since this call) under ``wall_seconds`` / ``peak_rss_mb``."""
    fn = spec.load()
    call = copy.deepcopy(params)
    set_dotted(call, "base.metrics_dir", str(metrics_dir))
    reset_peak_rss()
    start = time.perf_counter()
    metrics = fn(call)
    out = _jsonable(metrics)
    out["wall_seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = current_peak_rss_mb()
    return out


def ensure_cached(
    spec: StageSpec, params: dict[str, Any], cache_root: Path, dep_keys: dict[str, str]
) -> tuple[str, dict[str, Any]]:
    """Build ``spec`` into ``cache_root/<stage>-<key>`` unless already there; point ``params``'
    output keys at it. Returns (key, the stage's metrics)."""
    spec.load()  # fail early, naming the missing module, before taking any lock
    key = cache_key(spec, params, dep_keys)
    folder = cache_root / f"{spec.name}-{key}"
    place(spec, params, folder)
    done = folder / "done.json"
    with file_lock(cache_root / f".{spec.name}-{key}.lock"):
        if done.exists():
            return key, json.loads(done.read_text())
        log.info("building cached %s -> %s", spec.name, folder)
        metrics = call_stage(spec, params, folder / "metrics")
        write_json(done, metrics)
    return key, metrics


def ordered(names: tuple[str, ...] | list[str]) -> list[str]:
    """Stage names in pipeline order (the order of :data:`STAGES`)."""
    order = list(STAGES)
    return sorted(names, key=order.index)


def execute_trial(
    run: tuple[str, ...],
    reuse: tuple[str, ...],
    params_up: dict[str, Any],
    params_trial: dict[str, Any],
    trial_dir: Path,
    cache_root: Path,
) -> dict[str, Any]:
    """Reuse (or build once) the upstream stages at ``params_up``, then run the factor's stages
    at ``params_trial`` into ``trial_dir``. Returns the merged flat metrics of the run stages
    (a later stage's key wins), with ``<stage>/wall_seconds``, ``<stage>/peak_rss_mb``, and the
    trial's total ``wall_seconds`` / ``peak_rss_mb``."""
    dep_keys: dict[str, str] = {}
    for name in ordered(reuse):
        spec = STAGES[name]
        dep_keys[name], _ = ensure_cached(spec, params_up, cache_root, dep_keys)
        for key in spec.outputs:  # the trial reads the cached artifacts
            set_dotted(params_trial, key, get_dotted(params_up, key))
    merged: dict[str, Any] = {}
    walls, peaks = [], []
    for name in ordered(run):
        spec = STAGES[name]
        place(spec, params_trial, trial_dir)
        metrics = call_stage(spec, params_trial, trial_dir / "metrics")
        walls.append(metrics.pop("wall_seconds"))
        peaks.append(metrics.pop("peak_rss_mb"))
        merged.update(metrics)
        merged[f"{name}/wall_seconds"] = walls[-1]
        merged[f"{name}/peak_rss_mb"] = peaks[-1]
    merged["wall_seconds"] = float(sum(walls))
    merged["peak_rss_mb"] = float(max(peaks))
    write_json(trial_dir / "trial_metrics.json", merged)
    return merged
