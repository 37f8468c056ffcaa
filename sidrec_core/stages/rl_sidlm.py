"""DVC stage ``rl_sidlm``: GRPO-tune the trained SID LM, save it, evaluate it like ``eval_sidlm``.

Reads the ``rl`` section (:class:`~sidrec_core.rl.grpo.RLConfig`) plus what ``eval_sidlm`` reads
(``data``, ``eval``, ``sidlm``, ``decoding``); the cf reward reads ``sasrec`` (architecture and
checkpoint of the reward model), the semantic reward ``embed.output``. The tuned model is saved
atomically to ``rl.output_dir`` and scored by :func:`sidrec_core.stages.eval_sidlm.score`: the same
validation subsample, test users and decoding as ``eval_sidlm``, so ``metrics/rl_sidlm.json`` and
``metrics/eval_sidlm.json`` compare directly. Per-step curves (mean reward per reward function,
KL, group HR@1) go to MLflow and ``metrics/rl_sidlm_curves.json``. How far GRPO moved the model
is measured on the validation users against the start model's top 10 after every epoch
(``valid/top10_changed``, ``valid/top10_kept``): an RL run whose lists did not move cannot rank
reward mixes, whatever its NDCG. The start model is scored on every test user before GRPO
(``start/test/*`` and its per-user ``start/test/ranks``), so a study pairs each GRPO run with the
exact model it started from, test user by test user, without another study's trial.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec_core.data.dataset import DataConfig
from sidrec_core.data.embeddings import EmbedConfig
from sidrec_core.data.split import LeaveOneOut, subsample_rows
from sidrec_core.evaluate import EvalConfig, EvalResult, evaluate
from sidrec_core.io import reading, save_dir_atomic, write_json
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sasrec import SASRecConfig, load_sasrec
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, load_inputs
from sidrec_core.models.sidlm_seq2seq import check_decoder_arch
from sidrec_core.rl.grpo import RewardInputs, RLConfig, train_grpo
from sidrec_core.rl.rewards import CFScorer
from sidrec_core.rl.rollout import rl_rows
from sidrec_core.stages.context import stage_context
from sidrec_core.stages.eval_sidlm import score, score_test

log = logging.getLogger(__name__)
STAGE = "rl_sidlm"


def load_cf_scorer(
    cfg: SASRecConfig, loo: LeaveOneOut, path: str, device: torch.device, key: str
) -> CFScorer:
    """The trained SASRec (``sasrec`` section + its saved state dict at ``path``, the params
    key ``key``) as a cf reward model."""
    model = load_sasrec(cfg, loo, path, key)
    return CFScorer(model.to(device), cfg.max_history)


def load_item_embeddings(path: str, num_items: int) -> torch.Tensor:
    """``embed.output`` [N, D] (row i - 1 = item i) -> float [N + 1, D] with a zero row 0."""
    with reading(path, "re-run the stage that wrote it (dvc repro embed)"):
        vectors = np.load(path, allow_pickle=False)
    if vectors.ndim != 2 or vectors.shape[0] != num_items:
        raise ValueError(
            f"rl.embeddings: {path} has shape {vectors.shape}, expected [{num_items}, D] "
            "(one row per item of the dataset)"
        )
    vectors = torch.as_tensor(vectors, dtype=torch.float32)
    return torch.cat([vectors.new_zeros(1, vectors.shape[1]), vectors])


def top_k_moved(start: np.ndarray, now: np.ndarray, k: int = 10) -> dict[str, float]:
    """How far ranked lists ``now`` [U, >=k] moved from ``start`` (the same users' lists before
    training): the share of users whose top-k set differs, and the mean share of the start's top-k
    items (empty slots, id 0, left out) still in the top k."""
    a, b = start[:, :k], now[:, :k]
    changed = (np.sort(a, axis=1) != np.sort(b, axis=1)).any(axis=1)
    kept = ((a[:, :, None] == b[:, None, :]).any(-1) & (a > 0)).sum(1)
    size = (a > 0).sum(1)
    share = np.divide(kept, size, out=np.ones(len(a)), where=size > 0)
    return {"valid/top10_changed": float(changed.mean()), "valid/top10_kept": float(share.mean())}


def start_figures(res: EvalResult) -> dict[str, Any]:
    """The start model's test metrics as ``start/test/<metric>@k`` and its per-user ranks as
    ``start/test/ranks`` (what the seed x user CI reads)."""
    out: dict[str, Any] = {f"start/{k}": v for k, v in res.metrics.items() if "@" in k}
    return out | {"start/test/ranks": res.ranks_record()}


def _summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of every per-step figure over the last epoch's steps."""
    last_epoch = max((i for i, r in enumerate(history) if "epoch" in r), default=len(history))
    first = max((i + 1 for i, r in enumerate(history[:last_epoch]) if "epoch" in r), default=0)
    steps = [r for r in history[first:last_epoch] if "step" in r]
    keys = sorted({k for r in steps for k in r if k.startswith("rl/")})
    return {f"{k}_last_epoch": float(np.mean([r[k] for r in steps if k in r])) for k in keys}


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Load the trained SID LM, run GRPO, save to ``rl.output_dir``, evaluate."""
    with stage_context(
        STAGE,
        params,
        output_key="rl.output_dir",
        trains="rl.train",
        data=DataConfig,
        eval=EvalConfig,
        sidlm=SIDLMConfig,
        decoding=DecodingConfig,
        rl=RLConfig,
        sasrec=SASRecConfig,
        embed=EmbedConfig,
    ) as ctx:
        data, ev, cfg, rl = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sidlm"], ctx.cfg["rl"]
        device, seed = ctx.device, ctx.base.seed
        check_decoder_arch(cfg, "GRPO (rl_sidlm)")  # before any model or reward input loads
        ds, loo, table = load_inputs(data, cfg.sid_dir)
        ev.check_catalogue(loo.num_items)  # before training, not at the first validation
        rl.check_num_sids(table.num_items)
        cf_path = rl.cf_checkpoint or ctx.cfg["sasrec"].checkpoint
        cf_key = "rl.cf_checkpoint" if rl.cf_checkpoint else "sasrec.checkpoint"
        emb_path = rl.embeddings or ctx.cfg["embed"].output
        rl.check_reward_inputs(cf_path, emb_path)
        model = SIDLM.load(cfg.output_dir, table, cfg, data.max_history).to(device)
        model.decoding = ctx.cfg["decoding"]
        semantic = rl.weights.semantic > 0
        inputs = RewardInputs(
            embeddings=load_item_embeddings(emb_path, ds.num_items).to(device)
            if semantic
            else None,
            scorer=(
                load_cf_scorer(ctx.cfg["sasrec"], loo, cf_path, device, cf_key)
                if rl.weights.cf > 0
                else None
            ),
        )
        valid = loo.split("valid", data.max_history)
        users = subsample_rows(len(valid), ev.max_valid_users)  # eval_sidlm's validation users
        start_lists: list[np.ndarray] = []  # the start model's, from the first validation

        def validate() -> dict[str, float]:
            res = evaluate(
                model, valid, ev, device, num_items=ds.num_items, bootstrap=False, users=users
            )
            if not start_lists:
                start_lists.append(res.item_ids)
            moved = top_k_moved(start_lists[0], res.item_ids)
            return {k: v for k, v in res.metrics.items() if "@" in k} | moved

        def rows(epoch: int) -> list[tuple[list[int], int]]:
            rng = np.random.default_rng([seed, epoch])
            return rl_rows(loo.train_sequences, data.max_history, rng, rl.max_users_per_epoch)

        start = start_figures(score_test(model, loo, data, ev, device)[0])
        ctx.run.set_tags({"sampler": rl.sampler, "rewards": "+".join(rl.weights.active())})
        result = train_grpo(model, rows, rl, inputs, validate, seed=seed, run=ctx.run)
        save_dir_atomic(model, rl.output_dir)
        scores = score(model, loo, data, ev, device)
        ctx.run.log_metrics({**scores.valid.metrics, **scores.test.metrics})
        monitor = rl.train.monitor
        ctx.run.record(
            **scores.figures(),
            rl_steps=result.steps,
            rl_epochs=result.epochs,
            rl_best_epoch=result.best_epoch,
            rl_train_seconds=result.seconds,
            rl_users_per_second=result.users / max(result.seconds, 1e-9),
            **{f"start_{monitor}": result.start_metric, f"best_{monitor}": result.best_metric},
            **start,
            **{
                f"epoch_{key}": [r[key] for r in result.history if "epoch" in r]
                for key in (monitor, "valid/top10_changed", "valid/top10_kept")
            },
            **{f"best_{k}": v for k, v in result.best_metrics.items() if "top10" in k},
            **_summary(result.history),
        )
        ctx.record_sha256(
            read={"sidlm": ctx.cfg["sidlm"].output_dir}, wrote={"rl_sidlm": rl.output_dir}
        )
        steps = [r for r in result.history if "step" in r]  # per-epoch figures are above
        write_json(Path(ctx.metrics_dir) / f"{STAGE}_curves.json", steps)
        log.info(
            "rl_sidlm: saved %s, test %s", rl.output_dir, scores.test.metrics.get("test/ndcg@10")
        )
        return ctx.result()
