"""Decoding forwards of an encoder-decoder SID LM (T5): one encoder pass per user, then the
decoder one token per step with its cache.

:func:`~sidrec_core.models.beam.prompt_forward` and :func:`~sidrec_core.models.beam.decode_step`
dispatch here for models whose config says ``is_encoder_decoder``, so beam search and sampling
run unchanged on top. The encoder reads each user's prompt once; the first decoder forward (the
decoder start token) runs once per user too and fills the cross-attention cache at [B, H, T, D].
From then on rows are chains (beams or draws, user-major): the caller's ``reorder_cache`` copies
the self- and cross-attention caches to the chains' parents, and every step hands the decoder
the encoder states and mask repeated per chain (T5 builds its cross-attention mask from them;
the keys and values come from the cache). Unlike the decoder-only path
(:mod:`~sidrec_core.models.beam_attention`) the prompt's keys/values are thus held once per
chain: decoding memory grows with W x T x D per layer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor, nn


@dataclasses.dataclass
class EncoderState:
    """Per-user encoder output: hidden [B, T, D]; mask int64 [B, T] (1 = token)."""

    hidden: Tensor
    mask: Tensor

    def per_chain(self, chains: int) -> tuple[Tensor, Tensor]:
        """Hidden [B * n, T, D] and mask [B * n, T] for n chains per user (user-major)."""
        return self.hidden.repeat_interleave(chains, 0), self.mask.repeat_interleave(chains, 0)


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def encode_prompt(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor
) -> tuple[Any, Tensor, EncoderState]:
    """Encoder over the prompts [B, T] and the decoder's first step from its start token.

    Returns the decoder cache (``EncoderDecoderCache``), the logits of the first SID token
    [B, V] and the :class:`EncoderState` the later steps read.
    """
    hidden = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)[0]
    start = model.config.decoder_start_token_id
    out = model(
        encoder_outputs=(hidden,),
        attention_mask=attention_mask,
        decoder_input_ids=input_ids.new_full((input_ids.shape[0], 1), start),
        use_cache=True,
    )
    return out.past_key_values, out.logits[:, -1], EncoderState(hidden, attention_mask)


def decode_with_encoder(
    model: nn.Module, tokens: Tensor, cache: Any, state: EncoderState, chains: int
) -> tuple[Any, Tensor]:
    """Feed each chain's generated token ``tokens`` [B * n] -> (cache, next logits [B * n, V])."""
    hidden, mask = state.per_chain(chains)
    out = model(
        encoder_outputs=(hidden,),
        attention_mask=mask,
        decoder_input_ids=tokens.unsqueeze(1),
        past_key_values=cache,
        use_cache=True,
    )
    return out.past_key_values, out.logits[:, -1]
