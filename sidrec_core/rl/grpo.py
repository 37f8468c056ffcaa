"""GRPO of the SID LM (Shao et al., 2024), as MiniOneRec tunes its SID LM after SFT.

For each user prompt the policy generates a group of G SIDs (constrained beam: the top-G distinct
valid SIDs, MiniOneRec's default; or constrained sampling), the rewards of
:mod:`~sidrec_core.rl.rewards` are mixed into group advantages A, and the loss per token is

    -min(rho * A, clip(rho, 1 - eps, 1 + eps) * A) + beta * k3,
    rho = exp(logp - logp_old),  k3 = exp(ref - logp) - (ref - logp) - 1  (Schulman's k3 KL)

averaged over the valid tokens of the batch. With one update per rollout (``num_iterations=1``)
``logp_old`` is ``logp`` detached: rho = 1, the gradient is A * grad(logp) and clipping never
acts; with more updates the rollout's log-probs are kept and PPO's clip applies. The reference is
a frozen copy of the starting model, optionally pulled toward the policy every ``ref_sync_steps``
optimizer steps (``ref <- alpha * policy + (1 - alpha) * ref``, TR-DPO's soft update as in TRL).

Dropout is off throughout (rollout and loss): the ratio is then exactly 1 on the first update and
the KL compares the two models, not two dropout masks. The loop reuses the SFT loop's pieces
(:class:`~sidrec_core.train.TrainConfig`, its LR schedule and gradient clipping, the shared
evaluator for validation, :class:`~sidrec_core.callbacks.EarlyStopping` for patience and the
best-epoch restore); it is its own loop because a step is a rollout
plus ``num_iterations`` updates, not one batch loss.

Why not TRL's ``GRPOTrainer``: it samples with ``generate(do_sample=True)`` and takes no logits
processor, so constrained-beam groups need its experimental ``rollout_func``; it also brings
``datasets``/``pyarrow``, string rewards and its own loop. This one is short and runs on the
project's decoding, evaluator and tracking.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sidrec_core.callbacks import EarlyStopping
from sidrec_core.config import ConfigError
from sidrec_core.models.sidlm_seq2seq import check_decoder_arch
from sidrec_core.rl.logprobs import group_log_probs
from sidrec_core.rl.rewards import (
    Aggregation,
    RewardWeights,
    Scaling,
    advantages,
    compute_rewards,
)
from sidrec_core.rl.rollout import history_tensor, rollout
from sidrec_core.tracking import Run
from sidrec_core.train import TrainConfig, lr_scheduler

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RLTrainConfig(TrainConfig):
    """``rl.train``: the shared loop's knobs with MiniOneRec's GRPO defaults (lr 1e-5, 2 epochs,
    cosine, gradient norm clipped at 0.3); ``batch_size`` counts users (prompts) per step.
    A subclass, not a ``TrainConfig`` default instance, so a partial override in params keeps
    the other RL defaults."""

    epochs: int = 2
    batch_size: int = 16
    lr: float = 1e-5
    grad_clip: float = 0.3
    schedule: Literal["constant", "cosine", "linear"] = "cosine"
    patience: int = 0


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """``rl`` section; ``weights`` and ``train`` are nested subsections."""

    num_generations: int = 16  # G
    sampler: Literal["beam", "sampling"] = "beam"
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only; 0 = all allowed codes
    beta: float = 1e-3  # k3 KL weight; 0 = no reference model at all
    ref_sync: bool = False
    ref_sync_alpha: float = 0.6
    ref_sync_steps: int = 512  # optimizer steps between soft syncs (tau)
    epsilon: float = 0.2  # PPO clip range (acts when num_iterations > 1)
    num_iterations: int = 1  # updates per rollout
    weights: RewardWeights = dataclasses.field(default_factory=RewardWeights)
    scaling: Scaling = "group"
    aggregation: Aggregation = "sum_then_normalize"
    max_users_per_epoch: int | None = None  # seeded subset per epoch; None = every user
    cf_checkpoint: str | None = None  # trained SASRec state dict; None = sasrec.checkpoint
    embeddings: str | None = None  # item embeddings .npy; None = embed.output
    output_dir: str = "models/sidlm_rl"
    log_every: int = 10  # steps between log lines (every step goes to the tracker)
    train: RLTrainConfig = dataclasses.field(default_factory=RLTrainConfig)

    def __post_init__(self) -> None:
        if self.num_generations < 2:
            raise ValueError(
                f"rl.num_generations must be >= 2 (a group of one has no baseline), "
                f"got {self.num_generations}"
            )
        checks = {  # key: (holds, the valid range)
            "temperature": (self.temperature > 0, "> 0"),
            "top_k": (self.top_k >= 0, ">= 0 (0 = every allowed code)"),
            "beta": (self.beta >= 0, ">= 0 (0 = no KL term, no reference model)"),
            "ref_sync_alpha": (0 < self.ref_sync_alpha <= 1, "in (0, 1]"),
            "ref_sync_steps": (self.ref_sync_steps >= 1, ">= 1"),
            "epsilon": (self.epsilon > 0, "> 0"),
            "num_iterations": (self.num_iterations >= 1, ">= 1"),
            "log_every": (self.log_every >= 1, ">= 1"),
        }
        for key, (ok, valid) in checks.items():
            if not ok:
                raise ValueError(f"rl.{key} must be {valid}, got {getattr(self, key)!r}")
        if self.max_users_per_epoch is not None and self.max_users_per_epoch < 1:
            raise ValueError(f"rl.max_users_per_epoch must be >= 1, got {self.max_users_per_epoch}")
        if self.ref_sync and self.beta == 0:
            raise ValueError(
                "rl.ref_sync: the reference only enters through the KL term, which rl.beta = 0 "
                "turns off; set rl.beta > 0 or rl.ref_sync: false"
            )

    def check_num_sids(self, num_sids: int) -> None:
        """The stage calls this with the SID table's size: a group cannot exceed it."""
        if self.num_generations > num_sids:
            raise ConfigError(
                f"rl.num_generations ({self.num_generations}) exceeds the {num_sids} valid SIDs "
                "of the table: a group of distinct valid SIDs cannot be that large"
            )

    def check_reward_inputs(self, cf_checkpoint: str | None, embeddings: str | None) -> None:
        """Fail before training when a weighted reward lacks its input file."""
        if self.weights.cf > 0 and (not cf_checkpoint or not Path(cf_checkpoint).exists()):
            raise FileNotFoundError(
                f"rl.weights.cf > 0 needs a trained SASRec, but rl.cf_checkpoint / "
                f"sasrec.checkpoint {cf_checkpoint!r} does not exist (run train_sasrec first)"
            )
        if self.weights.semantic > 0 and (not embeddings or not Path(embeddings).exists()):
            raise FileNotFoundError(
                f"rl.weights.semantic > 0 needs item embeddings, but rl.embeddings / "
                f"embed.output {embeddings!r} does not exist (run the embed stage first)"
            )


