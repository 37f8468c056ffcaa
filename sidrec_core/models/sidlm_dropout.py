"""Embedding and residual dropout for the decoder-only SID LM.

Qwen2 (like Llama) drops only attention probabilities. TIGER's T5 (Rajput et al., 2023) and GPT-2
also drop the input embeddings and every residual branch, ``x + Dropout(sublayer(norm(x)))``: the
"residual dropout" of Vaswani et al. (2017, section 5.4), applied to each sub-layer's output before
it joins the stream, never to the stream itself. :func:`add_dropout` adds both to a built Hugging
Face decoder as forward hooks on its input embedding module and on each layer's ``self_attn`` and
``mlp``.

Why hooks rather than the alternatives:

- A subclassed ``Qwen2DecoderLayer`` has to copy the layer's ``forward``, since the residual sums
  sit inside it with no extension point; that ties this code to one transformers release (version
  5 changed that forward's arguments and return type).
- GPT-2 has ``embd_pdrop``/``resid_pdrop``, but also learned absolute positions, LayerNorm, GELU
  and no grouped-query attention: at rate 0 it would not be today's model (the default and
  ``dvc.lock`` would change), and shared-prompt decoding
  (:mod:`~sidrec_core.models.beam_attention`) is written and tested against the Qwen2 family.
- Hooks are torch's public module extension point. The module tree and state dict stay plain
  Qwen2, so ``save_pretrained``/``from_pretrained``, peft LoRA, the constrained beam search and
  shared-prompt attention see an unchanged model. A hook drops only while its module is in
  training mode, so evaluation and decoding are untouched; at rate 0 no hook is registered.

The hooks are not saved with the model: a folder loaded for evaluation or GRPO (whose loss runs
in eval mode) has none, which is what eval mode would do anyway.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle


class _OutputDropout:
    """Forward hook: dropout with rate ``p`` on a module's output (a tuple's first element, as
    attention modules return ``(output, weights)``) while the module is in training mode."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not module.training:
            return None  # keep the output as is
        if isinstance(output, tuple):
            return (F.dropout(output[0], self.p, training=True), *output[1:])
        return F.dropout(output, self.p, training=True)


def decoder_layers(lm: nn.Module) -> list[nn.Module]:
    """The transformer blocks of a Hugging Face decoder: modules with ``self_attn`` and ``mlp``
    children (Qwen2, Qwen3, Llama, Mistral, also inside a peft wrapper)."""
    return [
        m
        for m in lm.modules()
        if isinstance(getattr(m, "self_attn", None), nn.Module)
        and isinstance(getattr(m, "mlp", None), nn.Module)
    ]


def add_dropout(lm: nn.Module, embedding: float, residual: float) -> list[RemovableHandle]:
    """Register embedding dropout (rate ``embedding``, on the input embeddings) and residual
    dropout (rate ``residual``, on each layer's attention and MLP outputs) on ``lm``; a rate of 0
    registers nothing. Returns the hook handles."""
    for key, rate in (("embedding_dropout", embedding), ("residual_dropout", residual)):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"sidlm.{key} must be in [0, 1), got {rate}")
    handles = []
    if embedding > 0:
        handles.append(lm.get_input_embeddings().register_forward_hook(_OutputDropout(embedding)))
    if residual > 0:
        layers = decoder_layers(lm)
        if not layers:
            raise ValueError(
                f"sidlm.residual_dropout: {type(lm).__name__} has no decoder layers with "
                "self_attn and mlp modules to drop the outputs of"
            )
        hook = _OutputDropout(residual)
        for layer in layers:
            handles.append(layer.self_attn.register_forward_hook(hook))
            handles.append(layer.mlp.register_forward_hook(hook))
    return handles
