"""DVC stage ``baselines``: MostPop and Random on valid and test (reference rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidrec_core.config import to_dict
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.models.baselines import MostPop, RandomRec
from sidrec_core.stages.context import stage_context
from sidrec_core.tracking import start_run


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``metrics/baselines.json`` with ``{model}/{split}/{metric}@{k}`` keys."""
    with stage_context("baselines", params, data=DataConfig, eval=EvalConfig) as ctx:
        data, ev = ctx.cfg["data"], ctx.cfg["eval"]
        loo = leave_one_out(load_prepared(data.prepared_dir))
        out: dict[str, Any] = {}
        logged = {k: to_dict(v) for k, v in ctx.cfg.items()}
        for name, rec in (
            ("mostpop", MostPop(loo)),
            ("random", RandomRec(loo.num_items, ctx.base.seed)),
        ):
            with start_run(
                f"baselines/{name}",
                logged,
                dataset=data.name,
                profile=ctx.base.profile,
                metrics_dir=None,
                nested=True,
                tags={"model": name},
            ) as run:
                metrics: dict[str, Any] = {}
                for split in ("valid", "test"):
                    res = evaluate(
                        rec, loo.split(split, data.max_history), ev, num_items=loo.num_items
                    )
                    metrics.update(res.metrics)
                run.log_metrics(metrics)
                out[name] = dict(metrics, **{"test/ranks": res.ranks_record()})
        ctx.run.record(**out)
        ctx.record_sha256(read={"prepared": Path(data.prepared_dir) / "dataset.npz"})
    return {f"{m}/{k}": v for m, d in out.items() for k, v in d.items()}
