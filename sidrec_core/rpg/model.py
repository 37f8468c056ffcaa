"""RPG: a causal transformer over items that predicts every digit of the next item's long,
unordered SID at once (Hou et al., "Generating Long Semantic IDs in Parallel for
Recommendation", KDD 2025; facebookresearch/RPG_KDD2025: genrec/models/RPG/model.py).

- Input: one position per item; an item's vector is the mean of its M code embeddings, plus a
  learned position (GPT-2's, counted from the row's first item), then embedding dropout.
- Backbone: GPT-2 blocks (pre-LayerNorm, GELU feed-forward; attention dropout and residual
  dropout separate, as ``attn_pdrop`` and ``resid_pdrop``), a final LayerNorm.
- Heads: one residual block per digit, h_m = h + SiLU(W_m h + b_m), W_m zero at init (the
  identity). The logit of code c at digit m is cos(h_m, e_m[c]) / temperature, with the input
  code embeddings e_m tied to the output.
- Loss: the mean over digits of the cross-entropy of the target item's code; with ``rpg.mhl``
  on, plus the masked-history reconstruction loss (:mod:`sidrec_core.rpg.mhl`).
- Ranking: :mod:`sidrec_core.rpg.decoding` (exact full-catalogue scoring, or the graph beam).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sidrec_core.data.batching import ROW_LAYOUTS
from sidrec_core.io import ArtifactError, reading
from sidrec_core.models.base import Recommender, topk_items
from sidrec_core.rpg.decoding import GraphDecodingConfig, exact_scores, graph_beam, item_graph
from sidrec_core.rpg.mhl import Curriculum, MHLConfig, masked_history_loss
from sidrec_core.rpg.tokenizer import OPQConfig
from sidrec_core.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class RPGConfig:
    """``rpg`` section. Paper values (genrec/models/RPG/config.yaml, the README's Beauty
    command): hidden 448, 2 layers, 4 heads, ffn 1024, embedding and attention dropout 0.5,
    residual dropout 0, temperature 0.03, lr 0.01, batch 256, 10,000 warmup steps, cosine, up to
    150 epochs, patience 20."""

    hidden_dim: int = 448
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int = 1024
    embedding_dropout: float = 0.5
    attention_dropout: float = 0.5
    residual_dropout: float = 0.0
    temperature: float = 0.03
    max_history: int = 50  # RPG's max_item_seq_len
    # training rows (sidrec_core.data.batching): ``sequence`` = one per user, a target at every
    # position (RPG's); ``prefix`` = one per target
    train_rows: Literal["sequence", "prefix"] = "sequence"
    bucket_window: int = 50  # batches per length-sorted window (see data.batching)
    # "batch": each batch's loss is the mean over its targets, so with length-bucketed batches a
    # target in a batch of short histories weighs more than one in a batch of long ones;
    # "tokens": the sum over its targets / a fixed count (batch size x mean targets a row), so
    # every target weighs the same, as in the authors' shuffled batches
    loss_normalization: Literal["batch", "tokens"] = "batch"
    checkpoint: str = "models/rpg/model.pt"
    mhl: MHLConfig = dataclasses.field(default_factory=MHLConfig)
    sid: OPQConfig = dataclasses.field(default_factory=OPQConfig)
    # read by eval_rpg alone (train_rpg's params in dvc.yaml list every other key)
    decoding: GraphDecodingConfig = dataclasses.field(default_factory=GraphDecodingConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_layers", "num_heads", "ffn_dim", "max_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"rpg.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"rpg.hidden_dim ({self.hidden_dim}) must be divisible by rpg.num_heads "
                f"({self.num_heads})"
            )
        for name in ("embedding_dropout", "attention_dropout", "residual_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"rpg.{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"rpg.temperature must be > 0, got {self.temperature}")
        if self.train_rows not in ROW_LAYOUTS:
            raise ValueError(f"rpg.train_rows: unknown {self.train_rows!r}; valid: {ROW_LAYOUTS}")
        if self.bucket_window < 0:
            raise ValueError(f"rpg.bucket_window must be >= 0, got {self.bucket_window}")
        patience, evals = self.train.patience, self.mhl.plateau_evals
        if self.mhl.on and self.mhl.schedule == "plateau" and 0 < patience <= 10 * evals:
            raise ValueError(
                f"rpg.train.patience={patience} stops training before rpg.mhl.schedule=plateau "
                f"can lower the ratio to 0 (10 steps of {evals} validations): set it to 0 or "
                f"above {10 * evals}"
            )


class Block(nn.Module):
    """A GPT-2 block: x + drop(attn(LN(x))), then x + drop(mlp(LN(x))); attention
    probabilities dropped with ``attention_dropout``."""

    def __init__(self, cfg: RPGConfig):
        super().__init__()
        dim = cfg.hidden_dim
        self.heads, self.attn_p = cfg.num_heads, cfg.attention_dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim)
        )
        self.drop = nn.Dropout(cfg.residual_dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x [B, L, D], mask [B, 1, L, L] (True = may attend) -> [B, L, D]."""
        b, length, dim = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, -1).unbind(2)
        att = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=mask,
            dropout_p=self.attn_p if self.training else 0.0,
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, length, dim)))
        return x + self.drop(self.mlp(self.ln2(x)))


