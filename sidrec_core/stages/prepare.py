"""DVC stage ``prepare``: load and validate the dataset, write ``data.prepared_dir``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import DataConfig, load_dataset, save_prepared
from sidrec_core.stages.context import stage_context


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``data.prepared_dir`` and ``metrics/prepare.json`` (counts, dropped users)."""
    with stage_context("prepare", params, output_key="data.prepared_dir", data=DataConfig) as ctx:
        data = ctx.cfg["data"]
        ds = load_dataset(data, seed=ctx.base.seed)
        save_prepared(ds, data.prepared_dir)
        ctx.run.record(
            **ds.counts(),
            **{f"dropped_{k}": v for k, v in ds.dropped.items()},
            data_sha256=ds.data_sha256(),  # None for the generated synthetic corpus
            data_files={Path(p).name: h for p, h in ds.sources.items()},
        )
        return ctx.result()
