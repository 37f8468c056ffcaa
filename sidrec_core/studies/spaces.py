"""The tuning mode's search spaces (``studies.yaml``, section ``tunables``): the stages a trial
runs and reuses, the searched keys and their domains, the published starts queued before TPE."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna

from sidrec_core.config import ConfigError, flatten
from sidrec_core.stages import resolve_params
from sidrec_core.studies.registry import CATALOGUE, build, read_catalogue


@dataclasses.dataclass(frozen=True)
class Param:
    """A searched key: ``choices`` (categorical) or ``low``..``high`` (float, log). ``when=(key,
    value)``: searched only where the earlier param ``key`` took ``value``."""

    key: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = True
    when: tuple[str, Any] | None = None

    def applies(self, chosen: dict[str, Any]) -> bool:
        return self.when is None or chosen.get(self.when[0]) == self.when[1]

    def contains(self, value: Any) -> bool:
        if self.choices:
            return any(
                isinstance(value, bool) == isinstance(c, bool) and value == c for c in self.choices
            )
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and self.low <= value <= self.high  # type: ignore[operator]

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A model's search; ``starts``: (full point of the space, its source)."""

    name: str
    run: tuple[str, ...]
    reuse: tuple[str, ...]
    space: tuple[Param, ...]
    starts: tuple[tuple[dict[str, Any], str], ...] = ()
    epochs_key: str = ""  # the trial's training length, which sets the pruner's warm-up
    secondary: tuple[str, ...] = ()  # metrics kept on every trial and shown in the report

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's overrides, conditional params only where they apply."""
        chosen: dict[str, Any] = {}
        for p in self.space:
            if p.applies(chosen):
                chosen[p.key] = p.suggest(trial)
        return chosen

    def default_point(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The launch's values of the space's keys, None when one lies outside the space."""
        resolved = flatten(resolve_params(params))
        point: dict[str, Any] = {}
        for p in self.space:
            if p.applies(point):
                if not p.contains(resolved.get(p.key)):
                    return None
                point[p.key] = resolved[p.key]
        return point


def _tunable(name: str, raw: dict[str, Any], file: str) -> Tunable:
    where = f"{file}: tunables.{name}"
    space = [build(Param, p, f"{where}.space[{i}]") for i, p in enumerate(raw.get("space", ()))]
    for i, s in enumerate(raw.get("starts", ())):
        if set(s) != {"point", "source"}:
            raise ConfigError(f"{where}.starts[{i}]: needs point and source only")
    starts = tuple((dict(s["point"]), s["source"]) for s in raw.get("starts", ()))
    return build(Tunable, raw, where, name=name, space=tuple(space), starts=starts)


def load_tunables(path: Path = CATALOGUE) -> dict[str, Tunable]:
    """Every search space of the catalogue file, in file order."""
    return {n: _tunable(n, r, path.name) for n, r in read_catalogue("tunables", path).items()}


TUNABLES: dict[str, Tunable] = load_tunables()


def get_tunable(name: str) -> Tunable:
    if name not in TUNABLES:
        raise KeyError(f"unknown model '{name}' to tune; known: {', '.join(TUNABLES)}")
    return TUNABLES[name]
