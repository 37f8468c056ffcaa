"""SASRec: self-attentive sequential recommendation (Kang & McAuley, ICDM 2018).

Item embeddings + learned absolute positions, causal self-attention blocks (pre-LN, post-LN or the
paper's own block, ``block``; Xiong et al., 2020 on why pre-LN trains more easily), dropout, and a
next-item loss on every target of the training rows. Input and output item representations are
tied, as in the paper. ``recommend`` ranks the whole catalogue with the configured similarity.

Where the training query sits: evaluation encodes a user's whole history, so its query is always
the row's last item. With the paper's ``sequence`` rows and ``recency`` positions, a training
query at an earlier position has a different slot from any evaluation query (its slot says how
far it is from the end of the user's training sequence); ``order`` positions (count from the
row's first item, as RecBole does) or ``prefix`` rows (one row per target, as cornac does) make
training queries look like evaluation queries.

Optional SID features (``sid_features``): each item's representation adds (``sum``) or
concatenates and projects (``concat``) one learned embedding per SID level of its code, so items
sharing a code prefix share parameters (the semantic-ID idea of TIGER, Rajput et al., 2023).

Two options of PreferredAI/cornac's SASRec (``cornac/models/sasrec/sasrec.py``), off by default:
``item_bias`` adds a learned scalar per item to every score (``use_biases``), and ``emb_scale``
multiplies the input item embeddings by sqrt(D) before positions are added (``_encode``; the
Transformer's embedding scale, Vaswani et al., 2017). The output item table is never scaled.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# training_batches lives with the batching code; re-exported here for its many callers
from sidrec_core.data.batching import ROW_LAYOUTS
from sidrec_core.data.batching import training_batches as training_batches
from sidrec_core.data.negatives import NEGATIVES
from sidrec_core.data.split import LeaveOneOut
from sidrec_core.io import reading
from sidrec_core.models.base import Recommender, topk_items
from sidrec_core.models.losses import (
    LOSSES,
    bce_loss,
    bce_shared_loss,
    ce_loss,
    infonce_loss,
    sampled_softmax_loss,
    sampled_softmax_scores_loss,
)
from sidrec_core.models.sasrec_blocks import (
    BLOCKS,
    NO_FINAL_NORM_BLOCKS,
    RAW_INPUT_BLOCKS,
    Block,
)
from sidrec_core.models.similarity import SIMILARITIES, Similarity
from sidrec_core.sid.table import SIDTable
from sidrec_core.train import TrainConfig

log = logging.getLogger(__name__)
SID_FEATURES = ("none", "sum", "concat")
POSITIONS = ("recency", "order")
INITS = ("normal", "xavier")
# sampled_softmax negatives: one set for the batch (``shared``) or one per target (``per_position``)
SS_SHARING = ("shared", "per_position")
# which sampled negatives sampled_softmax leaves out: the row user's positives, the target item
# only, or none
SS_EXCLUDE = ("user", "target", "none")
DEFAULT_NUM_NEGATIVES = {"bce": 1, "sampled_softmax": 256}
BIAS_LOSSES = ("ce", "bce_shared")  # the losses that score through ``item_bias``


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"sasrec.{name}: unknown {value!r}; valid choices: {', '.join(choices)}")


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """``sasrec`` section."""

    hidden_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    ffn_dim: int = 256
    dropout: float = 0.5  # Beauty is sparse; the SASRec paper uses 0.5 on it
    block: str = "pre_ln"  # one of BLOCKS (see sidrec_core.models.sasrec_blocks)
    max_history: int = 50  # the SASRec literature's cap (training inputs and evaluation histories)
    # which learned position a history item gets (one of POSITIONS): ``recency`` = its slot
    # counted back from the row's last item (the paper's left-padded layout; cornac), ``order`` =
    # its index from the row's first item (RecBole, GPT-style LMs)
    positions: str = "recency"
    # training rows (one of ROW_LAYOUTS, see sidrec_core.data.batching): ``sequence`` = one per
    # user, a target at every position; ``prefix`` = one per target (cornac); train.batch_size
    # counts rows either way
    train_rows: str = "sequence"
    loss: str = "ce"  # one of LOSSES
    similarity: str = "dot"  # one of SIMILARITIES
    negatives: str = "uniform"  # one of NEGATIVES (bce and sampled_softmax only)
    num_negatives: int = (
        0  # 0 = the loss's default: 1 per position (bce), 256 shared (sampled_softmax)
    )
    # sampled_softmax only: one negative set per batch or per target (one of SS_SHARING), and
    # what is masked out of it (one of SS_EXCLUDE). RecTools' SASRec (used by the eSASRec
    # benchmark) draws per position, uniformly with replacement, and masks nothing
    # (MobileTeleSystems/RecTools v0.13.0: rectools/models/nn/transformers/negative_sampler.py,
    # CatalogUniformSampler)
    ss_sharing: str = "shared"
    ss_exclude: str = "user"
    popularity_alpha: float = 1.0  # popular negatives ~ train frequency ** alpha
    popular_ratio: float = 0.3  # share of popular draws in ``mixed``
    temperature: float = 0.1  # infonce logits are divided by it
    ce_chunk: int = 0  # positions per logits chunk for ``ce`` (0 = all at once)
    # bce_shared: K negatives shared by the batch, drawn ~ train frequency ** alpha (alpha 0 =
    # uniform over trained items); cornac's defaults n_sample=2048, sample_alpha=0.5
    # (PreferredAI/cornac: cornac/models/seq_utils/iterators.py, session_seq_iter)
    bce_shared_negatives: int = 2048
    bce_shared_alpha: float = 0.5
    # False = cornac's mean over all P x (P + K) entries; True = each row's positive weighs as
    # much as its negatives together (see losses.bce_shared_loss)
    bce_shared_balanced: bool = False
    # per-item score bias and sqrt(D) input-embedding scale of cornac's SASRec
    # (PreferredAI/cornac: cornac/models/sasrec/sasrec.py, use_biases and _encode)
    item_bias: bool = False
    emb_scale: bool = False
    # dropout on the whole item table (input and output side) while training, as RecTools'
    # IdEmbeddingsItemNet (rectools/models/nn/item_net.py) on top of the sequence dropout
    item_dropout: float = 0.0
    # ``normal``: N(0, 0.02) (RecBole/BERT); ``xavier``: Xavier-normal on every matrix, as
    # RecTools' TransformerLightningModule._xavier_normal_init (rectools/.../lightning.py)
    init: str = "normal"
    sid_features: str = "none"  # one of SID_FEATURES; reads the SID table at sid_dir
    sid_dir: str = "data/sids"
    bucket_window: int = 50  # batches per length-sorted window (0 = plain shuffle); see batching
    checkpoint: str = "models/sasrec/model.pt"
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _choice("loss", self.loss, LOSSES)
        _choice("similarity", self.similarity, SIMILARITIES)
        _choice("negatives", self.negatives, NEGATIVES)
        _choice("sid_features", self.sid_features, SID_FEATURES)
        _choice("positions", self.positions, POSITIONS)
        _choice("block", self.block, BLOCKS)
        _choice("train_rows", self.train_rows, ROW_LAYOUTS)
        _choice("ss_sharing", self.ss_sharing, SS_SHARING)
        _choice("ss_exclude", self.ss_exclude, SS_EXCLUDE)
        _choice("init", self.init, INITS)
        for name in ("hidden_dim", "num_blocks", "num_heads", "ffn_dim", "max_history"):
            if getattr(self, name) < 1:
                raise ValueError(f"sasrec.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"sasrec.hidden_dim ({self.hidden_dim}) must be divisible by "
                f"sasrec.num_heads ({self.num_heads})"
            )
        for name in ("dropout", "item_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"sasrec.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.bucket_window < 0:
            raise ValueError(f"sasrec.bucket_window must be >= 0, got {self.bucket_window}")
        if self.num_negatives < 0:
            raise ValueError(f"sasrec.num_negatives must be >= 0, got {self.num_negatives}")
        if self.temperature <= 0:
            raise ValueError(f"sasrec.temperature must be > 0, got {self.temperature}")
        if self.bce_shared_negatives < 0 or self.bce_shared_alpha < 0:
            raise ValueError(
                "sasrec.bce_shared_negatives and sasrec.bce_shared_alpha must be >= 0, got "
                f"{self.bce_shared_negatives} and {self.bce_shared_alpha}"
            )
        if self.loss == "bce_shared" and self.num_negatives:
            raise ValueError(
                "sasrec.num_negatives does not apply to loss bce_shared: "
                "set sasrec.bce_shared_negatives"
            )
        if self.item_bias and self.loss not in BIAS_LOSSES:
            raise ValueError(
                f"sasrec.item_bias needs a loss in {', '.join(BIAS_LOSSES)}, got {self.loss!r}"
            )

    @property
    def negatives_label(self) -> str:
        """How the loss draws negatives, for tags and labels: ``none`` for losses that sample
        none (ce, infonce's in-batch positives), ``pop^alpha xK shared`` for bce_shared, the
        sharing and exclusion of sampled_softmax when they are not the defaults."""
        if self.loss == "bce_shared":
            return f"pop^{self.bce_shared_alpha:g} x{self.bce_shared_negatives} shared"
        if self.loss not in DEFAULT_NUM_NEGATIVES:
            return "none"
        if self.loss == "sampled_softmax" and (self.ss_sharing, self.ss_exclude) != (
            "shared",
            "user",
        ):
            return f"{self.negatives} {self.ss_sharing} exclude={self.ss_exclude}"
        return self.negatives

    @property
    def negatives_per_step(self) -> int:
        """Negatives drawn for the loss (0 for losses that sample none)."""
        if self.loss == "bce_shared":
            return self.bce_shared_negatives
        if self.loss not in DEFAULT_NUM_NEGATIVES:
            return 0
        return self.num_negatives or DEFAULT_NUM_NEGATIVES[self.loss]


def load_sid_features(cfg: SASRecConfig, sid_dir: str | Path, num_items: int) -> SIDTable | None:
    """The SID table for ``sid_features`` (None for ``none``). A missing table raises rather than
    training without SID features, which would make a ``sum`` level silently equal ``none``; a
    table built for another item set raises too."""
    if cfg.sid_features == "none":
        return None
    if not (Path(sid_dir) / "codes.npy").exists():
        raise ValueError(
            f"sasrec.sid_features={cfg.sid_features} needs a SID table, but sasrec.sid_dir "
            f"({sid_dir}) has no codes.npy: run build_sids first or set sasrec.sid_features=none"
        )
    return SIDTable.load(sid_dir, num_items=num_items)


class SASRec(Recommender):
    """SASRec over item ids 1..N (0 = padding). Batches: ``history`` [B, L] left-padded (L <=
    ``max_history``), for ``loss`` also ``targets`` [B, L], ``user`` [B] and the negatives of the
    loss (see :class:`sidrec_core.data.batching.TrainBatches`)."""

    def __init__(self, cfg: SASRecConfig, num_items: int, sid_table: SIDTable | None = None):
        super().__init__()
        self.cfg, self.num_items = cfg, num_items
        dim = cfg.hidden_dim
        self.item_emb = nn.Embedding(num_items + 1, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_history, dim)
        # Kang & McAuley's and LiGR's stacks read the raw embeddings; the others normalise them
        self.emb_norm = nn.Identity() if cfg.block in RAW_INPUT_BLOCKS else nn.LayerNorm(dim)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.ffn_dim, cfg.dropout, cfg.block)
            for _ in range(cfg.num_blocks)
        )
        self.final_norm = nn.Identity() if cfg.block in NO_FINAL_NORM_BLOCKS else nn.LayerNorm(dim)
        self.item_drop = nn.Dropout(cfg.item_dropout)
        self.similarity = Similarity(cfg.similarity, dim)
        # a Parameter rather than an Embedding so the init below leaves it at 0: no item starts
        # ahead of another
        self.item_bias = nn.Parameter(torch.zeros(num_items + 1)) if cfg.item_bias else None
        self.sid_mode = "none" if sid_table is None else cfg.sid_features
        self.sid_fingerprint = None if sid_table is None else sid_table.fingerprint()
        if sid_table is not None:
            self._init_sid(sid_table)
        self.apply(self._init_weights)
        if cfg.init == "xavier":
            self._init_xavier()

    def _init_sid(self, table: SIDTable) -> None:
        if table.num_items != self.num_items:
            raise ValueError(
                f"SID table covers {table.num_items} items but the model has "
                f"{self.num_items}: rebuild the SID table for this dataset"
            )
        offsets = torch.tensor([0, *table.codebook_sizes[:-1]]).cumsum(0)
        codes = torch.as_tensor(table.codes)
        # one row per (level, code), shifted by 1 so the padding item's -1 codes map to row 0
        index = torch.where(codes >= 0, codes + offsets + 1, torch.zeros_like(codes))
        self.register_buffer("sid_index", index, persistent=False)
        self.sid_emb = nn.Embedding(
            sum(table.codebook_sizes) + 1, self.cfg.hidden_dim, padding_idx=0
        )
        if self.sid_mode == "concat":
            self.sid_proj = nn.Linear(
                (table.num_levels + 1) * self.cfg.hidden_dim, self.cfg.hidden_dim
            )

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # small normal init (as in RecBole/BERT): dot-product logits start near 0
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def _init_xavier(self) -> None:
        # every weight matrix, embedding tables included; biases and LayerNorms keep theirs.
        # The padding row goes back to 0 (RecTools leaves it random but masks padding anyway)
        with torch.no_grad():
            for param in self.parameters():
                if param.dim() > 1:
                    nn.init.xavier_normal_(param)
            for module in self.modules():
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()

    def item_table(self) -> Tensor:
        """Every item's representation [N + 1, D] (row 0 = padding), tied for input and output;
        ``item_dropout`` applies to it while training."""
        table = self.item_emb.weight
        if self.sid_mode == "sum":
            table = table + self.sid_emb(self.sid_index).sum(dim=1)
        elif self.sid_mode == "concat":
            codes = self.sid_emb(self.sid_index).flatten(1)  # [N + 1, M * D]
            table = self.sid_proj(torch.cat([table, codes], dim=1))
        return self.item_drop(table)

    def encode(self, history: Tensor, table: Tensor | None = None) -> Tensor:
        """history [B, L] -> states [B, L, D]; state t summarises items up to t."""
        table = self.item_table() if table is None else table
        b, length = history.shape
        if length > self.cfg.max_history:
            raise ValueError(
                f"history length {length} exceeds sasrec.max_history {self.cfg.max_history}"
            )
        valid = history > 0
        if self.cfg.positions == "recency":
            # the row's last item always takes the last slot, however wide the batch is
            positions = torch.arange(
                self.cfg.max_history - length, self.cfg.max_history, device=history.device
            )
        else:
            # the row's first item takes slot 0 (padding's slot is masked out below)
            positions = (valid.cumsum(dim=1) - 1).clamp(min=0)
        x = F.embedding(history, table)
        if self.cfg.emb_scale:
            x = x * self.cfg.hidden_dim**0.5
        x = x + self.pos_emb(positions)
        x = self.emb_drop(self.emb_norm(x)) * valid[..., None]
        causal = torch.ones(length, length, dtype=torch.bool, device=history.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=history.device)
        # padding keys are hidden; the diagonal stays open so padding queries have a key (no NaN)
        mask = ((causal & valid[:, None, :]) | eye)[:, None]
        for block in self.blocks:
            x = block(x, mask) * valid[..., None]
        return self.final_norm(x)

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Next-item loss over the non-padded positions of ``targets`` [B, L]."""
        table = self.item_table()
        states = self.encode(batch["history"], table)
        targets = batch["targets"]
        valid = targets > 0
        h, t = states[valid], targets[valid]  # [P, D], [P]
        name = self.cfg.loss
        if name == "ce":
            return ce_loss(self.similarity, h, table, t, self.cfg.ce_chunk, self.item_bias)
        if name == "bce_shared":
            # K = 0 (bce_shared_negatives: 0) leaves the other targets of the batch only
            shared = batch.get("negatives", t.new_zeros(0))
            candidates = torch.cat([t, shared])  # [P + K]
            scores = self.score(h, table, candidates)
            return bce_shared_loss(scores, candidates, self.cfg.bce_shared_balanced)
        if name == "infonce":
            users = batch["user"][:, None].expand_as(targets)[valid]
            return infonce_loss(self.similarity, h, table[t], t, users, self.cfg.temperature)
        if name == "bce":
            return bce_loss(self.similarity, h, table[t], table[batch["negatives"][valid]])
        return self._sampled_softmax(batch, h, t, table, valid)

    def _sampled_softmax(
        self, batch: dict[str, Tensor], h: Tensor, t: Tensor, table: Tensor, valid: Tensor
    ) -> Tensor:
        """sampled_softmax over the P valid positions, by ``ss_sharing`` and ``ss_exclude``."""
        negatives = batch["negatives"]  # [K] shared or [B, L, K] per position
        if self.cfg.ss_sharing == "per_position":
            negatives = negatives[valid]  # [P, K]
        keep = None
        if self.cfg.ss_exclude == "user" and self.cfg.ss_sharing == "shared":
            keep = batch["negative_valid"][:, None, :].expand(-1, valid.shape[1], -1)[valid]
        elif self.cfg.ss_exclude == "target":
            keep = negatives != t[:, None]  # [P, K] (broadcast over the shared set)
        # per_position + user: the sampler already re-drew the user's positives
        if negatives.dim() == 2 and negatives.numel() >= len(table):
            # P x K gathered rows outnumber the catalogue: scoring every item with one matmul and
            # picking the columns is cheaper than gathering [P, K, D] (2x on Beauty, K = 256)
            scores = self.similarity(h, table)  # [P, N + 1]
            pos_score = scores.gather(1, t[:, None])[:, 0]
            return sampled_softmax_scores_loss(pos_score, scores.gather(1, negatives), keep)
        return sampled_softmax_loss(self.similarity, h, table[t], table[negatives], keep)

    def score(self, h: Tensor, table: Tensor, items: Tensor | None = None) -> Tensor:
        """States h [P, D] against ``items`` [C] (default: every id 0..N) -> scores [P, C]:
        the similarity, plus the item's bias when ``item_bias`` is on."""
        emb = table if items is None else table[items]
        scores = self.similarity(h, emb)
        if self.item_bias is not None:
            scores = scores + (self.item_bias if items is None else self.item_bias[items])
        return scores

    def score_all(self, history: Tensor) -> Tensor:
        """history [B, L] -> scores over every item id [B, N + 1] (column 0 = padding)."""
        table = self.item_table()
        # leading columns that are padding in every row change nothing: skip their compute
        width = max(int((history > 0).sum(dim=1).max()), 1)
        return self.score(self.encode(history[:, -width:], table)[:, -1], table)

    @torch.no_grad()
    def recommend(self, batch: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
        """Full ranking over all N items -> (item_ids [B, k], scores [B, k])."""
        return topk_items(self.score_all(batch["history"]), k)

    def epoch_metrics(self) -> dict[str, float]:
        """Per-epoch figures for the run's curves: the adaptive similarity's weights."""
        return self.similarity.weights()


def load_sasrec(cfg: SASRecConfig, loo: LeaveOneOut, path: str | Path, key: str) -> SASRec:
    """The SASRec saved at ``path`` (a state dict written by ``train_sasrec``), built from
    ``cfg``; a missing, truncated or mismatched file fails in one line naming ``key`` and it."""
    model = build_sasrec(cfg, loo)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{key}: {path} not found; run train_sasrec first")
    with reading(path, "re-run train_sasrec (dvc repro train_sasrec)"):
        state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{key}: {path} does not match the sasrec params (sizes, item count or options "
            f"differ from the run that saved it): {str(exc).splitlines()[-1].strip()[:200]}"
        ) from exc
    return model


def build_sasrec(cfg: SASRecConfig, loo: LeaveOneOut) -> SASRec:
    """An untrained SASRec for ``loo``'s catalogue, with SID features when configured."""
    return SASRec(cfg, loo.num_items, load_sid_features(cfg, cfg.sid_dir, loo.num_items))
