"""The preamble every stage shares, written once: build the configs of the params sections the
stage reads, seed, set threads, resolve the device, open the tracking run.

>>> with stage_context("baselines", params, data=DataConfig, eval=EvalConfig) as ctx:
...     ctx.cfg["eval"].ks, ctx.device, ctx.run.record(...)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sidrec_core.callbacks import Callback, LogToRun
from sidrec_core.config import BaseConfig, ConfigError, build, to_dict
from sidrec_core.io import path_sha256
from sidrec_core.tracking import Run, start_run
from sidrec_core.train import check_validated_monitor
from sidrec_core.utils import resolve_device, seed_everything, set_threads


@dataclasses.dataclass
class StageContext:
    """Configs (``cfg[section]``), the resolved device and the open tracking run of a stage."""

    name: str
    base: BaseConfig
    cfg: dict[str, Any]
    device: torch.device
    run: Run
    # where this run's metrics files go (see metrics_dir_for): side files such as per-epoch
    # curves belong there too, so a redirected run leaves the tracked metrics/ alone
    metrics_dir: str = BaseConfig.metrics_dir
    # what the stage passes to its training loop: the run's per-epoch logging, and under a
    # tuning trial the trial's pruning (see trial_callbacks)
    callbacks: list[Callback] = dataclasses.field(default_factory=list)

    @property
    def dataset(self) -> str:
        data = self.cfg.get("data")
        return getattr(data, "name", "?")

    def fingerprint(self, **extra: Any) -> dict[str, Any]:
        """What a resumable run must match to continue: every config it read (+ ``extra``)."""
        return {"base": to_dict(self.base), **{k: to_dict(v) for k, v in self.cfg.items()}, **extra}

    def record_sha256(
        self, read: dict[str, str | Path] | None = None, wrote: dict[str, str | Path] | None = None
    ) -> None:
        """Record ``sha256/read/<name>`` and ``sha256/wrote/<name>`` of each file or folder the
        stage read or wrote (:func:`~sidrec_core.io.path_sha256`): two trials are compared only
        where the inputs they did not make themselves are equal
        (:func:`sidrec_core.studies.fingerprints.upstream`)."""
        for kind, paths in (("read", read or {}), ("wrote", wrote or {})):
            self.run.record(**{f"sha256/{kind}/{k}": path_sha256(p) for k, p in paths.items()})

    def result(self) -> dict[str, Any]:
        """The flat metrics a stage returns (what it also wrote to ``metrics/<stage>.json``)."""
        return dict(self.run.metrics, **self.run.extra)


def metrics_dir_for(base: BaseConfig, cfg: dict[str, Any], output_key: str | None) -> str:
    """``base.metrics_dir``, except when the stage's output (``output_key``, e.g.
    ``sid.output_dir`` or the nested ``rpg.sid.output_dir``) was moved off its default while the
    metrics folder was not: then the metrics go beside that output, so an exploratory run never
    overwrites the pipeline's tracked ``metrics/<stage>.json``."""
    if output_key is None or base.metrics_dir != BaseConfig.metrics_dir:
        return base.metrics_dir
    section, *inner, field = output_key.split(".")
    owner = cfg[section]
    for name in inner:  # a nested subsection's key, e.g. rpg.sid.output_dir
        owner = getattr(owner, name)
    value = str(getattr(owner, field))
    default = next(f.default for f in dataclasses.fields(owner) if f.name == field)
    if value == str(default):
        return base.metrics_dir
    path = Path(value)
    return str((path.parent if path.suffix else path) / "metrics")


def build_configs(
    params: dict[str, Any], sections: dict[str, type], trains: str | None = None
) -> dict[str, Any]:
    """``{section: frozen config}`` for each ``section -> dataclass`` (strict on keys/types).

    ``trains`` is the dotted key of the training config the stage fits and validates with
    ``eval`` (``sasrec.train``): its ``monitor`` must be a metric validation reports, checked
    here, before any data loads, rather than after the first epoch.
    """
    cfg = {name: build(cls, params.get(name), name) for name, cls in sections.items()}
    if trains is not None:
        section, *path = trains.split(".")
        train = cfg[section]
        for name in path:
            train = getattr(train, name)
        try:
            check_validated_monitor(f"{trains}.monitor", train.monitor, cfg["eval"].ks)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return cfg


TRIAL_ENV = "SIDREC_OPTUNA_TRIAL"  # set by the tuner (sidrec_core.studies.tuning) for its stages


def trial_callbacks() -> list[Callback]:
    """Under a tuning trial (``SIDREC_OPTUNA_TRIAL`` in the environment, set by the tuner for the
    DVC processes it starts), the callback reporting every validation to the trial, whose pruner
    may stop the training; otherwise none."""
    spec = os.environ.get(TRIAL_ENV)
    if not spec:
        return []
    from sidrec_core.studies.tuning import TrialPruning

    return [TrialPruning(json.loads(spec))]


@contextlib.contextmanager
def stage_context(
    name: str,
    params: dict[str, Any],
    *,
    tags: dict[str, Any] | None = None,
    write_metrics: bool = True,
    device: torch.device | None = None,
    output_key: str | None = None,
    trains: str | None = None,
    **sections: type,
) -> Iterator[StageContext]:
    """Configs, seed, threads, device and the tracking run of stage ``name``.

    ``sections`` maps each params section the stage reads (as listed in ``dvc.yaml``) to its
    config dataclass; ``base`` is always built. ``write_metrics=False`` skips
    ``metrics/<name>.json`` (non-main processes of a data-parallel run); ``device`` overrides the
    resolved one (accelerate's); ``output_key`` names the stage's main output (see
    :func:`metrics_dir_for`); ``trains`` the training config it fits (see
    :func:`build_configs`).
    """
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build_configs(params, sections, trains)
    seed_everything(base.seed)
    set_threads(base.num_threads)
    device = device or resolve_device(base.device)
    logged = {"base": to_dict(base), **{k: to_dict(v) for k, v in cfg.items()}}
    dataset = getattr(cfg.get("data"), "name", "?")
    metrics_dir = metrics_dir_for(base, cfg, output_key)
    with start_run(
        name,
        logged,
        dataset=dataset,
        profile=base.profile,
        device=device,
        metrics_dir=metrics_dir if write_metrics else None,
        tags=tags,
    ) as run:
        callbacks = [LogToRun(run), *trial_callbacks()]
        yield StageContext(name, base, cfg, device, run, metrics_dir, callbacks)
