"""DVC stage ``prepare``: load and validate the dataset, write ``data.prepared_dir``."""

from __future__ import annotations

from typing import Any

from sidrec_core.data.dataset import DataConfig, load_dataset, save_prepared
from sidrec_core.stages.context import stage_context


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``data.prepared_dir`` and ``metrics/prepare.json`` (counts, dropped users)."""
    with stage_context("prepare", params, data=DataConfig) as ctx:
        data = ctx.cfg["data"]
        ds = load_dataset(data, seed=ctx.base.seed)
        save_prepared(ds, data.prepared_dir)
        ctx.run.record(**ds.counts(), **{f"dropped_{k}": v for k, v in ds.dropped.items()})
        return ctx.result()
