"""Run profiles: params override files under ``experiments/profiles/<name>.yaml``.

``smoke`` (synthetic corpus, a whole study in under 2 minutes), ``dev`` (Beauty, reduced
training) and ``full`` (``params.yaml`` as is). A profile is merged over the params file; every
profile sets ``base.profile`` so its name lands in every run's tags and every report. For DVC,
``dvc exp run $(python bench/ablate.py --profile dev --dvc-args)`` applies the same overrides as
``-S`` flags, so the experiment records them.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from sidrec_core.config import ConfigError, flatten, load_params

PROFILES_DIR = Path(__file__).resolve().parents[2] / "experiments" / "profiles"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``over`` merged in (mappings recursively, other values replaced)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(p, "sidlm.decoding.beam_width", 5)`` creating sections as needed."""
    parts = key.split(".")
    node = params
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: '{part}' is not a section")
    node[parts[-1]] = value


def get_dotted(params: dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def with_overrides(params: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(params)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def profile_path(name: str, profiles_dir: str | Path | None = None) -> Path:
    path = Path(profiles_dir or PROFILES_DIR) / f"{name}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(profiles_dir or PROFILES_DIR).glob("*.yaml"))
        raise ConfigError(f"unknown profile '{name}' (no {path}); known: {', '.join(known)}")
    return path


def load_profile(
    name: str, params: dict[str, Any], profiles_dir: str | Path | None = None
) -> dict[str, Any]:
    """``params`` with the profile's overrides merged in and ``base.profile`` set to ``name``."""
    merged = deep_merge(params, load_params(profile_path(name, profiles_dir)))
    set_dotted(merged, "base.profile", name)
    return merged


def dvc_set_args(name: str, profiles_dir: str | Path | None = None) -> list[str]:
    """The profile as ``-S ++key=value`` pairs for ``dvc exp run`` (values in compact JSON/YAML;
    ``++`` adds a key params.yaml lacks or overrides one it has, Hydra's override grammar)."""
    over = load_params(profile_path(name, profiles_dir))
    over.setdefault("base", {})["profile"] = name
    args: list[str] = []
    for key, value in flatten(over).items():
        if value is None:
            text = "null"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, separators=(",", ":"))
        args += ["-S", f"++{key}={text}"]
    return args