# -- the objective ---------------------------------------------------------------------------
def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(policy || reference): >= 0, 0 where they agree."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def grpo_loss(
    logp: Tensor,
    old_logp: Tensor,
    ref_logp: Tensor | None,
    adv: Tensor,
    valid: Tensor,
    beta: float,
    epsilon: float,
) -> tuple[Tensor, dict[str, float]]:
    """logp/old_logp/ref_logp float [B, G, M], adv [B, G], valid bool [B, G] -> (loss, stats).

    Invalid candidates are selected out with ``where`` (no gradient, whatever their log-probs).
    """
    ratio = torch.exp(logp - old_logp)
    a = adv.unsqueeze(-1)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.minimum(ratio * a, clipped * a)
    mask = valid.unsqueeze(-1).expand_as(per_token)
    count = mask.sum().clamp(min=1)
    # tokens whose clipped term wins the min: their policy-gradient term is 0
    active = (clipped * a < ratio * a) & mask
    stats = {"clip_fraction": float(active.float().sum() / count)}
    if ref_logp is not None and beta > 0:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = float(kl.detach()[mask].sum() / count)
    loss = torch.where(mask, per_token, torch.zeros_like(per_token)).sum() / count
    return loss, stats


@torch.no_grad()
def sync_reference(reference: nn.Module, policy: nn.Module, alpha: float) -> None:
    """Soft update in place: ``ref <- alpha * policy + (1 - alpha) * ref``."""
    for ref_p, pol_p in zip(reference.parameters(), policy.parameters(), strict=True):
        ref_p.lerp_(pol_p.detach(), alpha)


# -- the loop --------------------------------------------------------------------------------
@dataclasses.dataclass
class RewardInputs:
    """What the non-rule rewards read: embeddings float [N + 1, D] (semantic), a cf scorer."""

    embeddings: Tensor | None = None
    scorer: Callable[[Tensor, Tensor], Tensor] | None = None


@dataclasses.dataclass
class GRPOResult:
    steps: int
    epochs: int
    best_epoch: int
    best_metric: float
    start_metric: float
    seconds: float
    users: int
    history: list[dict[str, float]]  # one record per optimizer step, then per epoch
    best_metrics: dict[str, float]  # validation metrics of the returned (best-epoch) model


