"""The stage graph as ``dvc.yaml`` declares it (params, deps, outs per stage): read here, never
re-declared; a stage's upstream stages are those whose outs it lists as deps."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import yaml

from sidrec_core.config import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DVC_FILE = PROJECT_ROOT / "dvc.yaml"


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    params: tuple[str, ...]  # sections or dotted keys
    deps: tuple[str, ...]  # paths relative to the project root
    outs: tuple[str, ...]


@functools.cache
def load_pipeline(path: Path = DVC_FILE) -> dict[str, Stage]:
    """Stages of ``path`` in file order."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the pipeline ({exc})") from exc

    def paths(entries: list | None) -> tuple[str, ...]:  # `path` or `{path: {options}}`
        return tuple(
            (next(iter(e)) if isinstance(e, dict) else str(e)).rstrip("/") for e in entries or []
        )

    stages = {}
    for name, body in (spec.get("stages") or {}).items():
        params = [p for e in body.get("params") or [] for p in (e if isinstance(e, dict) else [e])]
        stages[name] = Stage(
            name, tuple(map(str, params)), paths(body.get("deps")), paths(body.get("outs"))
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


def ancestors(names: list[str], pipeline: dict[str, Stage]) -> list[str]:
    """Every stage ``names`` read from, directly or not (not ``names`` themselves), in pipeline
    order."""
    found, todo = set(), list(names)
    while todo:
        for up in upstream(todo.pop(), pipeline):
            if up not in found:
                found.add(up)
                todo.append(up)
    return [s for s in pipeline if s in found and s not in names]


def ordered(names: list[str] | tuple[str, ...], pipeline: dict[str, Stage]) -> list[str]:
    for n in names:
        if n not in pipeline:
            raise KeyError(f"unknown stage '{n}'; dvc.yaml has: {', '.join(pipeline)}")
    return sorted(names, key=list(pipeline).index)
