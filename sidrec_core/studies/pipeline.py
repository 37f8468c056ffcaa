"""The stage graph as ``dvc.yaml`` declares it: the one source of truth for what each stage
reads (params sections or dotted keys, deps) and writes (outs). The ablation bench reads it here
and never re-declares a stage; a stage's upstream stages are those whose outs it lists as deps.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from sidrec_core.config import ConfigError

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


def inside(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or a path under it."""
    return path == root or path.startswith(root + "/")


def upstream(name: str, pipeline: dict[str, Stage]) -> list[str]:
    """Stages whose outs ``name`` reads (its direct DVC dependencies), in pipeline order."""
    made = {out: s.name for s in pipeline.values() for out in s.outs}
    ups = {made[o] for d in pipeline[name].deps for o in made if inside(d, o) or inside(o, d)}
    return [s for s in pipeline if s in ups and s != name]


def ordered(names: list[str] | tuple[str, ...], pipeline: dict[str, Stage]) -> list[str]:
    order = list(pipeline)
    for n in names:
        if n not in pipeline:
            raise KeyError(f"unknown stage '{n}'; dvc.yaml has: {', '.join(order)}")
    return sorted(names, key=order.index)
