"""The stage graph as ``dvc.yaml`` declares it: the one source of truth for what each stage
reads (params sections or dotted keys, deps) and writes (outs). The ablation bench reads it here
and never re-declares a stage.

A stage's upstream stages are those whose outs it lists as deps. Relocating an out (a cached or
per-trial copy) rewrites every params value that names that path or a path inside it, so a stage
and its consumers agree on where an artifact lives without a second table of locations.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

import yaml

from sidrec_core.config import ConfigError, flatten
from sidrec_core.stages import StageFn, resolve_params, stage_function

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DVC_FILE = PROJECT_ROOT / "dvc.yaml"


@dataclasses.dataclass(frozen=True)
class Stage:
    """One ``dvc.yaml`` stage: ``params`` sections/dotted keys, ``deps`` and ``outs`` paths
    (relative to the project root)."""

    name: str
    params: tuple[str, ...]
    deps: tuple[str, ...]
    outs: tuple[str, ...]

    def function(self) -> StageFn:
        return stage_function(self.name)


def _paths(entries: list[Any] | None) -> tuple[str, ...]:
    """``dvc.yaml`` list entries (``path`` or ``{path: {options}}``) -> paths."""
    out = []
    for entry in entries or []:
        out.append(next(iter(entry)) if isinstance(entry, dict) else str(entry))
    return tuple(p.rstrip("/") for p in out)


@functools.cache
def load_pipeline(path: Path = DVC_FILE) -> dict[str, Stage]:
    """Stages of ``path`` in file order."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline ({exc})") from exc
    stages = {}
    for name, body in (spec.get("stages") or {}).items():
        params = []
        for entry in body.get("params") or []:
            params.extend(entry if isinstance(entry, dict) else [entry])
        stages[name] = Stage(
            name, tuple(str(p) for p in params), _paths(body.get("deps")), _paths(body.get("outs"))
        )
    return stages


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


def producers(pipeline: dict[str, Stage]) -> dict[str, str]:
    """out path -> the stage that writes it."""
    return {out: s.name for s in pipeline.values() for out in s.outs}


def upstream(name: str, pipeline: dict[str, Stage]) -> list[str]:
    """Stages whose outs ``name`` reads (its direct DVC dependencies), in pipeline order."""
    made = producers(pipeline)
    ups = {made[o] for d in pipeline[name].deps for o in made if _inside(d, o) or _inside(o, d)}
    return [s for s in pipeline if s in ups and s != name]


def ordered(names: list[str] | tuple[str, ...], pipeline: dict[str, Stage]) -> list[str]:
    order = list(pipeline)
    for n in names:
        if n not in pipeline:
            raise KeyError(f"unknown stage '{n}'; dvc.yaml has: {', '.join(order)}")
    return sorted(names, key=order.index)


def relocate(params: dict[str, Any], old: str, new: str) -> None:
    """Point every string value naming ``old`` (or a path inside it) at ``new`` (in place)."""
    for section in params.values():
        if isinstance(section, dict):
            _relocate_tree(section, old, new)


def _relocate_tree(node: dict[str, Any], old: str, new: str) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _relocate_tree(value, old, new)
        elif isinstance(value, str) and _inside(value.rstrip("/"), old):
            node[key] = new + value.rstrip("/")[len(old) :]


BOOKKEEPING_KEYS = frozenset({"base.metrics_dir", "base.profile"})  # where a run reports


@functools.cache
def _defaults() -> dict[str, Any]:
    """Every dotted params key with its code default (read-only: shared between calls)."""
    return flatten(resolve_params({}))


def location_keys(pipeline: dict[str, Stage]) -> set[str]:
    """Dotted keys whose default value names a stage out: where an artifact goes, not how it is
    made (so relocating it changes no cache key)."""
    outs = [o for s in pipeline.values() for o in s.outs]
    return {
        k
        for k, v in _defaults().items()
        if isinstance(v, str) and any(_inside(v.rstrip("/"), o) for o in outs)
    } | BOOKKEEPING_KEYS


def stage_settings(stage: Stage, params: dict[str, Any], locations: set[str]) -> dict[str, Any]:
    """The params ``stage`` reads (its ``dvc.yaml`` sections/keys), locations left out."""
    flat = flatten(params)
    return {
        k: v
        for k, v in flat.items()
        if k not in locations and any(k == p or k.startswith(p + ".") for p in stage.params)
    }


def file_hash(path: Path) -> str:
    """sha256 of a file, or of every file under a folder (relative names + contents, sorted)."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            if "__pycache__" in f.parts or f.suffix == ".pyc":
                continue
            h.update(str(f.relative_to(path)).encode() + b"\0" + f.read_bytes() + b"\0")
    elif path.exists():
        h.update(path.read_bytes())
    else:
        h.update(b"<missing>")
    return h.hexdigest()


def source_deps(stage: Stage, pipeline: dict[str, Stage]) -> list[str]:
    """Deps no stage produces: code folders/files and raw data."""
    outs = [o for s in pipeline.values() for o in s.outs]
    return [d for d in stage.deps if not any(_inside(d, o) or _inside(o, d) for o in outs)]


def rerouted_inputs(
    stage: Stage, params: dict[str, Any], pipeline: dict[str, Stage]
) -> dict[str, str]:
    """Input locations ``stage`` reads (location keys in its params sections, its own outs
    excepted) that ``params`` points away from their default: dotted key -> the path it names
    instead (e.g. ``sid.embeddings`` -> the collaborative table). A rerouted input is not the
    dep ``dvc.yaml`` lists, so it must be keyed by what it names."""
    flat = flatten(params)
    out: dict[str, str] = {}
    for key in sorted(location_keys(pipeline) - BOOKKEEPING_KEYS):
        if not any(key == p or key.startswith(p + ".") for p in stage.params):
            continue
        default = str(_defaults()[key]).rstrip("/")
        if any(_inside(default, o) for o in stage.outs):
            continue
        value = str(flat.get(key, default)).rstrip("/")
        if value != default:
            out[key] = value
    return out


def producer_of(path: str, pipeline: dict[str, Stage]) -> str | None:
    """The stage whose out holds ``path`` (project-relative), or None for a file no stage makes."""
    return next((s for o, s in producers(pipeline).items() if _inside(path, o)), None)
