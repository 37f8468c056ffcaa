"""The tuning mode's search spaces, declared per model in ``studies.yaml`` (section ``tunables``)
beside the studies: the stages a trial runs and reuses, the searched params keys and their domains,
and the published starting points queued before TPE samples."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna

from sidrec_core.config import ConfigError, flatten
from sidrec_core.stages import resolve_params
from sidrec_core.studies.registry import CATALOGUE, check_keys, read_catalogue


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched params key: ``choices`` (categorical) or ``low``..``high`` (float, log).
    ``when=(key, value)`` makes it conditional: searched only in trials where the earlier
    param ``key`` took ``value`` (otherwise the params file's value stands)."""

    key: str
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = True
    when: tuple[str, Any] | None = None

    def applies(self, chosen: dict[str, Any]) -> bool:
        return self.when is None or chosen.get(self.when[0]) == self.when[1]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of this param's domain."""
        if self.choices:
            return any(
                isinstance(value, bool) == isinstance(c, bool) and value == c for c in self.choices
            )
        assert self.low is not None and self.high is not None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and self.low <= value <= self.high

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        assert self.low is not None and self.high is not None
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


@dataclasses.dataclass(frozen=True)
class Tunable:
    """A model's search: the stages a trial runs and reuses, the space, and the published
    starting points queued before TPE samples (each a full assignment of the space, with its
    source); the launch's default is queued after them (``queued_starts``)."""

    name: str
    run: tuple[str, ...]
    reuse: tuple[str, ...]
    space: tuple[Param, ...]
    starts: tuple[tuple[dict[str, Any], str], ...] = ()
    epochs_key: str = ""  # the trial's training length, which sets the pruner's warm-up

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's overrides, conditional params included only where they apply."""
        chosen: dict[str, Any] = {}
        for p in self.space:
            if p.applies(chosen):
                chosen[p.key] = p.suggest(trial)
        return chosen

    def default_point(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """The launch's resolved values of the space's keys (conditional keys only where they
        apply), or None when one of them lies outside the space (e.g. the smoke profile's
        tiny models): such a default is not a point TPE could sample."""
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
    check_keys(raw, Tunable, where)
    space = []
    for i, p in enumerate(raw.get("space", ())):
        check_keys(p, Param, f"{where}.space[{i}]")
        when = tuple(p["when"]) if p.get("when") else None
        space.append(Param(**{**p, "choices": tuple(p.get("choices", ())), "when": when}))
    starts = []
    for i, s in enumerate(raw.get("starts", ())):
        if set(s) != {"point", "source"}:
            raise ConfigError(f"{where}.starts[{i}]: needs point and source only")
        starts.append((dict(s["point"]), s["source"]))
    return Tunable(
        name=name,
        run=tuple(raw["run"]),
        reuse=tuple(raw["reuse"]),
        space=tuple(space),
        starts=tuple(starts),
        epochs_key=raw.get("epochs_key", ""),
    )


def load_tunables(path: Path = CATALOGUE) -> dict[str, Tunable]:
    """Every search space of the catalogue file, in file order."""
    return {n: _tunable(n, r, path.name) for n, r in read_catalogue("tunables", path).items()}


TUNABLES: dict[str, Tunable] = load_tunables()


def get_tunable(name: str) -> Tunable:
    if name not in TUNABLES:
        raise KeyError(f"unknown model '{name}' to tune; known: {', '.join(TUNABLES)}")
    return TUNABLES[name]
