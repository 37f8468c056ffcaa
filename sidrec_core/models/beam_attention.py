"""Decoding-step attention that reads each user's prompt keys/values once for all its beams.

All W beams of a user share the prompt; they differ only in the < M SID tokens generated so far.
Stock beam search (transformers' generate, and a naive KV-cache expansion) copies the prompt cache
to every beam and re-gathers it at every step: profiling our first CPU version showed ~55% of the
time in those copies. Here the decoding steps keep the prompt cache at [B, H_kv, T, D] (one copy
per user) and only the generated tail in a per-beam cache [B * W, H_kv, s, D]; attention scores
against the prompt are one batched matmul of the user's W x G queries (G = query heads per KV
head) with its prompt keys, joined with the tail scores under one softmax. This is exact
attention, not an approximation; tests compare it with transformers' generate and with
brute-force teacher-forced scores.

It plugs into Hugging Face models through the public extension points: a function registered in
``AttentionInterface`` (selected for the decoding forwards only, by :func:`shared_prompt`), the
per-layer state passed as a forward kwarg (``sid_shared_prompt``), and a precomputed mask mapping
(so the model builds no [B * W, T] mask). Models with sliding-window layers or non-dynamic caches
use the plain path in :mod:`sidrec_core.models.beam` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer

SHARED_PROMPT_ATTENTION = "sidrec_shared_prompt"


@dataclasses.dataclass
class SharedPrompt:
    """Per-user prompt cache: keys/values per layer [B, H_kv, T, D]; bias [B, 1, 1, T] additive
    (0 = token, -inf = padding); beams: current beams per user (rows are user-major)."""

    keys: list[Tensor]
    values: list[Tensor]
    bias: Tensor
    beams: int


def shared_prompt_attention(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: object,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[Tensor, None]:
    """query [R, H, 1, D] (R = B x beams), key/value: generated tail [R, H_kv, s, D].

    Returns attn_output [R, 1, H, D] like transformers' sdpa/eager functions.
    """
    state: SharedPrompt = kwargs["sid_shared_prompt"]
    idx = module.layer_idx
    prompt_k, prompt_v = state.keys[idx], state.values[idx]
    batch, kv_heads, _, dim = prompt_k.shape
    rows, heads, q_len, _ = query.shape
    beams, groups = state.beams, heads // kv_heads
    if q_len != 1 or rows != batch * beams:
        raise RuntimeError("shared-prompt attention decodes one token per beam of every user")
    # [B, beams, H_kv, G, D] -> [B, H_kv, beams * G, D]: all queries of a user against its prompt
    q = query.view(batch, beams, kv_heads, groups, dim)
    q_user = q.permute(0, 2, 1, 3, 4).reshape(batch, kv_heads, beams * groups, dim)
    prompt_scores = torch.matmul(q_user, prompt_k.transpose(2, 3)) * scaling + state.bias
    tail_k = key.view(batch, beams, kv_heads, key.shape[2], dim)
    tail_scores = torch.einsum("bnhgd,bnhsd->bhngs", q, tail_k) * scaling
    tail_scores = tail_scores.reshape(batch, kv_heads, beams * groups, -1)
    probs = torch.cat([prompt_scores, tail_scores], dim=-1).softmax(-1, dtype=torch.float32)
    probs = probs.to(query.dtype)
    plen = prompt_k.shape[2]
    out = torch.matmul(probs[..., :plen], prompt_v)  # [B, H_kv, beams * G, D]
    tail_p = probs[..., plen:].reshape(batch, kv_heads, beams, groups, -1)
    tail_v = value.view(batch, beams, kv_heads, value.shape[2], dim)
    out = out.view(batch, kv_heads, beams, groups, dim) + torch.einsum(
        "bhngs,bnhsd->bhngd", tail_p, tail_v
    )
    return out.permute(0, 2, 1, 3, 4).reshape(rows, 1, heads, dim), None


AttentionInterface.register(SHARED_PROMPT_ATTENTION, shared_prompt_attention)


def supports_shared_prompt(model: nn.Module, cache: Cache) -> bool:
    """Only plain full-attention decoders with a filled dynamic cache take the fast path."""
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return (
        config is not None
        and hasattr(config, "_attn_implementation")
        and not getattr(config, "is_encoder_decoder", False)
        and all(t == "full_attention" for t in layer_types)
        and all(
            type(layer) is DynamicLayer and layer.is_initialized
            for layer in getattr(cache, "layers", [None])
        )
    )


def split_prompt_cache(cache: Cache, attention_mask: Tensor) -> SharedPrompt:
    """Move the prompt keys/values out of ``cache`` (left empty for the generated tail)."""
    keys = [layer.keys for layer in cache.layers]
    values = [layer.values for layer in cache.layers]
    for layer in cache.layers:
        layer.keys = layer.values = None
        layer.is_initialized = False
    bias = torch.zeros(attention_mask.shape, dtype=keys[0].dtype, device=keys[0].device)
    bias = bias.masked_fill(attention_mask == 0, float("-inf"))[:, None, None, :]
    return SharedPrompt(keys, values, bias, beams=1)


@contextlib.contextmanager
def shared_prompt(model: nn.Module) -> Iterator[None]:
    """Route the model's attention through :func:`shared_prompt_attention` inside the block."""
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = SHARED_PROMPT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
