"""The SID LM as ETEGRec trains it: a loss that also returns the states predicting each target's
first code, a table that can be swapped after re-encoding, and optional codebook tying.

Tying (the seed's LLaMA variant): one bias-free map ``P`` (``code_proj``, E -> H) gives the
embedding row of code k at level l as ``P e^l_k``, so with the Qwen2 model's tied input/output
embeddings the level-l logits are ``h . (P e^l_k) = (P^T h) . e^l_k``, i.e. ``proj(h) .
codebook_l^T`` with ``proj(h) = P^T h``. :meth:`ETEGRecLM.materialize` writes those rows into the
plain embedding matrix, so the saved model is an ordinary SID LM that ``eval_sidlm`` loads.

Shapes: input_ids/labels [B, T], hidden [B, T, H], codebooks [M, K, E].
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec_core.data.sid_examples import IGNORE, ExampleEncoder
from sidrec_core.models.beam import PrefixTable
from sidrec_core.models.sid_vocab import SIDVocab
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm
from sidrec_core.models.sidlm_seq2seq import check_decoder_arch
from sidrec_core.sid.table import SIDTable


def check_lm_config(cfg: SIDLMConfig) -> None:
    """ETEGRec reads hidden states and rebuilds the token rows: a scratch decoder-only model
    (its alignment losses read the causal LM's states before each target), pretrain task."""
    check_decoder_arch(cfg, "etegrec")
    if cfg.load != "scratch":
        raise ValueError(
            f"etegrec trains a scratch SID LM; set sidlm.load=scratch (got {cfg.load})"
        )
    if cfg.task != "pretrain":
        raise ValueError(
            f"etegrec uses the item-stream task; set sidlm.task=pretrain (got {cfg.task})"
        )


class ETEGRecLM(SIDLM):
    """SID LM with :meth:`loss_and_states`, :meth:`set_table` and optional codebook tying.

    ``codebooks`` returns the tokenizer's live codebooks [M, K, E] (a callable, so the tokenizer
    is not registered as a submodule and its parameters stay out of the recommender's group).
    """

    def __init__(
        self,
        lm: nn.Module,
        vocab: SIDVocab,
        table: SIDTable,
        cfg: SIDLMConfig,
        max_history: int,
        codebooks: Callable[[], Tensor] | None = None,
    ) -> None:
        super().__init__(lm, vocab, table, cfg, max_history)
        self._codebooks = codebooks
        self.sid_ids = torch.cat(vocab.level_token_ids)  # level-major, [sum K]
        self.code_proj: nn.Linear | None = None
        if codebooks is not None:
            latent = codebooks().shape[-1]
            self.code_proj = nn.Linear(latent, int(lm.config.hidden_size), bias=False)
            nn.init.normal_(self.code_proj.weight, std=latent**-0.5)

    @classmethod
    def build(
        cls,
        cfg: SIDLMConfig,
        table: SIDTable,
        max_history: int,
        codebooks: Callable[[], Tensor] | None = None,
    ) -> ETEGRecLM:
        check_lm_config(cfg)
        vocab = SIDVocab.build(table.codebook_sizes, None, cfg.system_prompt)
        return cls(build_lm(cfg, vocab), vocab, table, cfg, max_history, codebooks)

    @property
    def tied(self) -> bool:
        return self.code_proj is not None

    def set_table(self, table: SIDTable) -> None:
        """Swap the SID table (same codebook sizes): item tokens and the decoding prefix trie."""
        self.vocab.check_table(table)
        self.table = table
        self.encoder = ExampleEncoder(
            self.vocab.item_token_ids(table), self.fmt, self.cfg.task, self.encoder.max_history
        )
        self.prefix_table = PrefixTable.from_codes(table.codes[1:], table.codebook_sizes)

    def code_rows(self) -> Tensor:
        """Tied embedding rows of every SID token, level-major -> [sum K, H]."""
        books = self._codebooks()  # type: ignore[misc]
        return self.code_proj(books.reshape(-1, books.shape[-1]))  # type: ignore[misc]

    def token_weight(self) -> Tensor:
        """The (input = output) embedding matrix [V, H]; SID rows from the codebooks if tied."""
        weight = self.lm.get_input_embeddings().weight
        if not self.tied:
            return weight
        weight = weight.clone()
        weight[self.sid_ids.to(weight.device)] = self.code_rows()
        return weight

    def level_logits(self, hidden: Tensor, level: int) -> Tensor:
        """Logits of level ``level``'s codes for states ``hidden`` [..., H] -> [..., K]."""
        ids = self.vocab.level_token_ids[level].to(hidden.device)
        return hidden @ self.token_weight()[ids].T

    @torch.no_grad()
    def materialize(self) -> None:
        """Write the tied rows into the plain embedding matrix (before decoding or saving)."""
        if self.tied:
            weight = self.lm.get_input_embeddings().weight
            weight[self.sid_ids.to(weight.device)] = self.code_rows().to(weight.dtype)

    def loss_and_states(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Next-token cross-entropy over labelled positions and the final hidden states
        [B, T, H] (state t predicts token t + 1)."""
        weight = self.token_weight()
        out = self.lm.model(
            inputs_embeds=F.embedding(batch["input_ids"], weight),
            attention_mask=batch["attention_mask"],
            position_ids=batch.get("position_ids"),
            use_cache=False,
        )
        hidden = out.last_hidden_state
        logits = (hidden[:, :-1] @ weight.T).float()
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE
        )
        return loss, hidden


def target_state_index(lengths: np.ndarray, num_levels: int, prefix_len: int) -> np.ndarray:
    """Position of the state predicting the first code of each row's last item: a row of
    ``lengths`` items (history + target) has the target's first token at ``prefix_len +
    (n - 1) * M``, predicted by the state one position earlier -> int64 [B]."""
    return prefix_len + (np.asarray(lengths) - 1) * num_levels - 1
