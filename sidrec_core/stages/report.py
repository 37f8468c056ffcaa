"""DVC stage ``report``: the headline table beside published figures and the SID quality
metrics (:mod:`sidrec_core.pipeline_report`) -> ``report.output`` and ``report.plot_data``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidrec_core.io import write_text
from sidrec_core.pipeline_report import (
    ReportConfig,
    collect_rows,
    headline,
    load_metrics,
    render,
    write_plot_data,
)
from sidrec_core.stages.context import stage_context


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Read ``metrics/*.json`` -> the markdown report and its plot CSV."""
    with stage_context("report", params, report=ReportConfig) as ctx:
        cfg = ctx.cfg["report"]
        metrics_dir = Path(ctx.base.metrics_dir)
        rows = collect_rows(metrics_dir, params)
        sids = load_metrics(metrics_dir / "build_sids.json")
        from sidrec_core.studies.pipeline import load_pipeline  # imports the stage registry

        # the stages' metrics files the report reads: its metrics deps in dvc.yaml
        deps = [Path(d) for d in load_pipeline()["report"].deps if d.startswith("metrics/")]
        files = {d.stem: load_metrics(metrics_dir / d.name) or {} for d in deps}
        found = [d.get("dataset") for d in (*files.values(), *rows) if d.get("dataset")]
        dataset = found[0] if found else "?"
        write_text(cfg.output, render(rows, sids, ctx.base.profile, dataset))
        write_plot_data(rows, Path(cfg.plot_data))
        ctx.run.log_artifact(cfg.output)
        ctx.run.set_tags({"dataset": dataset})
        walls = {n: d["wall_seconds"] for n, d in files.items() if "wall_seconds" in d}
        ctx.run.record(
            dataset=dataset,
            num_models=len(rows),
            has_sid_metrics=int(sids is not None),
            **headline(rows, sids, walls),
        )
        return ctx.result()