class GRPO:
    """Policy, reference, optimizer and schedule; :meth:`step` = one rollout + its updates."""

    def __init__(
        self, model: Any, cfg: RLConfig, inputs: RewardInputs, total_steps: int, seed: int
    ):
        # group_log_probs scores completions as continuations of a causal prompt
        check_decoder_arch(model.cfg, "GRPO (rl_sidlm)")
        self.model, self.cfg, self.inputs = model, cfg, inputs
        lm = model.lm
        self.reference = None
        if cfg.beta > 0:
            self.reference = copy.deepcopy(lm).eval().requires_grad_(False)
        self.params = [p for p in lm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.scheduler = lr_scheduler(self.optimizer, total_steps * cfg.num_iterations, cfg.train)
        device = next(lm.parameters()).device
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.updates = 0

    def step(self, histories: list[list[int]], targets: list[int]) -> dict[str, float]:
        model, cfg = self.model, self.cfg
        device = next(model.lm.parameters()).device
        history = history_tensor(histories).to(device)
        target = torch.as_tensor(targets, device=device)
        prompt = model.prompts(history)
        ids, mask = prompt["input_ids"].to(device), prompt["attention_mask"].to(device)
        ro = rollout(model, ids, mask, cfg, self.generator)
        rewards = compute_rewards(
            cfg.weights,
            ro.items,
            ro.ranks,
            target,
            history,
            self.inputs.embeddings,
            self.inputs.scorer,
        )
        total, adv = advantages(rewards, cfg.weights, ro.valid, cfg.scaling, cfg.aggregation)
        tokens = model.level_token_ids
        model.eval()  # dropout off for the loss too (module docstring)
        with torch.no_grad():
            ref = None
            if self.reference is not None:
                ref = group_log_probs(self.reference, ids, mask, tokens, ro.codes)
            old = None
            if cfg.num_iterations > 1:
                old = group_log_probs(model.lm, ids, mask, tokens, ro.codes)
        stats: dict[str, float] = {}
        for _ in range(cfg.num_iterations):
            logp = group_log_probs(model.lm, ids, mask, tokens, ro.codes)
            loss, stats = grpo_loss(
                logp,
                logp.detach() if old is None else old,
                ref,
                adv,
                ro.valid,
                cfg.beta,
                cfg.epsilon,
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.updates += 1
            if (
                cfg.ref_sync
                and self.reference is not None
                and self.updates % cfg.ref_sync_steps == 0
            ):
                sync_reference(self.reference, model.lm, cfg.ref_sync_alpha)
        v = ro.valid
        hit = (ro.items == target[:, None]) & v
        record = {f"rl/reward/{name}": float(r[v].mean()) for name, r in rewards.items()}
        record.update(
            {
                "rl/reward/total": float(total[v].mean()),
                "rl/loss": float(loss.detach()),
                "rl/group_hr@1": float((hit & (ro.ranks == 0)).any(1).float().mean()),
                "rl/group_hit_rate": float(hit.any(1).float().mean()),
                "rl/valid_rate": float(v.float().mean()),
                "rl/lr": self.scheduler.get_last_lr()[0],
                **{f"rl/{k}": val for k, val in stats.items()},
            }
        )
        return record


def train_grpo(
    model: Any,
    rows: Callable[[int], list[tuple[list[int], int]]],
    cfg: RLConfig,
    inputs: RewardInputs,
    validate: Callable[[], dict[str, float]],
    *,
    seed: int = 0,
    run: Run | None = None,
) -> GRPOResult:
    """GRPO over ``rows(epoch)`` (``(history, target)`` per user) for ``cfg.train.epochs``;
    ``validate()`` runs before training and after every epoch, the best epoch by
    ``cfg.train.monitor`` is restored at the end (the start model only competes through the
    reported ``start_metric``: an RL stage always returns a tuned model)."""
    tc = cfg.train
    per_epoch = math.ceil(len(rows(0)) / tc.batch_size)
    total = per_epoch * tc.epochs if not tc.max_steps else min(per_epoch * tc.epochs, tc.max_steps)
    grpo = GRPO(model, cfg, inputs, total, seed)
    start_metric = validate()[tc.monitor]
    early, best_metrics = EarlyStopping(tc.monitor, tc.patience), {}
    history: list[dict[str, float]] = []
    step, users, epoch = 0, 0, 0
    start = time.perf_counter()
    for epoch in range(1, tc.epochs + 1):
        epoch_rows = rows(epoch)
        for i in range(0, len(epoch_rows), tc.batch_size):
            chunk = epoch_rows[i : i + tc.batch_size]
            record = grpo.step([h for h, _ in chunk], [t for _, t in chunk])
            step, users = step + 1, users + len(chunk)
            history.append({"step": step, **record})
            if run is not None:
                run.log_metrics(record, step=step)
            if step % cfg.log_every == 0:
                log.info(
                    "rl epoch %d step %d/%d reward %.4f group_hit %.3f kl %.2e",
                    epoch,
                    step,
                    total,
                    record["rl/reward/total"],
                    record["rl/group_hit_rate"],
                    record.get("rl/kl", 0.0),
                )
            if tc.max_steps and step >= tc.max_steps:
                break
        metrics = validate()
        history.append({"epoch": epoch, **metrics})
        if run is not None:
            run.log_metrics(metrics, step=epoch)
        if early.update(epoch, metrics, model.lm):
            best_metrics = metrics
        log.info(
            "rl epoch %d %s %.4f (start %.4f)", epoch, tc.monitor, metrics[tc.monitor], start_metric
        )
        if (tc.max_steps and step >= tc.max_steps) or early.stop:
            break
    early.restore(model.lm)
    return GRPOResult(
        steps=step,
        epochs=epoch,
        best_epoch=early.best_epoch,
        best_metric=early.best,
        start_metric=start_metric,
        seconds=time.perf_counter() - start,
        users=users,
        history=history,
        best_metrics=best_metrics,
    )
