"""The preamble every stage shares, written once: build the configs of the params sections the
stage reads, seed, set threads, resolve the device, open the tracking run.

>>> with stage_context("baselines", params, data=DataConfig, eval=EvalConfig) as ctx:
...     ctx.cfg["eval"].ks, ctx.device, ctx.run.record(...)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.tracking import Run, start_run
from sidrec_core.utils import resolve_device, seed_everything, set_threads


@dataclasses.dataclass
class StageContext:
    """Configs (``cfg[section]``), the resolved device and the open tracking run of a stage."""

    name: str
    base: BaseConfig
    cfg: dict[str, Any]
    device: torch.device
    run: Run

    @property
    def dataset(self) -> str:
        data = self.cfg.get("data")
        return getattr(data, "name", "?")

    def result(self) -> dict[str, Any]:
        """The flat metrics a stage returns (what it also wrote to ``metrics/<stage>.json``)."""
        return dict(self.run.metrics, **self.run.extra)


def build_configs(params: dict[str, Any], sections: dict[str, type]) -> dict[str, Any]:
    """``{section: frozen config}`` for each ``section -> dataclass`` (strict on keys/types)."""
    return {name: build(cls, params.get(name), name) for name, cls in sections.items()}


@contextlib.contextmanager
def stage_context(
    name: str,
    params: dict[str, Any],
    *,
    tags: dict[str, Any] | None = None,
    write_metrics: bool = True,
    device: torch.device | None = None,
    **sections: type,
) -> Iterator[StageContext]:
    """Configs, seed, threads, device and the tracking run of stage ``name``.

    ``sections`` maps each params section the stage reads (as listed in ``dvc.yaml``) to its
    config dataclass; ``base`` is always built. ``write_metrics=False`` skips
    ``metrics/<name>.json`` (non-main processes of a data-parallel run); ``device`` overrides the
    resolved one (accelerate's).
    """
    base = build(BaseConfig, params.get("base"), "base")
    cfg = build_configs(params, sections)
    seed_everything(base.seed)
    set_threads(base.num_threads)
    device = device or resolve_device(base.device)
    logged = {"base": to_dict(base), **{k: to_dict(v) for k, v in cfg.items()}}
    dataset = getattr(cfg.get("data"), "name", "?")
    with start_run(
        name,
        logged,
        dataset=dataset,
        profile=base.profile,
        device=device,
        metrics_dir=base.metrics_dir if write_metrics else None,
        tags=tags,
    ) as run:
        yield StageContext(name, base, cfg, device, run)
