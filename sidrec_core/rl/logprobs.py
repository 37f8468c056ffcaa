"""Per-token log-probs of a group's completions under a causal LM, with gradients.

GRPO scores the G completions of a prompt under the policy (and the reference). They share the
prompt, so :func:`group_log_probs` runs the prompt ONCE per user with the KV cache on, expands
that cache across the group (an ``index_select`` that autograd differentiates through, so the
prompt's gradient is the sum over its G completions), then runs the G x (M - 1) completion tokens
on top of it. :func:`per_completion_log_probs` is the plain reference: each completion re-reads
its prompt as one sequence of length T + M. Both give the same values and gradients (tested);
the shared pass does about 1/G of the prompt work.

Log-probs are over the FULL vocabulary (log-softmax of the logits), as the beam scores them, so
the per-token log-probs of a beam's SID sum to its sequence score.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sidrec_core.models.beam import _level_log_probs


def _completion_tokens(level_token_ids: list[Tensor], codes: Tensor) -> Tensor:
    """codes int64 [B, G, M] (-1 = empty, read as code 0) -> token ids [B, G, M]."""
    return torch.stack(
        [level_token_ids[lvl][codes[..., lvl].clamp(min=0)] for lvl in range(codes.shape[2])], -1
    )


def _gather_levels(logits: Tensor, level_token_ids: list[Tensor], codes: Tensor) -> Tensor:
    """logits [R, M, V] predicting level l at position l, codes [R, M] -> log-probs [R, M]."""
    return torch.stack(
        [
            _level_log_probs(logits[:, lvl], level_token_ids[lvl])
            .gather(1, codes[:, lvl : lvl + 1].clamp(min=0))
            .squeeze(1)
            for lvl in range(codes.shape[1])
        ],
        1,
    )


def group_log_probs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    level_token_ids: list[Tensor],
    codes: Tensor,
) -> Tensor:
    """One prompt pass per user shared by its group -> token log-probs float [B, G, M].

    input_ids/attention_mask [B, T] LEFT-padded prompts; codes int64 [B, G, M].
    """
    batch, group, levels = codes.shape
    device = input_ids.device
    level_token_ids = [t.to(device) for t in level_token_ids]
    mask = attention_mask.to(torch.long)
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=levels > 1,
        logits_to_keep=1,
    )
    first = _level_log_probs(out.logits[:, -1], level_token_ids[0])  # [B, K_0]
    first = first.gather(1, codes[..., 0].clamp(min=0)).unsqueeze(-1)  # [B, G, 1]
    if levels == 1:
        return first
    cache = out.past_key_values
    cache.reorder_cache(torch.arange(batch, device=device).repeat_interleave(group))
    tokens = _completion_tokens(level_token_ids, codes).reshape(batch * group, levels)
    steps = torch.arange(levels - 1, device=device)
    positions = mask.sum(1).repeat_interleave(group)[:, None] + steps  # [B * G, M - 1]
    full_mask = torch.cat(
        [mask.repeat_interleave(group, 0), mask.new_ones(batch * group, levels - 1)], 1
    )
    out = model(
        input_ids=tokens[:, :-1],
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
    )
    rest = _gather_levels(
        out.logits, level_token_ids[1:], codes.reshape(batch * group, levels)[:, 1:]
    ).view(batch, group, levels - 1)
    return torch.cat([first, rest], -1)


def per_completion_log_probs(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    level_token_ids: list[Tensor],
    codes: Tensor,
) -> Tensor:
    """The reference: every completion scored as its own sequence -> float [B, G, M]."""
    batch, group, levels = codes.shape
    device = input_ids.device
    level_token_ids = [t.to(device) for t in level_token_ids]
    tokens = _completion_tokens(level_token_ids, codes).reshape(batch * group, levels)
    ids = torch.cat([input_ids.repeat_interleave(group, 0), tokens], 1)
    mask = attention_mask.to(torch.long).repeat_interleave(group, 0)
    mask = torch.cat([mask, mask.new_ones(batch * group, levels)], 1)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=(mask.cumsum(1) - 1).clamp(min=0),
        use_cache=False,
        logits_to_keep=levels + 1,
    )
    logp = _gather_levels(out.logits[:, :-1], level_token_ids, codes.reshape(batch * group, levels))
    return logp.view(batch, group, levels)
