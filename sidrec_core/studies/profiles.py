"""Run profiles: params overrides in ``experiments/profiles/<name>.yaml`` (``smoke``: synthetic
corpus; ``dev``: Beauty, reduced training; ``full``: params.yaml as is), merged over the params
file with ``base.profile`` set so the name lands in every run's tags and report."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from sidrec_core.config import ConfigError, apply_overrides, flatten, load_params

PROFILES_DIR = Path(__file__).resolve().parents[2] / "experiments" / "profiles"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``over`` merged in (mappings recursively, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both else copy.deepcopy(value)
    return out


def get_dotted(params: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with each ``dotted.key: value`` set (sections created as needed)."""
    out = copy.deepcopy(params)
    for key, value in overrides.items():
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: '{part}' is not a section")
        node[last] = value
    return out


def profile_path(name: str, profiles_dir: str | Path | None = None) -> Path:
    path = Path(profiles_dir or PROFILES_DIR) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"unknown profile '{name}' (no {path}); known: {', '.join(known)}")
    return path


def load_profile(
    name: str, params: dict[str, Any], profiles_dir: str | Path | None = None
) -> dict[str, Any]:
    """``params`` with the profile's overrides merged in and ``base.profile`` set to ``name``."""
    merged = deep_merge(params, load_params(profile_path(name, profiles_dir)))
    return with_overrides(merged, {"base.profile": name})


def launch_params(profile: str, params_file: str | Path, sets: list[str]) -> dict[str, Any]:
    """The params a launch runs on: ``params_file`` (missing: all defaults), the profile's
    overrides, the ``--set`` ones."""
    params = load_params(Path(params_file)) if Path(params_file).exists() else {}
    return apply_overrides(load_profile(profile, params), sets)


def dvc_set_args(name: str, profiles_dir: str | Path | None = None) -> list[str]:
    """The profile as ``dvc exp run`` flags ``-S ++key=value`` (``++``: add or override)."""
    over = load_params(profile_path(name, profiles_dir))
    over.setdefault("base", {})["profile"] = name
    args: list[str] = []
    for key, value in flatten(over).items():
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        args += ["-S", f"++{key}={text}"]
    return args
