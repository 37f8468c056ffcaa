"""Rewards of a group of generated candidates, their weighted mix, and group advantages.

GRPO (Shao et al., 2024, DeepSeekMath) scores each of the G candidates a policy generates for a
prompt and turns the scores into advantages relative to the group. MiniOneRec (Kong et al., 2025;
AkaliKong/MiniOneRec ``rl.py``) tunes a SID LM this way with these rewards, all implemented here
as pure functions of tensors [B, G] (B users, G candidates per user, ``items`` 0 = a candidate
that is not a valid SID or an empty slot):

- ``rule``: 1 for the target item, else 0;
- ``ndcg_rule``: rank-aware penalty: in a group that contains the target, a wrong candidate at
  rank j (0-based) gets ``-(1 / log2(j + 2)) / sum_{i<G} 1 / log2(i + 2)``; the hit gets 0 and a
  group without the hit gets all 0 (G = 16: -0.164, -0.103, -0.082, ..., -0.040);
- ``semantic``: cosine of the candidate's and the target's item-text embeddings;
- ``cf``: a collaborative model's raw score of the candidate for the user (a :class:`CFScorer`
  over the trained SASRec).

Invalid candidates get reward 0 under every function, are left out of the group statistics and
get advantage 0, so they carry no gradient. Mixing is ``r = sum_f w_f r_f`` then normalising
(``sum_then_normalize``, MiniOneRec/TRL) or ``A = sum_f w_f norm(r_f)`` (``normalize_then_sum``,
so a reward with a large scale cannot drown the others). Scaling: ``group`` z-score
``(r - mean_g) / (std_g + 1e-4)``, ``batch`` (centre per group, divide by the batch std, TRL's
``scale_rewards="batch"``), ``none`` (centre only). std is the unbiased sample std, as in TRL.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from sidrec_core.metrics import ndcg

REWARDS = ("rule", "ndcg_rule", "semantic", "cf")
STD_EPS = 1e-4
Scaling = Literal["group", "batch", "none"]
Aggregation = Literal["sum_then_normalize", "normalize_then_sum"]


@dataclasses.dataclass(frozen=True)
class RewardWeights:
    """``rl.weights``: one non-negative weight per reward; 0 removes the reward entirely (it is
    not even computed). Default: MiniOneRec's rule + ndcg_rule."""

    rule: float = 1.0
    ndcg_rule: float = 1.0
    semantic: float = 0.0
    cf: float = 0.0

    def __post_init__(self) -> None:
        for name in REWARDS:
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"rl.weights.{name} must be a finite number >= 0, got {value}")
        if not any(getattr(self, name) for name in REWARDS):
            raise ValueError(
                "rl.weights: every reward weight is 0, so there is nothing to learn from; "
                f"give at least one of {', '.join(REWARDS)} a positive weight"
            )

    def active(self) -> dict[str, float]:
        """``{name: weight}`` of the rewards with a non-zero weight, in :data:`REWARDS` order."""
        return {name: getattr(self, name) for name in REWARDS if getattr(self, name)}


def rule_reward(items: Tensor, targets: Tensor) -> Tensor:
    """items int64 [B, G], targets [B] -> float [B, G]: 1 where the candidate is the target."""
    return ((items == targets[:, None]) & (items > 0)).float()


def ndcg_penalties(num_generations: int) -> Tensor:
    """Per-rank penalty of a wrong candidate in a group that holds the hit -> float [G]."""
    discount = torch.as_tensor(ndcg(np.arange(num_generations), num_generations))
    return (-discount / discount.sum()).float()


def ndcg_rule_reward(items: Tensor, targets: Tensor, ranks: Tensor) -> Tensor:
    """Rank-aware reward (module docstring). ranks int64 [B, G]: each candidate's 0-based rank
    in its group (beam order, or descending sequence log-prob for sampled groups)."""
    penalty = ndcg_penalties(items.shape[1]).to(items.device)[ranks]
    hit = rule_reward(items, targets).bool()
    wrong = hit.any(1, keepdim=True) & ~hit & (items > 0)
    return torch.where(wrong, penalty, torch.zeros_like(penalty))


def semantic_reward(items: Tensor, targets: Tensor, embeddings: Tensor) -> Tensor:
    """Cosine of candidate and target embeddings. embeddings float [N + 1, D], row i = item i
    (row 0 unused). Invalid candidates -> 0."""
    cand = embeddings[items.clamp(min=0)]  # [B, G, D]
    target = embeddings[targets.clamp(min=0)][:, None, :]  # [B, 1, D]
    cos = torch.nn.functional.cosine_similarity(cand, target, dim=-1)
    return torch.where(items > 0, cos, torch.zeros_like(cos)).float()


