"""The encoder-decoder SID LM (``sidlm.arch=encoder_decoder``): a T5 built from a config in code.

As in TIGER (Rajput et al. 2023, "Recommender Systems with Generative Retrieval"), the encoder
reads the user's history as SID tokens (the prompt the task formats: ``<bos>`` + history for
``pretrain``, the chat template around it for ``sft``; left-padded like the decoder arch's
prompts) and the decoder, started from ``<bos>`` (the decoder start token), emits the target's M
SID tokens; the loss is the cross-entropy on those M tokens. GRID (Ju et al. 2025,
arXiv:2507.22224) compares this architecture with a decoder-only LM of the same size.

Size mapping from :class:`~sidrec_core.models.sidlm.SIDLMConfig`, per stack, so an ``arch``
comparison holds width and depth fixed (the encoder-decoder then has two stacks and
cross-attention, about twice the decoder-only parameters):

- ``hidden_size`` -> ``d_model``; ``num_heads`` -> ``num_heads`` with ``d_kv = hidden_size /
  num_heads``; ``num_layers`` -> ``num_layers`` (encoder) and ``num_decoder_layers``;
- ``intermediate_size`` -> ``d_ff`` of a gated SiLU feed-forward (the SwiGLU of Qwen2's MLP);
- ``attention_dropout`` -> ``dropout_rate`` (T5 applies it to every residual branch as well as
  to the attention weights);
- T5 encodes positions with relative buckets and has no grouped-query attention, so
  ``rope_theta``, ``max_positions`` and ``num_kv_heads`` do not apply (every head has its own
  keys and values; a decoder with ``num_kv_heads < num_heads`` has fewer attention
  parameters); the token embedding is tied to the LM head, as in the scratch decoder.

Training rows are one example per prefix of the training part (sliding window of
``max_history`` items) whatever the task: the ``pretrain`` item stream trains every item of a
window in one causal pass, which an encoder-decoder cannot do, so per-prefix rows give it every
training item but each user's first as a target, each with its full history window.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
)

from sidrec_core.data.sid_examples import IGNORE
from sidrec_core.io import reading

if TYPE_CHECKING:
    from sidrec_core.models.sid_vocab import SIDVocab
    from sidrec_core.models.sidlm import SIDLMConfig


# The weight files save_pretrained writes (single file or sharded index), in load order.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def scratch_seq2seq(cfg: SIDLMConfig, vocab: SIDVocab) -> T5ForConditionalGeneration:
    """A fresh T5 over the SID vocabulary, sized by ``cfg`` (mapping in the module docstring)."""
    tok = vocab.tokenizer
    config = T5Config(
        vocab_size=len(tok),
        d_model=cfg.hidden_size,
        d_kv=cfg.hidden_size // cfg.num_heads,
        d_ff=cfg.intermediate_size,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        feed_forward_proj="gated-silu",
        dropout_rate=cfg.attention_dropout,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.bos_token_id,
    )
    return T5ForConditionalGeneration(config)


def seq2seq_loss(lm: nn.Module, batch: dict[str, Tensor], reduction: str = "mean") -> Tensor:
    """Cross-entropy (float32) of the M target tokens given the encoded prompt, reduced over the
    labelled tokens by ``reduction`` (``mean`` or ``sum``).

    ``batch``: ``input_ids``/``attention_mask`` [B, T] the prompts, ``labels`` [B, M] the
    target SID tokens; the decoder reads ``<start>`` + labels[:, :-1] (teacher forcing).
    """
    labels = batch["labels"]
    start = labels.new_full((labels.shape[0], 1), lm.config.decoder_start_token_id)
    decoder_ids = torch.cat([start, labels[:, :-1]], 1)
    decoder_ids = decoder_ids.masked_fill(decoder_ids == IGNORE, lm.config.pad_token_id)
    out = lm(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=decoder_ids,
        use_cache=False,
    )
    logits = out.logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )


def load_lm(directory: str | Path, arch: str, meta_file: str) -> PreTrainedModel:
    """The saved HF model of a SID LM folder, of the class its recorded ``arch`` names.

    Fails (one line naming the folder) when ``config.json`` holds the other kind of model.
    """
    remedy = "re-run the stage that wrote the folder (dvc repro train_sidlm)"
    with reading(Path(directory) / "config.json", remedy):
        config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    seq2seq = bool(getattr(config, "is_encoder_decoder", False))
    if seq2seq != (arch == "encoder_decoder"):
        kind = "encoder-decoder" if seq2seq else "decoder-only"
        raise ValueError(
            f"sidlm.output_dir: {directory} records arch {arch!r} in {meta_file} but its "
            f"config.json holds a {kind} {config.model_type!r} model"
        )
    cls = T5ForConditionalGeneration if seq2seq else AutoModelForCausalLM
    weights = next(
        (Path(directory) / f for f in WEIGHT_FILES if (Path(directory) / f).is_file()),
        Path(directory),
    )
    with reading(weights, remedy):
        return cls.from_pretrained(str(directory), local_files_only=True)


def check_decoder_arch(cfg: SIDLMConfig, consumer: str) -> None:
    """One line naming ``sidlm.arch`` when ``consumer`` (a decoder-only method) gets a T5."""
    if cfg.arch != "decoder":
        raise ValueError(
            f"sidlm.arch: {consumer} works on the decoder-only SID LM; set sidlm.arch=decoder "
            f"(got {cfg.arch!r})"
        )
