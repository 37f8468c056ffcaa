"""Strict configuration: a params.yaml section -> one frozen dataclass.

Every component owns a frozen dataclass with its defaults in code. ``params.yaml`` only overrides
them; an unknown key or a value of the wrong type raises :class:`ConfigError` naming the dotted key
(e.g. ``sasrec.loss``). Stage scripts accept ``--params FILE`` and repeated ``--set a.b=value``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")

# Every top-level params section some stage reads. A section not listed here is a typo (``sasrc``)
# that would otherwise run silently with defaults, so loading rejects it.
SECTIONS: tuple[str, ...] = (
    "base",
    "data",
    "embed",
    "eval",
    "sid",
    "sidlm",
    "decoding",
    "rl",
    "sasrec",
    "report",
    "etegrec",
    "collab",
    "rpg",
)


class ConfigError(ValueError):
    """A params file or override does not match the config dataclasses."""


def load_params(path: str | Path) -> dict[str, Any]:
    """Read a YAML params file into a dict of sections; a missing file gives ``{}``-free error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    text = path.read_text()
    try:
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        data = yaml.safe_load(text) or {}
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {exc.problem or exc.context}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at top level, got {type(data).__name__}"
        )
    for key, value in data.items():
        check_section(key, str(path))
        if value is not None and not isinstance(value, dict):
            raise ConfigError(
                f"{path}: section '{key}' must be a mapping, got {type(value).__name__}"
            )
    return data


def _check_unique_keys(node: yaml.Node | None, path: Path, prefix: str = "") -> None:
    """Fail on a key repeated within one mapping, naming the dotted key and both lines: plain
    ``safe_load`` keeps the last value silently (``loss: bce`` then ``loss: ce`` trains ce)."""
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in first:
            raise ConfigError(
                f"{path}:{line}: duplicate key {key} (first on line {first[key]}); keep one"
            )
        first[key] = line
        _check_unique_keys(value_node, path, key)


def check_section(key: Any, where: str) -> None:
    """Raise naming ``key`` (and ``where`` it came from) unless it is a known section."""
    if key not in SECTIONS:
        raise ConfigError(
            f"{where}: unknown params section {key!r}; known sections: {', '.join(SECTIONS)}"
        )


def apply_overrides(params: dict[str, Any], sets: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a copy of ``params``."""
    out = json.loads(json.dumps(params))
    for item in sets or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE with a dotted key, got '{item}'")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set key must be 'section.key', got '{key}'")
        check_section(parts[0], f"--set {key.strip()}")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it (lists become tuples where typed so).

    Errors name the dotted ``key``.
    """
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    return value


def build(cls: type[T], section: dict[str, Any] | None, prefix: str) -> T:
    """Build frozen dataclass ``cls`` from ``section`` (overrides only), strict on keys/types."""
    section = section or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {section!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; "
            f"valid keys of '{prefix}': {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in section.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(_with_prefix(prefix, str(exc))) from exc


def _with_prefix(prefix: str, msg: str) -> str:
    """``msg`` led by the dotted ``prefix`` once: a message that already names the key in full
    (``rl.weights.cf ...``) or by its last part (``train.lr ...`` under ``sasrec.train``) is
    completed rather than prefixed again."""
    if msg.startswith(prefix) and msg[len(prefix) : len(prefix) + 1] in (".", ":", " "):
        return msg
    parent, _, last = prefix.rpartition(".")
    if parent and msg.startswith(last) and msg[len(last) : len(last) + 1] in (".", ":", " "):
        return f"{parent}.{msg}"
    return f"{prefix}: {msg}"


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (tuples become lists) for logging."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}`` for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of a params dict (for run tags)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """``base`` section: shared by every stage."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "npu"] = "auto"
    profile: str = "full"
    metrics_dir: str = "metrics"
    num_threads: int = 0  # 0 = leave torch's default

    def __post_init__(self) -> None:
        # numpy seeds must be >= 0; failing here names the key before any work starts
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (0 is a valid seed), got {self.seed}")
        if self.num_threads < 0:
            raise ValueError(
                f"num_threads must be >= 0 (0 = torch's default), got {self.num_threads}"
            )


def stage_parser(description: str) -> argparse.ArgumentParser:
    """The argument parser every stage script shares: ``--params FILE`` and ``--set a.b=value``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params YAML file")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. --set sasrec.loss=ce (repeatable)",
    )
    return parser


def load_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Params from ``--params`` and ``--set`` (a missing default params.yaml = all defaults)."""
    path = Path(args.params)
    params = load_params(path) if path.exists() or args.params != "params.yaml" else {}
    return apply_overrides(params, args.sets)
