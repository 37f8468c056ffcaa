"""Reference recommenders: MostPop (training-split popularity) and Random (seeded). Neither
is trained by gradient, so they implement only ``recommend``; ``run_baselines`` is the
``baselines`` pipeline stage."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import LeaveOneOut, leave_one_out
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.models.base import topk_items
from sidrec_core.tracking import start_run


class MostPop:
    """Ranks every item by its interaction count in the training part of the split."""

    def __init__(self, loo: LeaveOneOut):
        self.counts = torch.as_tensor(loo.train_item_counts(), dtype=torch.float32)

    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        scores = self.counts.to(batch["history"].device).expand(batch["history"].shape[0], -1)
        return topk_items(scores, k)


class RandomRec:
    """A uniformly random ranking per user, reproducible for a seed."""

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items = num_items
        self.generator = torch.Generator().manual_seed(seed)

    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        b = batch["history"].shape[0]
        scores = torch.rand(b, self.num_items + 1, generator=self.generator)
        ids, s = topk_items(scores, k)
        return ids.to(batch["history"].device), s.to(batch["history"].device)


def run_baselines(params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate MostPop and Random on valid and test -> ``metrics/baselines.json``."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    ev = build(EvalConfig, params.get("eval"), "eval")
    cfgs = {"base": to_dict(base), "data": to_dict(data), "eval": to_dict(ev)}
    loo = leave_one_out(load_prepared(data.prepared_dir))
    out: dict[str, Any] = {}
    with start_run(
        "baselines", cfgs, dataset=data.name, profile=base.profile, metrics_dir=base.metrics_dir
    ) as parent:
        for name, rec in (
            ("mostpop", MostPop(loo)),
            ("random", RandomRec(loo.num_items, base.seed)),
        ):
            with start_run(
                f"baselines/{name}",
                cfgs,
                dataset=data.name,
                profile=base.profile,
                metrics_dir=None,
                nested=True,
                tags={"model": name},
            ) as run:
                metrics: dict[str, float] = {}
                for split in ("valid", "test"):
                    res = evaluate(
                        rec, loo.split(split, data.max_history), ev, num_items=loo.num_items
                    )
                    metrics.update(res.metrics)
                run.log_metrics(metrics)
                out[name] = metrics
        parent.record(**out)
    return {f"{m}/{k}": v for m, d in out.items() for k, v in d.items()}
