"""Generative recommender: a decoder-only causal LM (Qwen2 architecture) over SID tokens, or with
``sidlm.arch=encoder_decoder`` a T5 (:mod:`~sidrec_core.models.sidlm_seq2seq`).

The model reads a user's history as SID tokens and generates the next item's SID, as TIGER
(Rajput et al., 2023) does with an encoder-decoder and al_sid / MiniOneRec do with decoder-only
LMs. Generation goes through the batched beam module (:mod:`sidrec_core.models.beam`); the SIDs it
returns map back to items through the SID table, so the shared evaluator scores this model like
any other :class:`~sidrec_core.models.base.Recommender`.

Load modes (``sidlm.load``): ``scratch`` (a fresh Qwen2 sized by params), ``dense`` (a local
checkpoint with the SID tokens added; only the new embedding rows train, old rows are masked out
of the gradient), ``pretrained`` (full fine-tune of a local checkpoint), ``lora`` (peft LoRA on
q/k/v/o plus trainable SID token rows).

LM-head slicing: the training loss only needs logits from the first labelled position on, so the
vocabulary projection skips the prompt (``logits_to_keep``); for SFT with left padding that is
almost the whole sequence. The loss is identical to the full-logits loss.

Empty history: the prompt is the bare prefix (``<bos>``, or the chat template with an empty user
turn) and the model recommends from its learned unconditional next-item distribution.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from sidrec_core.data.dataset import DataConfig, Dataset, load_prepared
from sidrec_core.data.sid_examples import IGNORE, ExampleEncoder, Seq2SeqExampleEncoder, collate
from sidrec_core.data.split import LeaveOneOut, leave_one_out
from sidrec_core.io import reading, write_json
from sidrec_core.models.base import Recommender
from sidrec_core.models.beam import (
    DecodingConfig,
    PrefixTable,
    candidates_to_items,
    fit_to_catalogue,
    generate_sids,
    schedule,
)
from sidrec_core.models.sid_vocab import DEFAULT_SYSTEM_PROMPT, PromptFormat, SIDVocab
from sidrec_core.models.sidlm_dropout import add_dropout
from sidrec_core.models.sidlm_seq2seq import (
    WEIGHT_FILES,
    load_lm,
    scratch_seq2seq,
    seq2seq_loss,
)
from sidrec_core.sid.table import SIDTable
from sidrec_core.train import TrainConfig

META_FILE = "sidlm_meta.json"
ARCHS = ("decoder", "encoder_decoder")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclasses.dataclass(frozen=True)
class SIDLMConfig:
    """``sidlm`` section; ``train`` is a nested subsection. Decoding is its own section
    (:class:`~sidrec_core.models.beam.DecodingConfig`), set on the model as ``model.decoding``."""

    task: Literal["pretrain", "sft"] = "pretrain"
    # decoder: Qwen2 causal LM over prompt + SID; encoder_decoder: TIGER-style T5 whose encoder
    # reads the prompt and whose decoder emits the M SID tokens (sidlm_seq2seq.py; the size
    # fields map per stack there, so both arches compare at equal width and depth per stack)
    arch: Literal["decoder", "encoder_decoder"] = "decoder"
    load: Literal["scratch", "dense", "pretrained", "lora"] = "scratch"
    checkpoint: str | None = None  # local HF checkpoint folder (dense / pretrained / lora)
    # scratch model size (Qwen2Config)
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 512
    attention_dropout: float = 0.0
    # dropout on the input embeddings and on every residual branch (attention and MLP outputs
    # before they join the stream), as TIGER's T5 and GPT-2 have it (sidlm_dropout.py); decoder
    # only: the encoder-decoder's T5 applies attention_dropout to its residual branches already
    embedding_dropout: float = 0.0
    residual_dropout: float = 0.0
    rope_theta: float = 10000.0
    max_positions: int = 1024
    # lora
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lm_head_slicing: bool = True
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    # data / artifacts
    sid_dir: str = "data/sids"
    output_dir: str = "models/sidlm"
    predictions_dir: str = "data/predictions/sidlm"
    shuffle_buffer: int = 20000
    length_group: int = 50  # batches per length-sorted window (0 = no length grouping)
    # pretrain streams: "drop" leaves each window's first item unlabelled, so no item is learned
    # from <bos> alone (per-prefix rows, as TIGER trains; sft and the encoder-decoder never
    # train that target, so the key changes nothing for them)
    first_item_targets: Literal["keep", "drop"] = "keep"
    # "batch": the mean over the batch's target tokens (a token in a batch of short streams
    # weighs more); "tokens": their sum over a fixed count, batch_size x the mean target tokens
    # of a training row, so every target token weighs the same in every batch
    loss_normalization: Literal["batch", "tokens"] = "batch"
    # auto = bf16 on accelerators; fp16 is not offered (fit clips gradients before unscaling)
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"sidlm.arch: expected one of {list(ARCHS)}, got {self.arch!r}")
        for name in ("attention_dropout", "embedding_dropout", "residual_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"sidlm.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.arch == "encoder_decoder" and (self.embedding_dropout or self.residual_dropout):
            raise ValueError(
                "sidlm.embedding_dropout / sidlm.residual_dropout: arch encoder_decoder (T5) "
                "drops its embeddings and residual branches at sidlm.attention_dropout; set "
                "them to 0"
            )
        if self.arch == "encoder_decoder" and self.load != "scratch":
            raise ValueError(
                f"sidlm.load: arch encoder_decoder builds a scratch T5, got load {self.load!r}"
            )
        if self.load != "scratch" and not self.checkpoint:
            raise ValueError(
                f"sidlm.checkpoint: load mode {self.load!r} needs a local checkpoint path"
            )
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "lora_r",
            "lora_alpha",
            "max_positions",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"sidlm.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"sidlm.hidden_size ({self.hidden_size}) must divide by sidlm.num_heads "
                f"({self.num_heads}), which must divide by sidlm.num_kv_heads "
                f"({self.num_kv_heads})"
            )


# What to do about a trained SID LM folder whose files cannot be read back.
RETRAIN = "re-run the stage that wrote it (dvc repro train_sidlm, or rl_sidlm for its output)"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_model_dir(path: str | Path | None, key: str, tokenizer: bool = True) -> Path:
    """``path`` must be a folder written by ``save_pretrained``: config.json, weights and (with
    ``tokenizer``) tokenizer files; otherwise one line naming ``key``, the path and what lacks."""
    if not path or not Path(path).exists():
        raise FileNotFoundError(
            f"{key}: local checkpoint path {str(path)!r} does not exist "
            "(nothing is downloaded; save a model there with save_pretrained)"
        )
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{key}: {folder} is a file, expected a model folder (save_pretrained)")
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("config.json")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES[::2]))
    if tokenizer and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise ValueError(
            f"{key}: {folder} is not a saved model folder (missing {'; '.join(missing)})"
        )
    return folder


def _check_checkpoint(path: str | None) -> Path:
    return check_model_dir(path, "sidlm.checkpoint")


def scratch_lm(cfg: SIDLMConfig, vocab: SIDVocab) -> Qwen2ForCausalLM:
    tok = vocab.tokenizer
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        attention_dropout=cfg.attention_dropout,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return Qwen2ForCausalLM(config)


def _mask_rows(weight: nn.Parameter, num_old: int) -> None:
    """Zero the gradient of rows ``< num_old`` so only the new (SID) token rows learn."""
    weight.requires_grad_(True)
    weight.register_hook(lambda g: torch.cat([torch.zeros_like(g[:num_old]), g[num_old:]]))


def build_lm(cfg: SIDLMConfig, vocab: SIDVocab) -> nn.Module:
    """The LM for ``cfg.arch`` and ``cfg.load`` with its vocabulary covering ``vocab`` (see
    module doc; the encoder-decoder is always scratch), a decoder with the embedding and
    residual dropout of ``cfg`` (:mod:`~sidrec_core.models.sidlm_dropout`)."""
    if cfg.arch == "encoder_decoder":
        return scratch_seq2seq(cfg, vocab)
    if cfg.load == "scratch":
        lm = scratch_lm(cfg, vocab)
        add_dropout(lm, cfg.embedding_dropout, cfg.residual_dropout)
        return lm
    path = _check_checkpoint(cfg.checkpoint)
    lm = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    num_old = lm.get_input_embeddings().num_embeddings
    if len(vocab) > num_old:
        lm.resize_token_embeddings(len(vocab))
    if cfg.load == "dense":
        for p in lm.parameters():
            p.requires_grad_(False)
        emb, head = lm.get_input_embeddings().weight, lm.get_output_embeddings().weight
        _mask_rows(emb, num_old)
        if head is not emb:
            _mask_rows(head, num_old)
    elif cfg.load == "lora":
        from peft import LoraConfig, get_peft_model

        new_ids = list(range(num_old, len(vocab)))
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(LORA_TARGETS),
            task_type="CAUSAL_LM",
            trainable_token_indices={"embed_tokens": new_ids} if new_ids else None,
        )
        lm = get_peft_model(lm, lora)
    add_dropout(lm, cfg.embedding_dropout, cfg.residual_dropout)
    return lm


def load_inputs(data: DataConfig, sid_dir: str) -> tuple[Dataset, LeaveOneOut, SIDTable]:
    """The prepared dataset, its leave-one-out split and the SID table at ``sid_dir`` (what a
    SID LM stage reads)."""
    ds = load_prepared(data.prepared_dir)
    return ds, leave_one_out(ds), SIDTable.load(sid_dir, num_items=ds.num_items)


def build_sidlm(cfg: SIDLMConfig, table: SIDTable, max_history: int) -> SIDLM:
    """An untrained SID LM for ``cfg.load`` over the SID tokens of ``table``."""
    checkpoint = None if cfg.load == "scratch" else str(_check_checkpoint(cfg.checkpoint))
    vocab = SIDVocab.build(table.codebook_sizes, checkpoint, cfg.system_prompt)
    return SIDLM(build_lm(cfg, vocab), vocab, table, cfg, max_history)


class SIDLM(Recommender):
    """Causal LM over SID tokens behind the shared recommender contract.

    Training batches carry ``input_ids``, ``attention_mask``, ``position_ids``, ``labels`` [B, T];
    ``recommend`` reads ``history`` [B, L] (left-padded item ids) and beam-searches SIDs.
    """

    def __init__(
        self, lm: nn.Module, vocab: SIDVocab, table: SIDTable, cfg: SIDLMConfig, max_history: int
    ):
        super().__init__()
        vocab.check_table(table)
        rows = int(lm.config.vocab_size)
        if rows < len(vocab):
            raise ValueError(
                f"sidlm.checkpoint: model has {rows} embedding rows but the SID tokenizer "
                f"has {len(vocab)} tokens; the model and tokenizer do not match"
            )
        self.lm, self.vocab, self.table, self.cfg = lm, vocab, table, cfg
        self.fmt = PromptFormat.for_task(vocab.tokenizer, cfg.task, cfg.system_prompt)
        examples = Seq2SeqExampleEncoder if cfg.arch == "encoder_decoder" else ExampleEncoder
        self.encoder = examples(
            vocab.item_token_ids(table),
            self.fmt,
            cfg.task,
            max_history,
            first_item_targets=cfg.first_item_targets == "keep",
        )
        # loss_normalization "tokens": the fixed divisor, set by the trainer from the training
        # rows (batch_size x mean target tokens a row; see loss)
        self.loss_tokens: float | None = None
        self.prefix_table = PrefixTable.from_codes(table.codes[1:], table.codebook_sizes)
        self.level_token_ids = vocab.level_token_ids
        self.pad_id = vocab.tokenizer.pad_token_id
        # training-time validation decodes with the defaults; eval_sidlm sets the decoding section
        self.decoding = DecodingConfig()
        self.reset_candidate_stats()

    @property
    def decoding(self) -> DecodingConfig:
        """How :meth:`recommend` decodes; set it to a ``decoding`` section, and a beam wider
        than the SID table is fitted to it (:func:`~sidrec_core.models.beam.fit_to_catalogue`)."""
        return self._decoding

    @decoding.setter
    def decoding(self, cfg: DecodingConfig) -> None:
        self._decoding = fit_to_catalogue(cfg, self.table.num_items)

    def num_candidates(self) -> int:
        """SIDs (hence items, at most) returned per user under ``self.decoding``."""
        return schedule(self.decoding, self.table.num_levels)[-1][1]

    # -- training ---------------------------------------------------------------------------
    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """``forward`` is the loss so data-parallel wrappers (DDP via accelerate) sync gradients."""
        return self.loss(batch)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Next-token cross-entropy over labelled positions (float32); the encoder-decoder's is
        over its M target tokens (:func:`~sidrec_core.models.sidlm_seq2seq.seq2seq_loss`).

        ``loss_normalization`` "batch": the mean over the batch's labelled tokens; "tokens": their
        sum divided by ``self.loss_tokens``, the same for every batch.
        """
        tokens = self.cfg.loss_normalization == "tokens"
        if tokens and not self.loss_tokens:
            raise RuntimeError(
                "sidlm.loss_normalization=tokens: set SIDLM.loss_tokens (the fixed token count "
                "a batch's loss is divided by) before training; train_sidlm sets it"
            )
        if self.cfg.arch == "encoder_decoder":
            if tokens:
                return seq2seq_loss(self.lm, batch, reduction="sum") / self.loss_tokens
            return seq2seq_loss(self.lm, batch)
        labels = batch["labels"]
        seq_len = labels.shape[1]
        start = first_label_index(labels) if self.cfg.lm_head_slicing else 1
        # logits_to_keep = T - start + 1 keeps the hidden states at positions start-1 .. T-1;
        # position t predicts label t + 1, so drop the last one.
        out = self.lm(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch.get("position_ids"),
            use_cache=False,
            logits_to_keep=seq_len - start + 1,
        )
        logits = out.logits[:, :-1].float()
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels[:, start:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum" if tokens else "mean",
        )
        return loss / self.loss_tokens if tokens else loss

    # -- recommendation ---------------------------------------------------------------------
    def reset_candidate_stats(self) -> None:
        self.candidate_stats = {"generated": 0, "invalid": 0, "duplicate": 0}

    def prompts(self, history: Tensor) -> dict[str, Tensor]:
        """``history`` [B, L] left-padded item ids -> left-padded prompt batch [B, T]."""
        rows = [[int(x) for x in h if x > 0] for h in history.cpu().numpy()]
        return collate([{"input_ids": self.encoder.prompt(r)} for r in rows], self.pad_id, "left")

    @torch.no_grad()
    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        device = batch["history"].device
        prompt = self.prompts(batch["history"])
        out = generate_sids(
            self.lm,
            prompt["input_ids"].to(device),
            prompt["attention_mask"].to(device),
            [t.to(device) for t in self.level_token_ids],
            self.decoding,
            self.prefix_table,
        )
        ids, scores, stats = candidates_to_items(out, self.prefix_table, k)
        for key in self.candidate_stats:
            self.candidate_stats[key] += int(stats.get(key, 0))
        return ids.to(device), scores.to(device)

    # -- persistence ------------------------------------------------------------------------
    def export_lm(self) -> PreTrainedModel:
        """A plain HF model (LoRA adapters and trainable token rows merged in) for saving."""
        if hasattr(self.lm, "merge_and_unload"):
            self.lm = self.lm.merge_and_unload()
        return self.lm

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.export_lm().save_pretrained(str(directory))
        self.vocab.save(directory)
        write_json(
            directory / META_FILE,
            {
                "task": self.cfg.task,
                "arch": self.cfg.arch,
                "load": self.cfg.load,
                "sid_table": self.table.fingerprint(),
                "max_history": self.encoder.max_history,
            },
        )

    @classmethod
    def load(
        cls, directory: str | Path, table: SIDTable, cfg: SIDLMConfig, max_history: int
    ) -> SIDLM:
        """Load a model saved by :meth:`save`; fail when ``table`` is not the one it trained on."""
        directory = Path(directory)
        if not (directory / META_FILE).exists():
            raise FileNotFoundError(
                f"sidlm.output_dir: {directory} holds no trained sidlm model "
                "(run the train_sidlm stage first)"
            )
        with reading(directory / META_FILE, RETRAIN):
            meta = json.loads((directory / META_FILE).read_text())
            for key in ("sid_table", "task"):
                if key not in meta:
                    raise KeyError(f"no {key!r} entry")
        check_model_dir(directory, "sidlm.output_dir")
        vocab = SIDVocab.load(directory)
        vocab.check_table(table)
        if meta["sid_table"] != table.fingerprint():
            raise ValueError(
                f"sidlm.sid_dir: the SID table in {cfg.sid_dir} is not the one the model "
                f"in {directory} was trained on; retrain or point at the right table"
            )
        if meta["task"] != cfg.task:
            raise ValueError(
                f"sidlm.task: model was trained with task {meta['task']!r}, params say {cfg.task!r}"
            )
        arch = meta.get("arch", "decoder")  # folders saved before the arch option: decoder
        if arch not in ARCHS:
            raise ValueError(
                f"sidlm.output_dir: {directory / META_FILE} records arch {arch!r}, "
                f"expected one of {list(ARCHS)}"
            )
        if arch != cfg.arch:
            raise ValueError(
                f"sidlm.arch: the model in {directory} was trained with arch {arch!r}, "
                f"params say {cfg.arch!r}"
            )
        lm = load_lm(directory, arch, META_FILE)
        return cls(lm, vocab, table, cfg, max_history)


def first_label_index(labels: Tensor) -> int:
    """Min over the batch of each row's first non-ignored label index (>= 1; 1 if none)."""
    has = labels != IGNORE
    if not bool(has.any()):
        return 1
    first = torch.where(
        has.any(1),
        has.float().argmax(1),
        torch.full_like(has[:, 0], labels.shape[1], dtype=torch.long),
    )
    return max(1, int(first.min()))
