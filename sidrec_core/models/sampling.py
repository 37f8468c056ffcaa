"""Constrained sampling of SIDs: G independent draws per prompt; the prefix table masks each level.

The sampling counterpart of :func:`~sidrec_core.models.beam.generate_sids`, for RL rollouts (GRPO
samples a group of completions per prompt; MiniOneRec's default group is a constrained beam, its
alternative is sampling). Level ``l`` of each draw samples from the model's next-token logits
restricted to the level's code tokens that continue the draw's prefix in the SID table, divided
by ``temperature`` and optionally cut to the ``top_k`` best codes; every draw is therefore a
valid SID.

Duplicates are allowed: the G draws are independent (a multiset, as GRPO's sampled groups are),
so a peaked policy may draw the same SID several times; each copy is a separate group member with
its own reward and advantage. Use the constrained beam for G distinct SIDs.

Batched like the beam: one prompt forward per user, then all G chains of a user read its prompt
KV cache once per step (:mod:`~sidrec_core.models.beam_attention`); no loop over users or draws.
Scores are the model's own sequence log-probs (full-vocabulary log-softmax at temperature 1, as
beam scores are), not the tempered sampling probabilities, so they rank a group's draws by the
policy and compare with beam scores. Run it with the model in eval mode (dropout off).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sidrec_core.models.beam import (
    NEG_INF,
    BeamOutput,
    DecodingConfig,
    _check_inputs,
    _level_log_probs,
    decode_step,
    prompt_forward,
)
from sidrec_core.models.candidates import PrefixTable


def _sample_codes(
    logp: Tensor, allowed: Tensor, temperature: float, top_k: int, generator: torch.Generator | None
) -> Tensor:
    """logp [R, K] model log-probs, allowed bool [R, K] -> sampled code per row [R]."""
    logits = (logp / temperature).masked_fill(~allowed, NEG_INF)
    if top_k and top_k < logits.shape[1]:
        kth = logits.topk(top_k, dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, NEG_INF)
    probs = torch.softmax(logits, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def sample_sids(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    level_token_ids: list[Tensor],
    prefix_table: PrefixTable,
    num_samples: int,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> BeamOutput:
    """Draw ``num_samples`` (G) valid SIDs per prompt.

    Args:
        model, input_ids [B, T] (left-padded), attention_mask [B, T], level_token_ids: as for
            :func:`~sidrec_core.models.beam.generate_sids`.
        prefix_table: the SID table's prefix tables (masks every level).
        num_samples: G draws per prompt (duplicates allowed, see module docstring).
        temperature: > 0; divides the masked logits before sampling.
        top_k: sample among the ``top_k`` most likely allowed codes per level (0 = all).
        generator: seeded generator for reproducible draws (on the model's device).

    Returns:
        :class:`BeamOutput` with codes [B, G, M] in draw order (not sorted) and scores [B, G] the
        model's sequence log-probs.
    """
    if num_samples < 1 or temperature <= 0 or top_k < 0:
        raise ValueError(
            f"need num_samples >= 1, temperature > 0, top_k >= 0; got {num_samples}, "
            f"{temperature}, {top_k}"
        )
    device = input_ids.device
    head = model.get_output_embeddings()
    vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
    cfg = DecodingConfig(strategy="constrained", beam_width=num_samples)
    _check_inputs(input_ids, attention_mask, level_token_ids, cfg, prefix_table, vocab_size)
    level_token_ids = [t.to(device) for t in level_token_ids]
    table = prefix_table.to(device)
    batch, draws = input_ids.shape[0], num_samples
    attention_mask = attention_mask.to(torch.long)
    cache, logits, shared = prompt_forward(model, input_ids, attention_mask)
    # every chain starts from its user's prompt: one row per draw from here on
    logits = logits.repeat_interleave(draws, 0)  # [B * G, V]
    cache.reorder_cache(torch.arange(batch, device=device).repeat_interleave(draws))
    prefix = torch.zeros(batch * draws, dtype=torch.long, device=device)
    scores = torch.zeros(batch * draws, device=device)
    codes = []
    num_levels = len(level_token_ids)
    for step in range(num_levels):
        logp = _level_log_probs(logits, level_token_ids[step])  # [B * G, K]
        child = table.children[step][prefix]  # [B * G, K]
        code = _sample_codes(logp, child >= 0, temperature, top_k, generator)
        scores = scores + logp.gather(1, code[:, None]).squeeze(1)
        prefix = child.gather(1, code[:, None]).squeeze(1)
        codes.append(code)
        if step == num_levels - 1:
            break
        tokens = level_token_ids[step][code]
        cache, logits = decode_step(model, tokens, cache, shared, attention_mask, draws, step)
    codes_t = torch.stack(codes, 1).view(batch, draws, num_levels)
    plan = [(draws, draws)] * num_levels
    return BeamOutput(codes=codes_t, scores=scores.view(batch, draws), schedule=plan)
