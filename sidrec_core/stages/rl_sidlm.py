"""DVC stage ``rl_sidlm``: GRPO-tune the trained SID LM, save it, evaluate it like ``eval_sidlm``.

Reads the ``rl`` section (:class:`~sidrec_core.rl.grpo.RLConfig`) plus what ``eval_sidlm`` reads
(``base``, ``data``, ``eval``, ``sidlm``); the cf reward also reads ``sasrec`` (architecture and
checkpoint of the reward model), the semantic reward ``embed.output``. The tuned model is saved
atomically to ``rl.output_dir`` and scored on the test split with the same evaluator, users and
decoding (``sidlm.decoding``) as ``eval_sidlm``, so ``metrics/rl_sidlm.json`` and
``metrics/eval_sidlm.json`` compare directly. Per-step curves (mean reward per reward function,
KL, group HR@1) go to MLflow and ``metrics/rl_sidlm_curves.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec_core.config import build, to_dict
from sidrec_core.data.embeddings import EmbedConfig
from sidrec_core.data.split import LeaveOneOut
from sidrec_core.evaluate import evaluate
from sidrec_core.io import write_json
from sidrec_core.models.sasrec import SASRecConfig
from sidrec_core.models.sasrec_stage import build_sasrec, sid_dir_from
from sidrec_core.models.sidlm_runner import EVAL_KEYS, save_dir_atomic, setup
from sidrec_core.rl.grpo import RewardInputs, RLConfig, train_grpo
from sidrec_core.rl.rewards import CFScorer
from sidrec_core.rl.rollout import rl_rows
from sidrec_core.tracking import start_run

log = logging.getLogger(__name__)
STAGE = "rl_sidlm"


def load_cf_scorer(
    params: dict[str, Any], loo: LeaveOneOut, path: str, device: torch.device
) -> CFScorer:
    """The trained SASRec (``sasrec`` section + its saved state dict) as a cf reward model."""
    cfg = build(SASRecConfig, params.get("sasrec"), "sasrec")
    model = build_sasrec(cfg, loo, sid_dir_from(params))
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return CFScorer(model.to(device), cfg.max_history)


def load_item_embeddings(path: str, num_items: int) -> torch.Tensor:
    """``embed.output`` [N, D] (row i - 1 = item i) -> float [N + 1, D] with a zero row 0."""
    vectors = np.load(path)
    if vectors.ndim != 2 or vectors.shape[0] != num_items:
        raise ValueError(
            f"rl.embeddings: {path} has shape {vectors.shape}, expected [{num_items}, D] "
            "(one row per item of the dataset)"
        )
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    return torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])


def _summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every per-step figure over the last epoch's steps."""
    last_epoch = max((i for i, r in enumerate(history) if "epoch" in r), default=len(history))
    first = max((i + 1 for i, r in enumerate(history[:last_epoch]) if "epoch" in r), default=0)
    steps = [r for r in history[first:last_epoch] if "step" in r]
    keys = sorted({k for r in steps for k in r if k.startswith("rl/")})
    return {f"{k}_last_epoch": float(np.mean([r[k] for r in steps if k in r])) for k in keys}


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Load the trained SID LM, run GRPO, save to ``rl.output_dir``, evaluate on test."""
    s = setup(params)
    rl = build(RLConfig, params.get("rl"), "rl")
    rl.check_num_sids(s.table.num_items)
    cf_path = rl.cf_checkpoint or build(SASRecConfig, params.get("sasrec"), "sasrec").checkpoint
    emb_path = rl.embeddings or build(EmbedConfig, params.get("embed"), "embed").output
    rl.check_reward_inputs(cf_path, emb_path)
    device = s.device
    model = s.load_model()
    inputs = RewardInputs(
        embeddings=(
            load_item_embeddings(emb_path, s.ds.num_items).to(device)
            if rl.weights.semantic > 0
            else None
        ),
        scorer=load_cf_scorer(params, s.loo, cf_path, device) if rl.weights.cf > 0 else None,
    )
    seed = s.base.seed
    valid = s.loo.split("valid", s.data.max_history)
    # the validation users of train_sidlm (same seeded subset) unless rl.max_valid_users says
    cap = rl.max_valid_users or s.cfg.max_valid_users or s.eval.max_valid_users
    users = None
    if cap and cap < len(valid):
        users = np.sort(np.random.default_rng(seed).choice(len(valid), cap, replace=False))

    def validate() -> dict[str, float]:
        res = evaluate(
            model, valid, s.eval, device, num_items=s.ds.num_items, bootstrap=False, users=users
        )
        return {k: v for k, v in res.metrics.items() if "@" in k}

    def rows(epoch: int) -> list[tuple[list[int], int]]:
        rng = np.random.default_rng([seed, epoch])
        return rl_rows(s.loo.train_sequences, s.data.max_history, rng, rl.max_users_per_epoch)

    configs = {
        "base": to_dict(s.base),
        "data": to_dict(s.data),
        "eval": to_dict(s.eval),
        "sidlm": to_dict(s.cfg),
        "rl": to_dict(rl),
    }
    tags = {"sampler": rl.sampler, "rewards": "+".join(rl.weights.active())}
    with start_run(
        STAGE,
        configs,
        dataset=s.ds.name,
        profile=s.base.profile,
        device=device,
        metrics_dir=s.base.metrics_dir,
        tags=tags,
    ) as run_:
        result = train_grpo(model, rows, rl, inputs, validate, seed=seed, run=run_)
        save_dir_atomic(model, rl.output_dir)
        run_.log_metrics(result.best_metrics)  # valid/ndcg@10 of the saved model: study objective
        res = evaluate(
            model,
            s.loo.split("test", s.data.max_history),
            s.eval,
            device,
            num_items=s.ds.num_items,
            bootstrap=s.eval.bootstrap > 0,
        )
        run_.log_metrics(res.metrics)
        run_.record(
            **{key: res.metrics[f"test/{key}"] for key in EVAL_KEYS if f"test/{key}" in res.metrics}
        )
        monitor = rl.train.monitor
        run_.record(
            rl_steps=result.steps,
            rl_epochs=result.epochs,
            rl_best_epoch=result.best_epoch,
            rl_train_seconds=result.seconds,
            rl_users_per_second=result.users / max(result.seconds, 1e-9),
            **{f"start_{monitor}": result.start_metric, f"best_{monitor}": result.best_metric},
            **{
                f"epoch_{monitor}": [r[monitor] for r in result.history if "epoch" in r],
            },
            **_summary(result.history),
        )
        steps = [r for r in result.history if "step" in r]  # per-epoch figures are above
        write_json(Path(s.base.metrics_dir) / f"{STAGE}_curves.json", steps)
        log.info("rl_sidlm: saved %s, test %s", rl.output_dir, res.metrics.get("test/ndcg@10"))
        return dict(run_.metrics, **run_.extra)
