"""Bench-side variant of the SID-LM evaluation stage: test metrics as the DVC ``eval_sidlm``
stage reports them, plus the validation split scored with the trial's decoding settings.

An ablation chooses on ``valid/ndcg@10`` (choosing on test would leak the test targets), and a
generation study (beam width, decoding strategy) changes only evaluation, so the validation
figures must come from the same decoding settings as the test ones. With ``bench.max_eval_users``
(the ``dev`` profile) both splits are scored on one seeded subsample of users, the same for every
level and seed so comparisons stay paired; without it, the full DVC stage runs and validation
users are subsampled as during training (``eval.max_valid_users``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from sidrec_core.config import build, to_dict
from sidrec_core.evaluate import evaluate
from sidrec_core.models.sidlm_runner import EVAL_KEYS, run_eval_sidlm, setup
from sidrec_core.tracking import start_run

VALID_KEY = "valid/ndcg@10"
SUBSAMPLE_SEED = 0  # fixed: every level and seed scores the same users


@dataclasses.dataclass(frozen=True)
class BenchEvalConfig:
    """``bench`` section (ablation bench only; the DVC pipeline never reads it)."""

    max_eval_users: int | None = None  # score valid and test on this many users (None = all)

    def __post_init__(self) -> None:
        if self.max_eval_users is not None and self.max_eval_users < 1:
            raise ValueError(f"max_eval_users must be >= 1, got {self.max_eval_users}")


def _rows(n: int, limit: int | None, seed: int) -> np.ndarray | None:
    if not limit or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))


def run_eval_sidlm_with_valid(params: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the trained SID LM on valid and test -> flat ``{split}/{metric}@{k}`` metrics
    (+ ``metrics/eval_sidlm.json``)."""
    bench = build(BenchEvalConfig, params.get("bench"), "bench")
    if bench.max_eval_users is None:
        out = dict(run_eval_sidlm(params))
        if VALID_KEY in out:
            return out
    s = setup(params)
    base, data, ev, cfg, device, ds, loo = s.base, s.data, s.eval, s.cfg, s.device, s.ds, s.loo
    model = s.load_model()
    valid = loo.split("valid", data.max_history)
    if bench.max_eval_users is None:  # full test already scored by the DVC stage above
        users = _rows(len(valid), ev.max_valid_users, base.seed)
        res = evaluate(
            model, valid, ev, device, num_items=ds.num_items, bootstrap=False, users=users
        )
        return {**out, **res.metrics}
    test = loo.split("test", data.max_history)
    configs = {
        "base": to_dict(base),
        "data": to_dict(data),
        "eval": to_dict(ev),
        "sidlm": to_dict(cfg),
        "bench": to_dict(bench),
    }
    with start_run(
        "eval_sidlm",
        configs,
        dataset=ds.name,
        profile=base.profile,
        device=device,
        metrics_dir=base.metrics_dir,
        tags={"eval_users": bench.max_eval_users},
    ) as run:
        for split in (valid, test):
            users = _rows(len(split), bench.max_eval_users, SUBSAMPLE_SEED)
            res = evaluate(
                model,
                split,
                ev,
                device,
                num_items=ds.num_items,
                bootstrap=ev.bootstrap > 0,
                users=users,
            )
            run.log_metrics(res.metrics)
        run.record(
            eval_users=len(users) if users is not None else len(test),
            **{k: run.metrics[f"test/{k}"] for k in EVAL_KEYS if f"test/{k}" in run.metrics},
        )
        return dict(run.metrics, **run.extra)
