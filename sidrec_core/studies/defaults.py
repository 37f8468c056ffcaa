"""Which defaults a study's trials ran on. A level is a set of overrides on the launch's params
(``params.yaml``, the profile, ``--set``, the study's ``fixed``), so when a default changes, the
same level measures another model. Each Optuna study records those params (restricted to the
sections its stages read, without the seed) as ``defaults``; a launch on other defaults opens a
new Optuna study ``<study>-<profile>@<sha>`` beside the old one, whose trials then stand as the
answer on the earlier defaults (their report section says which values differed).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from typing import Any

import optuna
from optuna.storages import BaseStorage

from sidrec_core.config import ConfigError, flatten, load_params
from sidrec_core.stages import resolve_params
from sidrec_core.studies.pipeline import PROJECT_ROOT, load_pipeline
from sidrec_core.studies.profiles import launch_params, profile_path, with_overrides
from sidrec_core.studies.study import Study

DEFAULTS = "defaults"  # the Optuna study's user attr
MARK = "@"  # <study>-<profile>@<sha>: a profile's Optuna study on later defaults


def effective_defaults(study: Study, params: dict[str, Any]) -> dict[str, Any]:
    """What every level of ``study`` overrides: the resolved ``params`` with the study's ``fixed``,
    the sections its stages (run and reuse) read, without ``base.seed`` (a grid axis) and
    without a key every level sets (its default reaches no trial: a change of the factor's own
    default, ``rpg_input`` text -> both, leaves the trials current)."""
    pipeline = load_pipeline()
    read = {p.split(".")[0] for s in (*study.run, *study.reuse) for p in pipeline[s].params}
    flat = flatten(resolve_params(with_overrides(params, study.fixed)))
    every = set_by_every_level(study)
    kept = {
        k: v
        for k, v in flat.items()
        if k.split(".")[0] in read and k != "base.seed" and k not in every
    }
    return json.loads(json.dumps(kept, sort_keys=True))  # as the storage reads it back


def set_by_every_level(study: Study) -> set[str]:
    """The keys every level of ``study`` overrides (the factor's own): no default reaches them."""
    return set.intersection(*(set(flatten(lv.overrides)) for lv in study.levels))


def digest(defaults: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(defaults, sort_keys=True).encode()).hexdigest()[:8]


def profile_of(label: str) -> str:
    """``beauty@1a2b3c4d`` -> ``beauty``."""
    return label.split(MARK, 1)[0]


def current_labels(labels: Iterable[str]) -> dict[str, str]:
    """{profile: its label on the latest defaults}: the last of its labels in creation order
    (the order a storage lists its Optuna studies)."""
    return {profile_of(label): label for label in labels}


def same_defaults(recorded: dict[str, Any], now: dict[str, Any]) -> bool:
    """Equal on every key both hold: a knob added since takes, by this project's rule, the value
    that keeps the model as it was; a knob removed since cannot be set any more."""
    return all(recorded[k] == now[k] for k in recorded.keys() & now.keys())


def section_defaults(study: Study, ostudy: optuna.Study) -> dict[str, Any]:
    """The defaults a launch of ``study`` today would record for the section ``ostudy``: the
    repository's params with the section's profile and the ``--set`` overrides it recorded."""
    name = ostudy.study_name.removeprefix(f"{study.name}-")
    profile = str(ostudy.user_attrs.get("profile") or profile_of(name))
    own = flatten(load_params(profile_path(profile)))
    recorded = ostudy.user_attrs.get("profile_overrides") or {}
    sets = [f"{k}={v}" for k, v in recorded.items() if own.get(k) != v]
    return effective_defaults(study, launch_params(profile, PROJECT_ROOT / "params.yaml", sets))


def on_todays_defaults(study: Study, ostudy: optuna.Study) -> bool:
    """Whether the section's trials ran on the defaults a launch today would use (a section
    recording none predates the record and is taken as current, as its reports take it)."""
    recorded = ostudy.user_attrs.get(DEFAULTS)
    return recorded is None or same_defaults(recorded, section_defaults(study, ostudy))


def optuna_name(storage: BaseStorage, study: str, profile: str, defaults: dict[str, Any]) -> str:
    """The Optuna study of ``study`` x ``profile`` that recorded ``defaults``; else the name a new
    one takes: ``<study>-<profile>`` for the profile's first, ``<study>-<profile>@<sha>`` after."""
    first = f"{study}-{profile}"
    names = [
        n for n in optuna.get_all_study_names(storage) if n == first or n.startswith(first + MARK)
    ]
    for name in names:
        recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get(DEFAULTS)
        if recorded is None:
            raise ConfigError(
                f"Optuna study {name!r} records no {DEFAULTS!r}: which defaults its trials ran on "
                "is unknown (python bench/stamp_defaults.py records them for a storage)"
            )
        if same_defaults(recorded, defaults):
            return name
    return f"{first}{MARK}{digest(defaults)}" if names else first


def changed_text(earlier: dict[str, Any], now: dict[str, Any]) -> str:
    """``key=old (now new)`` for every value both hold that differs."""
    keys = sorted(k for k in earlier.keys() & now.keys() if earlier[k] != now[k])
    shown = (f"`{k}={json.dumps(earlier[k])}` (now {json.dumps(now[k])})" for k in keys)
    return ", ".join(shown) or "none"


def departures(study: Study, ostudy: optuna.Study | None = None) -> dict[str, Any]:
    """Where trials run off the pipeline default (params.yaml + code defaults): the study's
    ``fixed`` overrides; for a section that recorded its defaults, every value those hold that the
    pipeline does not (a fixed override, or a default changed since it ran), the profile's own
    values left out. Pinned keys come first, in the study's order."""
    pipeline = pipeline_params()
    recorded = ostudy.user_attrs.get(DEFAULTS) if ostudy is not None else None
    pinned = list(dict.fromkeys(k for f in (study.fixed, *study.formerly_fixed) for k in f))
    if recorded is None:
        held, profile = study.fixed, set()
    else:
        held = recorded
        profile = {"base.profile", *(ostudy.user_attrs.get("profile_overrides") or {})}
        profile -= set(pinned)
        profile |= set_by_every_level(study)  # recorded before such keys were left out
    off = {
        k: v
        for k, v in held.items()
        if k not in profile and (k not in pipeline or pipeline[k] != v)
    }
    return {k: off[k] for k in [*pinned, *sorted(off)] if k in off}


@functools.cache
def pipeline_params() -> dict[str, Any]:
    """The pipeline default (``params.yaml`` + code defaults), flat, JSON-normalised as a
    recorded ``defaults`` reads back."""
    flat = flatten(resolve_params(load_params(PROJECT_ROOT / "params.yaml")))
    return json.loads(json.dumps(flat, sort_keys=True))
