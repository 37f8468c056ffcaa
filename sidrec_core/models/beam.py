"""Batched beam search over SID tokens: plain, constrained (prefix tables), al_sid's dynamic beam.

A SID LM generates an item as M tokens, one per level (``<a_12> <b_7> <c_200>``). Decoding is a
stateless function of the model, the prompts and a :class:`PrefixTable` built once from the SID
table (TIGER, Rajput et al. 2023; MiniOneRec; al_sid / FORGE). All work is batched tensor
algebra: one prompt forward per user (not per beam); the decoding steps attend to each user's
prompt KV cache once for all its beams (:mod:`~sidrec_core.models.beam_attention`) and keep only
the generated tokens per beam, reordered with one ``index_select`` per step; the beam step is a
``topk`` over [B, beams x K]. There is no Python loop over users or beams and no stateful
``LogitsProcessor`` (MiniOneRec's ``LogitProcessor.py`` walks a trie per beam in Python inside
the generate loop: the anti-pattern this module replaces).

Strategies (``decoding.strategy``):

- ``beam``: standard beam search with ``beam_width`` W beams. Position ``l`` may only emit a code
  token of level ``l`` (so the output always parses as a SID) but the SID need not exist in the
  table; on such a vocabulary restriction it returns the same top sequences as transformers'
  ``generate(num_beams=W, prefix_allowed_tokens_fn=<level tokens>)``.
- ``constrained``: as ``beam`` but only prefixes of SIDs in the table survive: the invalid-SID
  rate is exactly 0 and the result equals exhaustive enumeration when W >= number of SIDs.
- ``dynamic``: al_sid's widening beam (their Qwen2 ``_beam_search`` override). With B =
  ``beam_width`` and ``beams_to_keep = max(2, 1 + n_eos) x B`` (n_eos = ``dynamic_num_eos_tokens``,
  2 for Qwen2.5, so 3B): step ``s`` expands ``beams_s`` = B, 2B, 4B, 8B, 8B... running beams and
  keeps the best ``keep_s`` candidates; the next step runs the best ``beams_{s+1}`` of them.
  ``offline`` (al_sid's ``num_return_sequences == num_beams``) keeps 3B, 6B, 12B, 12B...;
  ``online`` keeps 3B, 9B, 12B, 12B.... Every candidate kept at the last step is returned (no
  truncation): 12B SIDs for 3 or 4 levels, 1,200 for B = 100. (In al_sid the extra candidates
  kept at earlier steps matter only when they end in EOS; SIDs have a fixed length M, so here
  those steps just pick the beams that run on.) With ``dynamic_constrained`` the prefix tables
  apply too (kept slots with no valid SID left come back empty: score -inf).

Scores are sequence log-probabilities: the sum over the M generated tokens of the model's
log-softmax over its FULL vocabulary (as transformers' generate scores beams), so constrained and
unconstrained scores are comparable and are true model log-probabilities of the SID.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sidrec_core.models.beam_attention import (
    SharedPrompt,
    shared_prompt,
    split_prompt_cache,
    supports_shared_prompt,
)
from sidrec_core.models.beam_encoder import (
    EncoderState,
    decode_with_encoder,
    encode_prompt,
    is_encoder_decoder,
)
from sidrec_core.models.candidates import PrefixTable, candidates_to_items

log = logging.getLogger(__name__)

__all__ = [
    "BeamOutput",
    "DecodingConfig",
    "PrefixTable",
    "candidates_to_items",
    "decode_step",
    "generate_sids",
    "prompt_forward",
    "schedule",
]

NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
    """``decoding`` section (read by ``eval_sidlm`` only, so a change re-runs evaluation alone).

    strategy: ``beam`` | ``constrained`` | ``dynamic`` (see module docstring).
    beam_width: W for beam/constrained, the base B of the dynamic schedule.
    num_return_sequences: SIDs returned per user for beam/constrained (None = beam_width; must be
        <= beam_width). Must stay None for ``dynamic``, which returns every kept candidate.
    dynamic_constrained: apply the prefix tables inside the dynamic beam.
    dynamic_mode: al_sid's ``offline`` (keeps 3B, 6B, 12B) or ``online`` (3B, 9B, 12B) schedule.
    dynamic_num_eos_tokens: n_eos in ``beams_to_keep = max(2, 1 + n_eos) x B`` (al_sid's Qwen2.5
        generation config has 2 EOS ids: <|im_end|>, <|endoftext|> -> 3B).
    shared_prompt_attention: decoding steps read each user's prompt KV cache once for all its
        beams (exact, see :mod:`~sidrec_core.models.beam_attention`); False = the model's own
        attention over a per-beam copy of the cache (the reference path; same results). Only
        the decoder arch has it; an encoder-decoder always decodes over per-beam caches.
    """

    strategy: Literal["beam", "constrained", "dynamic"] = "constrained"
    beam_width: int = 20
    num_return_sequences: int | None = None
    dynamic_constrained: bool = True
    dynamic_mode: Literal["offline", "online"] = "offline"
    dynamic_num_eos_tokens: int = 2
    shared_prompt_attention: bool = True

    def __post_init__(self) -> None:
        if self.beam_width < 1:
            raise ValueError(f"decoding.beam_width must be >= 1, got {self.beam_width}")
        if self.dynamic_num_eos_tokens < 0:
            raise ValueError(
                f"decoding.dynamic_num_eos_tokens must be >= 0, got {self.dynamic_num_eos_tokens}"
            )
        nrs = self.num_return_sequences
        if self.strategy == "dynamic":
            if nrs is not None:
                raise ValueError(
                    "decoding.num_return_sequences: the dynamic beam returns every kept "
                    f"candidate ({4 * max(2, 1 + self.dynamic_num_eos_tokens)} x beam_width for 3+ "
                    "levels) and cannot truncate; leave it unset (null)"
                )
        elif nrs is not None and not 1 <= nrs <= self.beam_width:
            raise ValueError(
                f"decoding.num_return_sequences ({nrs}) must be between 1 and "
                f"decoding.beam_width ({self.beam_width}): a beam of width "
                f"{self.beam_width} cannot return more sequences than it has beams"
            )

    @property
    def constrained(self) -> bool:
        return self.strategy == "constrained" or (
            self.strategy == "dynamic" and self.dynamic_constrained
        )


def fit_to_catalogue(cfg: DecodingConfig, num_items: int) -> DecodingConfig:
    """``cfg`` for a SID table of ``num_items`` items: a beam wider than the catalogue.

    Constrained decoding (``constrained``, or ``dynamic`` with its prefix tables) never holds
    more than ``num_items`` valid prefixes at any step, so a width above it decodes exactly what
    width ``num_items`` does, only slower (and would report more candidates than items): it is
    clamped to ``num_items`` with a warning. Unconstrained decoding has no such equivalence, so
    there the width must not exceed the catalogue.
    """
    if cfg.beam_width <= num_items:
        return cfg
    constrained = cfg.strategy == "constrained" or (
        cfg.strategy == "dynamic" and cfg.dynamic_constrained
    )
    if not constrained:
        raise ValueError(
            f"decoding.beam_width {cfg.beam_width} exceeds the {num_items} items of the SID "
            f"table; with unconstrained strategy {cfg.strategy!r} use a width <= {num_items}"
        )
    nrs = cfg.num_return_sequences
    log.warning(
        "decoding.beam_width %d exceeds the %d items of the SID table: decoding with width %d "
        "(a constrained beam holds at most one SID per item; same candidates, less time)",
        cfg.beam_width,
        num_items,
        num_items,
    )
    return dataclasses.replace(
        cfg, beam_width=num_items, num_return_sequences=None if nrs is None else min(nrs, num_items)
    )


def schedule(cfg: DecodingConfig, num_levels: int) -> list[tuple[int, int]]:
    """Per decoding step ``(beams, keep)``: running beams expanded and candidates kept.

    Step 0 expands the prompt only (its ``beams`` is the nominal width: the beams are identical
    copies there, so :func:`generate_sids` runs one). The last step's ``keep`` is the number of
    SIDs returned per user (beam/constrained: ``num_return_sequences``).
    """
    width = cfg.beam_width
    if cfg.strategy != "dynamic":
        out = [(width, width)] * num_levels
        last = cfg.num_return_sequences or width
        return out[:-1] + [(width, last)]
    to_keep = max(2, 1 + cfg.dynamic_num_eos_tokens) * width
    keep_mult = (1, 2, 4) if cfg.dynamic_mode == "offline" else (1, 3, 4)
    return [(width * 2 ** min(s, 3), to_keep * keep_mult[min(s, 2)]) for s in range(num_levels)]


@dataclasses.dataclass
class BeamOutput:
    """codes int64 [B, C, M] (-1 in empty slots); scores float32 [B, C] sequence log-probs,
    sorted descending (-inf = empty slot); schedule: the (beams, keep) used at each step."""

    codes: Tensor
    scores: Tensor
    schedule: list[tuple[int, int]]


def _check_inputs(
    input_ids: Tensor,
    attention_mask: Tensor,
    level_token_ids: list[Tensor],
    cfg: DecodingConfig,
    prefix_table: PrefixTable | None,
    vocab_size: int,
) -> None:
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and attention_mask must both be [B, T], got "
            f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
        )
    if input_ids.shape[1] == 0 or bool((attention_mask.sum(1) == 0).any()):
        raise ValueError("every prompt needs at least one token (e.g. <bos> for an empty history)")
    if bool((attention_mask[:, 1:] < attention_mask[:, :-1]).any()):
        raise ValueError("prompts must be LEFT-padded (attention_mask 0...0 1...1 per row)")
    if not level_token_ids:
        raise ValueError("level_token_ids: need one tensor of code token ids per SID level")
    for lvl, ids in enumerate(level_token_ids):
        if ids.ndim != 1 or ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(
                f"level_token_ids[{lvl}]: token ids must be a non-empty 1-D tensor "
                f"within the model vocabulary ({vocab_size}); the SID tokenizer and "
                "the model do not match"
            )
    if cfg.constrained:
        if prefix_table is None:
            raise ValueError(
                f"decoding.strategy={cfg.strategy!r} (constrained) needs a "
                "PrefixTable built from the SID table"
            )
        sizes = tuple(int(t.numel()) for t in level_token_ids)
        if sizes != prefix_table.codebook_sizes:
            raise ValueError(
                f"level_token_ids has {sizes} code tokens per level but the SID table "
                f"has codebook sizes {prefix_table.codebook_sizes}: the SID table does "
                "not match the tokenizer"
            )


def _level_log_probs(logits: Tensor, token_ids: Tensor) -> Tensor:
    """logits [R, V] -> log-probs of the level's code tokens [R, K], normalised over all of V."""
    logits = logits.float()
    return logits.index_select(1, token_ids) - torch.logsumexp(logits, dim=1, keepdim=True)


