"""The study catalogue: ``studies.yaml`` at the repository root, read strictly into frozen
dataclasses (:class:`~sidrec_core.studies.study.Study`; the search spaces are read by
:mod:`sidrec_core.studies.spaces`). An unknown key, a missing one or a value of the wrong kind is
a one-line :class:`~sidrec_core.config.ConfigError` naming the file and the dotted key.

A study's levels are written ``levels: {label: {dotted.key: value}}`` or, for a factor that is
one params key, ``one_key: {dotted.key: [values]}`` (labels ``off``/``on`` for booleans, else the
value). A ``secondary`` entry in capitals names a metric group of :mod:`~.study`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from sidrec_core.config import ConfigError, _check_unique_keys
from sidrec_core.studies import study as S
from sidrec_core.studies.pipeline import PROJECT_ROOT
from sidrec_core.studies.study import Claim, Level, Reference, Study, one_key

CATALOGUE = PROJECT_ROOT / "studies.yaml"
SECTIONS = ("blocks", "studies", "tunables")  # blocks: YAML anchors the entries merge in
METRIC_GROUPS = {
    "TEST_KEYS": S.TEST_KEYS,
    "SID_QUALITY": S.SID_QUALITY,
    "GEN_KEYS": S.GEN_KEYS,
    "COST_KEYS": S.COST_KEYS,
}


def read_catalogue(section: str, path: Path = CATALOGUE) -> dict[str, dict[str, Any]]:
    """{entry name: raw mapping} of one section of the catalogue file."""
    try:
        text = path.read_text()
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from exc
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {key!r}; known: {', '.join(SECTIONS)}")
    entries = data.get(section) or {}
    for name, raw in entries.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: {section}.{name} must be a mapping")
    return entries


# what a field's annotation asks of its YAML value (first match; None allowed where it says so)
KINDS = {
    "tuple": (list, "a list"),
    "dict": (dict, "a mapping"),
    "Reference": (dict, "a mapping"),
    "bool": (bool, "true or false"),
    "float": ((int, float), "a number"),
    "int": (int, "an integer"),
    "str": (str, "a string"),
}


def check_keys(raw: dict[str, Any], cls: type, where: str, extra: tuple[str, ...] = ()) -> None:
    """Raise naming ``where.key`` (``where`` starts with the file's name) for a key that is no
    field of ``cls`` (nor in ``extra``) or a value of the wrong kind for its field."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in raw.items():
        if key not in fields and key not in extra:
            known = ", ".join(sorted({*fields, *extra}))
            raise ConfigError(f"{where}.{key}: unknown key; known: {known}")
        ann = fields.get(key)
        if ann is None or key in extra or (value is None and "None" in ann):
            continue
        kind, name = next(k for word, k in KINDS.items() if word in ann)
        if not isinstance(value, kind):
            raise ConfigError(f"{where}.{key}: expected {name}, got {value!r:.60}")


def _levels(raw: dict[str, Any], where: str) -> tuple[Level, ...]:
    formerly = raw.pop("formerly", None) or {}
    if ("levels" in raw) == ("one_key" in raw):
        raise ConfigError(f"{where}: give exactly one of levels, one_key")
    if "one_key" in raw:
        single = raw.pop("one_key")
        if not (isinstance(single, dict) and len(single) == 1):
            raise ConfigError(f"{where}.one_key: expected {{dotted.key: [values]}}")
        ((key, values),) = single.items()
        levels = {lv.label: lv.overrides for lv in one_key(key, list(values))}
    else:
        levels = raw.pop("levels")
    for label in (*levels, *formerly):
        if not isinstance(label, str) or label not in levels:
            raise ConfigError(f"{where}.levels: label {label!r} must be a quoted level name")
    for label, overrides in levels.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.levels.{label}: expected {{dotted.key: value}}")
    return tuple(
        Level(label, dict(o), tuple(formerly.get(label, ()))) for label, o in levels.items()
    )


def _study(name: str, raw: dict[str, Any], file: str) -> Study:
    where = f"{file}: studies.{name}"
    check_keys(raw, Study, where, extra=("levels", "one_key", "formerly"))
    if "name" in raw:
        raise ConfigError(f"{where}.name: the entry's key is its name")
    raw = dict(raw)
    levels = _levels(raw, where)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    if "fixed" in kw:
        kw["fixed"] = dict(kw["fixed"])  # a copy: a YAML alias shares one dict between studies
    if "secondary" in kw:
        kw["secondary"] = tuple(m for g in kw["secondary"] for m in METRIC_GROUPS.get(g, (g,)))
    for i, claim in enumerate(kw.get("claims", ())):
        check_keys(claim, Claim, f"{where}.claims[{i}]")
    kw["claims"] = tuple(Claim(**c) for c in kw.get("claims", ()))
    if kw.get("reference"):
        check_keys(kw["reference"], Reference, f"{where}.reference")
        kw["reference"] = Reference(
            **{**kw["reference"], "match": tuple(raw["reference"]["match"])}
        )
    kw["contrasts"] = tuple(tuple(c) for c in kw.get("contrasts", ()))
    try:
        return Study(name=name, levels=levels, **kw)
    except (TypeError, ValueError) as exc:  # a required field left out; a level or stage unknown
        raise ConfigError(f"{where}: {exc}") from exc


def load_studies(path: Path = CATALOGUE) -> dict[str, Study]:
    """Every study of the catalogue file, in file order."""
    return {n: _study(n, raw, path.name) for n, raw in read_catalogue("studies", path).items()}


STUDIES: dict[str, Study] = load_studies()


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study '{name}'; known: {', '.join(STUDIES)}")
    return STUDIES[name]
