"""The study catalogue ``studies.yaml``, read strictly into frozen dataclasses (studies here, search
spaces in :mod:`~.spaces`): an unknown or missing key or a value of the wrong kind is a one-line
ConfigError naming the file and dotted key. Levels are ``levels: {label: {dotted.key: value}}`` or
``one_key: {dotted.key: [values]}``; a ``secondary`` entry in capitals names a metric group."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from sidrec_core.config import ConfigError, _check_unique_keys
from sidrec_core.studies import study as S
from sidrec_core.studies.pipeline import PROJECT_ROOT
from sidrec_core.studies.study import Claim, Level, Note, Reference, Study, one_key

CATALOGUE = PROJECT_ROOT / "studies.yaml"
SECTIONS = ("blocks", "studies", "tunables")  # blocks: YAML anchors the entries merge in
METRIC_GROUPS = {g: getattr(S, g) for g in ("TEST_KEYS", "SID_QUALITY", "GEN_KEYS", "COST_KEYS")}
# what a field's annotation asks of its YAML value (first match; None where the type allows it)
KINDS = {
    "tuple": (list, "a list"),
    "dict": (dict, "a mapping"),
    "Reference": (dict, "a mapping"),
    "bool": (bool, "true or false"),
    "float": ((int, float), "a number"),
    "int": (int, "an integer"),
    "str": (str, "a string"),
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


def check_keys(raw: dict[str, Any], cls: type, where: str, extra: tuple = ()) -> None:
    """Raise naming ``where.key`` for a key that is no field of ``cls`` (nor in ``extra``) or a
    value of the wrong kind for its field."""
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


def build(cls: type, raw: dict[str, Any], where: str, extra: tuple = (), **given: Any) -> Any:
    """``cls(**raw)`` once :func:`check_keys` passes, lists as tuples, ``given`` replacing raw
    fields (``extra`` keys left out); a rejected value raises naming ``where``."""
    check_keys(raw, cls, where, extra)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k not in extra}
    try:
        return cls(**{**kw, **given})
    except (TypeError, ValueError) as exc:  # a required field left out; a level or stage unknown
        raise ConfigError(f"{where}: {exc}") from exc


def _levels(raw: dict[str, Any], where: str) -> tuple[Level, ...]:
    formerly = raw.get("formerly") or {}
    if ("levels" in raw) == ("one_key" in raw):
        raise ConfigError(f"{where}: give exactly one of levels, one_key")
    levels = raw.get("levels")
    if "one_key" in raw:
        if not (isinstance(raw["one_key"], dict) and len(raw["one_key"]) == 1):
            raise ConfigError(f"{where}.one_key: expected {{dotted.key: [values]}}")
        ((key, values),) = raw["one_key"].items()
        levels = {lv.label: lv.overrides for lv in one_key(key, list(values))}
    for label in (*levels, *formerly):
        if not isinstance(label, str) or label not in levels:
            raise ConfigError(f"{where}.levels: label {label!r} must be a quoted level name")
    for label, overrides in levels.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.levels.{label}: expected {{dotted.key: value}}")
    return tuple(Level(lb, dict(o), tuple(formerly.get(lb, ()))) for lb, o in levels.items())


def _note(raw: Any, where: str) -> Note:
    """A note: a string (about every dataset) or ``{text: ..., datasets: [...]}``."""
    if isinstance(raw, str):
        return Note(raw)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a string or a mapping (text, datasets), got {raw!r:.60}"
        )
    return build(Note, raw, where)


def _study(name: str, raw: dict[str, Any], file: str) -> Study:
    where = f"{file}: studies.{name}"
    if "name" in raw:
        raise ConfigError(f"{where}.name: the entry's key is its name")
    extra = ("levels", "one_key", "formerly")
    check_keys(raw, Study, where, extra)
    given: dict[str, Any] = {"name": name, "levels": _levels(raw, where)}
    if "fixed" in raw:
        given["fixed"] = dict(raw["fixed"] or {})  # a copy: a YAML alias shares one dict
    if "secondary" in raw:
        given["secondary"] = tuple(m for g in raw["secondary"] for m in METRIC_GROUPS.get(g, (g,)))
    claims = raw.get("claims") or ()
    given["claims"] = tuple(build(Claim, c, f"{where}.claims[{i}]") for i, c in enumerate(claims))
    if raw.get("reference"):
        ref = raw["reference"]
        given["reference"] = build(Reference, ref, f"{where}.reference", match=tuple(ref["match"]))
    given["contrasts"] = tuple(tuple(c) for c in raw.get("contrasts") or ())
    given["notes"] = tuple(
        _note(n, f"{where}.notes[{i}]") for i, n in enumerate(raw.get("notes") or ())
    )
    return build(Study, raw, where, extra, **given)


def load_studies(path: Path = CATALOGUE) -> dict[str, Study]:
    """Every study of the catalogue file, in file order."""
    return {n: _study(n, raw, path.name) for n, raw in read_catalogue("studies", path).items()}


STUDIES: dict[str, Study] = load_studies()


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise KeyError(f"unknown study '{name}'; known: {', '.join(STUDIES)}")
    return STUDIES[name]
