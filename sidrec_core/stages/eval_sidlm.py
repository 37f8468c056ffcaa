"""DVC stage ``eval_sidlm``: one decoding pass over a fixed, seeded subsample of validation users
(``eval.max_valid_users``, the same users for every trial) and one over every test user, with the
``decoding`` section's strategy; both splits' metrics go to ``metrics/eval_sidlm.json`` and
MLflow, and the test pass's candidates are the predictions written to ``sidlm.predictions_dir``.

Cut-offs above the number of candidates the decoding returns are not reported (an HR@50 of a
20-candidate beam would only repeat HR@20).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import DataConfig
from sidrec_core.data.split import LeaveOneOut, Split, subsample_rows
from sidrec_core.evaluate import EvalConfig, EvalResult, evaluate
from sidrec_core.io import write_jsonl
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, load_inputs
from sidrec_core.stages.context import stage_context

log = logging.getLogger(__name__)
PREDICTIONS_FILE = "part-00000-of-00001.jsonl"
EVAL_KEYS = ("invalid_rate", "duplicate_rate", "users_per_second")


def reportable_ks(ks: tuple[int, ...], num_candidates: int) -> tuple[int, ...]:
    """The cut-offs a decoder returning ``num_candidates`` items can honestly report."""
    kept = tuple(k for k in ks if k <= num_candidates)
    if not kept:
        raise ValueError(
            f"eval.ks {list(ks)}: every cut-off exceeds the {num_candidates} candidates the "
            "decoding section returns; raise decoding.beam_width or lower eval.ks"
        )
    return kept


def prediction_rows(split: Split, res: EvalResult, user_ids: list[str]) -> list[dict[str, Any]]:
    """One row per scored user: id, history, target, candidates and their scores."""
    rows = []
    for i, (ids, scores) in enumerate(zip(res.item_ids, res.scores, strict=True)):
        keep = ids > 0
        u = int(split.users[i])
        rows.append(
            {
                "user": user_ids[u],
                "user_index": u,
                "history": [int(x) for x in split.histories[i] if x > 0],
                "target": int(split.targets[i]),
                "candidates": ids[keep].tolist(),
                "scores": scores[keep].astype(float).tolist(),
            }
        )
    return rows


@dataclasses.dataclass
class Scores:
    """One decoding pass per split: valid on the fixed subsample, test on every user."""

    valid: EvalResult
    test: EvalResult
    test_split: Split
    valid_users: int
    candidates_per_user: int

    def figures(self) -> dict[str, Any]:
        """What the metrics JSON records beside the split metrics."""
        return {
            "valid_users": self.valid_users,
            "test_users": len(self.test_split),
            "candidates_per_user": self.candidates_per_user,
            **{k: self.test.metrics[f"test/{k}"] for k in EVAL_KEYS},
            "test/ranks": self.test.ranks_record(),
        }


def reportable(model: SIDLM, ev: EvalConfig) -> EvalConfig:
    """``ev`` with the cut-offs ``model``'s candidate lists can fill."""
    ks = reportable_ks(ev.ks, model.num_candidates())
    if ks != tuple(ev.ks):
        log.info("%d candidates per user: reporting @%s only", model.num_candidates(), ks)
    return dataclasses.replace(ev, ks=ks)


def score_test(
    model: SIDLM, loo: LeaveOneOut, data: DataConfig, ev: EvalConfig, device: Any
) -> tuple[EvalResult, Split]:
    """The test pass of :func:`score` alone: every test user, the same decoding."""
    ev = reportable(model, ev)
    test = loo.split("test", data.max_history)
    res = evaluate(model, test, ev, device, num_items=loo.num_items, bootstrap=ev.bootstrap > 0)
    return res, test


def score(model: SIDLM, loo: LeaveOneOut, data: DataConfig, ev: EvalConfig, device: Any) -> Scores:
    """Evaluate ``model`` (its ``decoding`` already set) as ``eval_sidlm`` does."""
    ev = reportable(model, ev)
    valid = loo.split("valid", data.max_history)
    users = subsample_rows(len(valid), ev.max_valid_users)
    res_valid = evaluate(
        model, valid, ev, device, num_items=loo.num_items, bootstrap=False, users=users
    )
    res_test, test = score_test(model, loo, data, ev, device)
    n_valid = len(users) if users is not None else len(valid)
    return Scores(res_valid, res_test, test, n_valid, model.num_candidates())


def write_predictions(directory: str | Path, scores: Scores, user_ids: list[str]) -> Path:
    """The test pass's candidates as ``<directory>/part-00000-of-00001.jsonl`` (atomic)."""
    path = Path(directory) / PREDICTIONS_FILE
    for stale in path.parent.glob("part-*.jsonl"):  # shards of an earlier multi-process run
        if stale != path:
            stale.unlink()
    write_jsonl(path, prediction_rows(scores.test_split, scores.test, user_ids))
    return path


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Score the model saved by ``train_sidlm`` on valid (subsample) and test (every user)."""
    with stage_context(
        "eval_sidlm",
        params,
        data=DataConfig,
        eval=EvalConfig,
        sidlm=SIDLMConfig,
        decoding=DecodingConfig,
    ) as ctx:
        data, ev, cfg = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sidlm"]
        ds, loo, table = load_inputs(data, cfg.sid_dir)
        model = SIDLM.load(cfg.output_dir, table, cfg, data.max_history).to(ctx.device)
        model.decoding = ctx.cfg["decoding"]
        scores = score(model, loo, data, ev, ctx.device)
        ctx.run.log_metrics({**scores.valid.metrics, **scores.test.metrics})
        path = write_predictions(cfg.predictions_dir, scores, ds.user_ids)
        ctx.run.record(**scores.figures())
        ctx.record_sha256(read={"sidlm": cfg.output_dir, "sids": Path(cfg.sid_dir) / "codes.npy"})
        log.info("wrote %d predictions -> %s", len(scores.test_split), path)
        return ctx.result()