@torch.no_grad()
def prompt_forward(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, share: bool = True
) -> tuple[Any, Tensor, SharedPrompt | EncoderState | None]:
    """One forward over the LEFT-padded prompts [B, T] (attention_mask int64 [B, T]).

    Returns the KV cache, the next-token logits [B, V] and, when ``share`` and the model
    supports it, the prompt's keys/values split off the cache so that every chain of a user
    reads them once per step (:mod:`~sidrec_core.models.beam_attention`; the cache then keeps
    only generated tokens); else None. An encoder-decoder encodes the prompts instead and
    returns its :class:`~sidrec_core.models.beam_encoder.EncoderState` (``share`` n/a).
    """
    if is_encoder_decoder(model):
        return encode_prompt(model, input_ids, attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=(attention_mask.cumsum(1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    cache, logits = out.past_key_values, out.logits[:, -1]
    shared = (
        split_prompt_cache(cache, attention_mask)
        if share and supports_shared_prompt(model, cache)
        else None
    )
    return cache, logits, shared


def decode_step(
    model: nn.Module,
    tokens: Tensor,
    cache: Any,
    shared: SharedPrompt | EncoderState | None,
    attention_mask: Tensor,
    chains: int,
    step: int,
) -> tuple[Any, Tensor]:
    """Feed generated token ``step`` of every chain and return (cache, next logits [B * n, V]).

    Args:
        tokens: int64 [B * n] the token each chain generated at ``step`` (chains of a user are
            adjacent; n = ``chains`` per user); the cache is already ordered the same way.
        shared: the prompt split off by :func:`prompt_forward`, or None (full attention mask),
            or an encoder-decoder's encoder state.
        attention_mask: int64 [B, T] of the prompts.
    """
    if isinstance(shared, EncoderState):
        return decode_with_encoder(model, tokens, cache, shared, chains)
    batch = attention_mask.shape[0]
    positions = (attention_mask.sum(1) + step).repeat_interleave(chains).unsqueeze(1)
    if shared is not None:
        shared.beams = chains
        with shared_prompt(model):
            out = model(
                input_ids=tokens.unsqueeze(1),
                attention_mask={"full_attention": None},
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
                sid_shared_prompt=shared,
            )
    else:
        mask = torch.cat(
            [
                attention_mask.repeat_interleave(chains, 0),
                attention_mask.new_ones(batch * chains, step + 1),
            ],
            dim=1,
        )
        out = model(
            input_ids=tokens.unsqueeze(1),
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.past_key_values, out.logits[:, -1]


@torch.no_grad()  # decoding never trains: no autograd graph per step (time and memory)
def generate_sids(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    level_token_ids: list[Tensor],
    cfg: DecodingConfig,
    prefix_table: PrefixTable | None = None,
) -> BeamOutput:
    """Beam-search one SID per candidate for each prompt.

    Args:
        model: a Hugging Face causal LM (e.g. ``Qwen2ForCausalLM``, or a peft wrapper) taking
            ``input_ids, attention_mask, position_ids, past_key_values, use_cache,
            logits_to_keep`` and returning ``logits`` and ``past_key_values``; or an
            encoder-decoder (``T5ForConditionalGeneration``, see
            :mod:`~sidrec_core.models.beam_encoder`).
        input_ids: int64 [B, T] LEFT-padded prompts; attention_mask: [B, T] (1 = token).
        level_token_ids: M int64 tensors [K_l]: vocabulary id of level ``l``'s code ``c`` is
            ``level_token_ids[l][c]``.
        cfg: strategy and widths (:class:`DecodingConfig`).
        prefix_table: required when ``cfg`` is constrained (see :class:`PrefixTable`).

    Returns:
        :class:`BeamOutput` with C = ``schedule(cfg, M)[-1][1]`` candidates per user, best first.
    """
    device = input_ids.device
    head = model.get_output_embeddings()
    vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
    _check_inputs(input_ids, attention_mask, level_token_ids, cfg, prefix_table, vocab_size)
    level_token_ids = [t.to(device) for t in level_token_ids]
    table = prefix_table.to(device) if cfg.constrained else None
    plan = schedule(cfg, len(level_token_ids))
    batch = input_ids.shape[0]
    attention_mask = attention_mask.to(torch.long)
    # one prompt forward per user; beams only diverge after the first code
    cache, logits, shared = prompt_forward(
        model, input_ids, attention_mask, cfg.shared_prompt_attention
    )
    beams = 1
    scores = torch.zeros(batch, 1, device=device)  # [B, beams] running log-probs
    codes = torch.empty(batch, 1, 0, dtype=torch.long, device=device)  # [B, beams, s]
    prefix = torch.zeros(batch, 1, dtype=torch.long, device=device)  # prefix index per beam
    for step, (_, keep) in enumerate(plan):
        size = level_token_ids[step].numel()
        logp = _level_log_probs(logits, level_token_ids[step]).view(batch, beams, size)
        if table is not None:
            child = table.children[step][prefix]  # [B, beams, K]
            logp = logp.masked_fill(child < 0, NEG_INF)
        total = (scores.unsqueeze(2) + logp).view(batch, beams * size)
        top, idx = total.topk(min(keep, beams * size), dim=1)  # sorted descending
        parent, code = torch.div(idx, size, rounding_mode="floor"), idx % size
        codes = torch.cat(
            [codes.gather(1, parent.unsqueeze(2).expand(-1, -1, step)), code.unsqueeze(2)], dim=2
        )
        if table is not None:
            prefix = child.view(batch, beams * size).gather(1, idx).clamp(min=0)
        if top.shape[1] < keep:  # fewer continuations than slots: pad with empty candidates
            pad = keep - top.shape[1]
            top = torch.cat([top, top.new_full((batch, pad), NEG_INF)], 1)
            codes = torch.cat([codes, codes.new_zeros(batch, pad, step + 1)], 1)
            parent = torch.cat([parent, parent.new_zeros(batch, pad)], 1)
            code = torch.cat([code, code.new_zeros(batch, pad)], 1)
            prefix = torch.cat([prefix, prefix.new_zeros(batch, pad)], 1)
        if step == len(plan) - 1:
            scores = top
            break
        # the best `next_beams` kept candidates run on; reorder the cache to their parents
        next_beams = plan[step + 1][0]
        scores, codes, prefix = top[:, :next_beams], codes[:, :next_beams], prefix[:, :next_beams]
        parent, code = parent[:, :next_beams], code[:, :next_beams]
        rows = (torch.arange(batch, device=device).unsqueeze(1) * beams + parent).reshape(-1)
        cache.reorder_cache(rows)
        beams = next_beams
        tokens = level_token_ids[step][code].reshape(-1)
        cache, logits = decode_step(model, tokens, cache, shared, attention_mask, beams, step)
    codes = codes.masked_fill(torch.isinf(scores).unsqueeze(2), -1)
    return BeamOutput(codes=codes, scores=scores, schedule=plan)
