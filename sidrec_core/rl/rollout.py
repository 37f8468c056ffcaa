"""GRPO rollouts: a group of G SIDs per user prompt, and the per-epoch (history, target) rows.

Groups come from the project's decoding code: the constrained beam (top-G distinct valid SIDs, as
MiniOneRec's GRPO) or constrained sampling (:mod:`~sidrec_core.models.sampling`), always with
dropout off. Each candidate's rank in its group (by the policy's sequence log-prob) feeds the
rank-aware ``ndcg_rule`` reward.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from sidrec_core.models.beam import DecodingConfig, generate_sids
from sidrec_core.models.sampling import sample_sids

if TYPE_CHECKING:
    from sidrec_core.rl.grpo import RLConfig


@dataclasses.dataclass
class Rollout:
    """codes int64 [B, G, M]; items [B, G] (0 = invalid/empty); ranks [B, G] 0-based rank by
    sequence log-prob; valid bool [B, G]."""

    codes: Tensor
    items: Tensor
    ranks: Tensor
    valid: Tensor


@torch.no_grad()
def rollout(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    cfg: RLConfig,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Generate a group per prompt with ``model`` (a :class:`~sidrec_core.models.sidlm.SIDLM`),
    dropout off. Beam groups come sorted (rank = position); sampled ones are ranked by score."""
    was_training = model.training
    model.eval()
    tokens = model.level_token_ids
    g = cfg.num_generations
    if cfg.sampler == "beam":
        decoding = DecodingConfig(strategy="constrained", beam_width=g, num_return_sequences=g)
        out = generate_sids(
            model.lm, input_ids, attention_mask, tokens, decoding, model.prefix_table
        )
    else:
        out = sample_sids(
            model.lm,
            input_ids,
            attention_mask,
            tokens,
            model.prefix_table,
            g,
            cfg.temperature,
            cfg.top_k,
            generator,
        )
    model.train(was_training)
    items = model.prefix_table.lookup(out.codes)
    valid = torch.isfinite(out.scores) & (items > 0)
    order = torch.sort(out.scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(g, device=order.device).expand_as(order).contiguous()
    )
    return Rollout(out.codes, items, ranks, valid)


def rl_rows(
    train_sequences: list[np.ndarray],
    max_history: int,
    rng: np.random.Generator,
    max_users: int | None = None,
) -> list[tuple[list[int], int]]:
    """One ``(history, target)`` per user with >= 2 training items, users in a random order (at
    most ``max_users`` of them): a random cut of the training part, so every position can be the
    target over the epochs, as in SFT's one example per prefix."""
    users = [u for u, s in enumerate(train_sequences) if len(s) >= 2]
    users = rng.permutation(users)[:max_users].tolist()
    rows = []
    for u in users:
        seq = [int(x) for x in train_sequences[u]]
        t = int(rng.integers(1, len(seq)))
        rows.append((seq[max(0, t - max_history) : t], seq[t]))
    return rows


def history_tensor(histories: list[list[int]]) -> Tensor:
    """Histories (oldest first) -> item ids int64 [B, L], left-padded with 0 as batches are."""
    width = max(1, max(len(h) for h in histories))
    out = torch.zeros(len(histories), width, dtype=torch.long)
    for i, h in enumerate(histories):
        if h:
            out[i, width - len(h) :] = torch.as_tensor(h)
    return out