class CFScorer:
    """A collaborative model's raw score of candidates: ``(history [B, L], items [B, G]) ->
    [B, G]`` (invalid candidates -> 0). Wraps any model with ``score_all(history) -> [B, N + 1]``
    (SASRec's full-catalogue scores; MiniOneRec gathers a SASRec's logits the same way)."""

    def __init__(self, model: nn.Module, max_history: int | None = None) -> None:
        if not hasattr(model, "score_all"):
            raise TypeError(f"{type(model).__name__} has no score_all(history); cannot score cf")
        self.model = model.eval()
        self.max_history = max_history

    @torch.no_grad()
    def __call__(self, history: Tensor, items: Tensor) -> Tensor:
        if self.max_history:
            history = history[:, -self.max_history :]
        scores = self.model.score_all(history).float()  # [B, N + 1]
        out = scores.gather(1, items.clamp(min=0))
        return torch.where(items > 0, out, torch.zeros_like(out))


def compute_rewards(
    weights: RewardWeights,
    items: Tensor,
    ranks: Tensor,
    targets: Tensor,
    history: Tensor | None = None,
    embeddings: Tensor | None = None,
    scorer: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Every reward with a non-zero weight -> ``{name: float [B, G]}``."""
    out: dict[str, Tensor] = {}
    for name in weights.active():
        if name == "rule":
            out[name] = rule_reward(items, targets)
        elif name == "ndcg_rule":
            out[name] = ndcg_rule_reward(items, targets, ranks)
        elif name == "semantic":
            if embeddings is None:
                raise ValueError("rl.weights.semantic > 0 needs the item embeddings")
            out[name] = semantic_reward(items, targets, embeddings)
        else:
            if scorer is None or history is None:
                raise ValueError("rl.weights.cf > 0 needs a collaborative scorer and the history")
            out[name] = scorer(history, items)
    return out


def _masked_mean(x: Tensor, mask: Tensor, dim: int | None) -> Tensor:
    m = mask.float()
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1)
    return (x * m).sum(dim, keepdim=True) / m.sum(dim, keepdim=True).clamp(min=1)


def _masked_std(x: Tensor, mask: Tensor, dim: int | None) -> Tensor:
    """Unbiased std over the masked entries (0 where fewer than two)."""
    m = mask.float()
    count = m.sum() if dim is None else m.sum(dim, keepdim=True)
    centred = (x - _masked_mean(x, mask, dim)) * m
    sq = (centred**2).sum() if dim is None else (centred**2).sum(dim, keepdim=True)
    return (sq / (count - 1).clamp(min=1)).sqrt()


def normalize(rewards: Tensor, valid: Tensor, scaling: Scaling) -> Tensor:
    """rewards float [B, G], valid bool [B, G] -> advantages [B, G] (0 on invalid candidates).

    Statistics run over the valid candidates of each group (``batch``: of the whole batch for the
    std); a constant group gives 0.
    """
    centred = rewards - _masked_mean(rewards, valid, 1)
    if scaling == "group":
        centred = centred / (_masked_std(rewards, valid, 1) + STD_EPS)
    elif scaling == "batch":
        centred = centred / (_masked_std(rewards, valid, None) + STD_EPS)
    elif scaling != "none":
        raise ValueError(f"rl.scaling: expected group, batch or none, got {scaling!r}")
    return torch.where(valid, centred, torch.zeros_like(centred))


def advantages(
    rewards: dict[str, Tensor],
    weights: RewardWeights,
    valid: Tensor,
    scaling: Scaling = "group",
    aggregation: Aggregation = "sum_then_normalize",
) -> tuple[Tensor, Tensor]:
    """Mix the rewards -> (total reward [B, G], advantages [B, G]).

    Rewards with weight 0 are skipped (never multiplied), so they cannot leak through NaN or
    change float rounding. Invalid candidates get total 0 and advantage 0.
    """
    active = weights.active()
    missing = sorted(set(active) - set(rewards))
    if missing:
        raise ValueError(f"rl.weights: rewards {missing} have a weight but were not computed")
    zero = torch.zeros_like(valid, dtype=torch.float32)
    total = zero.clone()
    for name, w in active.items():
        total = total + w * torch.where(valid, rewards[name], zero)
    if aggregation == "sum_then_normalize":
        return total, normalize(total, valid, scaling)
    if aggregation != "normalize_then_sum":
        raise ValueError(
            "rl.aggregation: expected sum_then_normalize or normalize_then_sum, "
            f"got {aggregation!r}"
        )
    adv = zero.clone()
    for name, w in active.items():
        adv = adv + w * normalize(torch.where(valid, rewards[name], zero), valid, scaling)
    return total, adv