class RPG(Recommender):
    """RPG over items 1..N with SID table ``codes`` [N + 1, M] (row 0 = padding). Batches as
    SASRec's (:class:`sidrec_core.data.batching.TrainBatches`): ``history`` [B, L] left-padded,
    for ``loss`` also ``targets`` [B, L] (0 = no target)."""

    def __init__(self, cfg: RPGConfig, codes: Tensor, codebook_size: int):
        super().__init__()
        self.cfg, self.codebook_size = cfg, codebook_size
        codes = torch.as_tensor(codes, dtype=torch.long).clamp(min=0)  # padding row -> code 0
        self.register_buffer("codes", codes, persistent=False)
        self.num_items, self.num_levels = codes.shape[0] - 1, codes.shape[1]
        dim, m = cfg.hidden_dim, self.num_levels
        self.code_emb = nn.Parameter(torch.randn(m, codebook_size, dim) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_history, dim) * 0.02)  # GPT-2's init
        self.emb_drop = nn.Dropout(cfg.embedding_dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(dim)
        self.head_weight = nn.Parameter(torch.zeros(m, dim, dim))  # identity blocks at init
        self.head_bias = nn.Parameter(torch.zeros(m, dim))
        for block in self.blocks:
            for lin in (block.qkv, block.proj, block.mlp[0], block.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            # GPT-2's scaled init of the projections into the residual stream
            for lin in (block.proj, block.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * cfg.num_layers))
        if cfg.mhl.on:  # after every other init, so those draw the same numbers as without
            self.mask_emb = nn.Parameter(torch.randn(m, dim) * 0.02)  # [MASK] of each digit
            self.recon_weight = nn.Parameter(torch.zeros(m, dim, dim))
            self.recon_bias = nn.Parameter(torch.zeros(m, dim))
        # rpg.mhl: the masking ratio by epoch, set (and advanced as a callback) by train_rpg
        self.curriculum: Curriculum | None = None
        # loss_normalization "tokens": the fixed divisor, set by train_rpg from the rows
        self.loss_tokens: float | None = None
        # ((code_emb version, num_edges), adjacency)
        self._graph: tuple[tuple[int, int], Tensor] | None = None
        self.decoding = GraphDecodingConfig()  # exact, as training validates; eval_rpg sets cfg's

    @classmethod
    def load(cls, cfg: RPGConfig, codes: Tensor) -> RPG:
        """The model ``train_rpg`` saved to ``cfg.checkpoint`` for the SID table ``codes``, on
        the CPU, in eval mode; a checkpoint of other settings fails naming the file."""
        model = cls(cfg, codes, cfg.sid.codebook_size)
        remedy = "re-run train_rpg (dvc repro train_rpg)"
        with reading(cfg.checkpoint, remedy):
            state = torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:  # torch lists every mismatch, one a line, after a heading
            first = ([*str(exc).splitlines()[1:], ""])[0].strip().rstrip(".")
            raise ArtifactError(
                f"{cfg.checkpoint}: not a model of the rpg section's settings ({first}); {remedy}"
            ) from exc
        return model.eval()

    @property
    def decoding(self) -> GraphDecodingConfig:
        """How ``recommend`` ranks (settable, as the SID LM's ``decoding``); setting it restarts
        the graph beam's seeded random starts."""
        return self._decoding

    @decoding.setter
    def decoding(self, cfg: GraphDecodingConfig) -> None:
        self._decoding = cfg
        self._generator = torch.Generator().manual_seed(cfg.seed)

    def item_inputs(self, items: Tensor, masked: Tensor | None = None) -> Tensor:
        """items [...] -> mean of their M code embeddings [..., D]; a digit ``masked`` [..., M]
        marks takes its [MASK] vector instead (``rpg.mhl``)."""
        codes = self.codes[items]  # [..., M]
        levels = torch.arange(self.num_levels, device=items.device)
        emb = self.code_emb[levels, codes]
        if masked is not None:
            emb = torch.where(masked[..., None], self.mask_emb, emb)
        return emb.mean(-2)

    def encode(self, history: Tensor, masked: Tensor | None = None) -> Tensor:
        """history [B, L] (digits ``masked`` [B, L, M] replaced by [MASK]) -> states [B, L, D];
        state t summarises items up to t."""
        b, length = history.shape
        if length > self.cfg.max_history:
            raise ValueError(
                f"history length {length} exceeds rpg.max_history {self.cfg.max_history}"
            )
        valid = history > 0
        positions = (valid.cumsum(1) - 1).clamp(min=0)  # from the row's first item, as GPT-2
        x = self.item_inputs(history, masked) + self.pos_emb[positions]
        x = self.emb_drop(x) * valid[..., None]
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=history.device)
        mask = ((causal & valid[:, None, :]) | eye)[:, None]  # padding queries see themselves
        for block in self.blocks:
            x = block(x, mask)
        return self.final_norm(x)

    def digit_logits(self, states: Tensor) -> Tensor:
        """states [P, D] -> logits [P, M, K]: cos(h_m, e_m[c]) / temperature."""
        h = states[:, None, :] + F.silu(
            torch.einsum("pd,mde->pme", states, self.head_weight) + self.head_bias
        )
        # 1 / temperature scales the [P, M, D] states, not the larger [P, M, K] logits
        h = F.normalize(h, dim=-1) / self.cfg.temperature
        emb = F.normalize(self.code_emb, dim=-1)
        return torch.einsum("pmd,mkd->pmk", h, emb)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Mean over digits of the code cross-entropy, over the batch's target positions
        (``loss_normalization`` "batch") or summed over them / ``self.loss_tokens`` ("tokens");
        while ``curriculum`` masks history, the masked-history loss (:mod:`sidrec_core.rpg.mhl`)."""
        if self.curriculum is not None and self.curriculum.policy != "none":
            return masked_history_loss(self, batch, self.curriculum)
        return self.next_item_loss(self.encode(batch["history"]), batch["targets"])

    def next_item_loss(self, states: Tensor, targets: Tensor) -> Tensor:
        """``loss`` from the encoded rows: states [B, L, D], targets [B, L] (0 = none)."""
        tokens = self.cfg.loss_normalization == "tokens"
        if tokens and not self.loss_tokens:
            raise RuntimeError(
                "rpg.loss_normalization=tokens: set RPG.loss_tokens (the fixed target count a "
                "batch's loss is divided by) before training; train_rpg sets it"
            )
        valid = targets > 0
        logits = self.digit_logits(states[valid])  # [P, M, K]
        labels = self.codes[targets[valid]]  # [P, M]
        flat = (logits.reshape(-1, self.codebook_size), labels.reshape(-1))
        if tokens:
            return F.cross_entropy(*flat, reduction="sum") / (self.num_levels * self.loss_tokens)
        return F.cross_entropy(*flat)

    def log_probs(self, history: Tensor) -> Tensor:
        """history [B, L] -> per-digit log-softmax of the next item [B, M, K]."""
        width = max(int((history > 0).sum(dim=1).max()), 1)
        states = self.encode(history[:, -width:])[:, -1]
        return F.log_softmax(self.digit_logits(states), dim=-1)

    def score_all(self, history: Tensor) -> Tensor:
        """history [B, L] -> summed code log-probs of every item [B, N + 1] (column 0 = -inf)."""
        return exact_scores(self.log_probs(history), self.codes)

    def graph(self) -> Tensor:
        """The item graph of the current code embeddings, rebuilt whenever they or
        ``num_edges`` changed (an optimizer step or a loaded state bumps the parameter's version
        counter)."""
        key = (self.code_emb._version, self.decoding.num_edges)
        if self._graph is None or self._graph[0] != key:
            dec = self.decoding
            adjacency = item_graph(
                self.code_emb.detach(), self.codes, dec.num_edges, dec.chunk_size
            )
            self._graph = (key, adjacency)
        return self._graph[1]

    @torch.no_grad()
    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        """-> (item_ids [B, k], scores [B, k]) by ``decoding.strategy``."""
        if self.decoding.strategy == "exact":
            return topk_items(self.score_all(batch["history"]), k)
        log_probs = self.log_probs(batch["history"])
        return graph_beam(log_probs, self.codes, self.graph(), k, self.decoding, self._generator)
