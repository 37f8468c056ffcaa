"""The ETEGRec schedule: two optimisers, per-phase freezing, SIA/PSA after a warm-up, re-encoding
and collision re-resolution after every tokenizer epoch, a final tokenizer-frozen fine-tune.

Phases of one batch (``x_t`` = the target items' embeddings, ``s`` = the state predicting the
target's first code): ``tokenizer`` minimises ``L_SQ(x_t) + mu SIA + lambda PSA`` with the
recommender frozen; ``recommender`` minimises ``L_rec + mu SIA + lambda PSA`` with the tokenizer
frozen; ``joint`` minimises the sum with both stepping (the no-alternation ablation);
``finetune`` is ``L_rec`` alone. SIA compares P(. | encoder(x_t)) with P(. | MLP(s)); PSA pairs
MLP'(s) with the tokenizer's reconstruction of x_t in the batch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sidrec_core.data.sid_examples import collate
from sidrec_core.etegrec.align import (
    AlignHeads,
    check_gradient_quantizer,
    code_log_probs,
    psa_loss,
    sia_loss,
)
from sidrec_core.etegrec.config import ETEGRecConfig
from sidrec_core.etegrec.model import ETEGRecLM, target_state_index
from sidrec_core.sid.collisions import resolve
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.quality import sid_quality
from sidrec_core.sid.rqvae import RQVAE
from sidrec_core.sid.table import SIDTable

log = logging.getLogger(__name__)
PHASES = ("tokenizer", "recommender", "joint", "finetune")


def check_sid_config(sid: SIDConfig) -> None:
    """The tokenizer must be a gradient-trained RQ-VAE whose table keeps its shape."""
    if sid.method not in ("rqvae", "rqkmeans_plus"):
        raise ValueError(
            f"etegrec trains an RQ-VAE tokenizer; set sid.method=rqvae (got {sid.method})"
        )
    if sid.collision == "suffix":
        raise ValueError(
            "etegrec re-resolves collisions after every tokenizer epoch and needs a table of "
            "fixed shape; set sid.collision=knn or random (got suffix)"
        )
    check_gradient_quantizer(sid.rqvae.quantizer)


def encode_table(
    tok: RQVAE, x: np.ndarray, sid: SIDConfig, seed: int
) -> tuple[SIDTable, np.ndarray]:
    """Encode every item and resolve collisions as ``build_sids`` does -> (table [N + 1, M],
    raw codes [N, M])."""
    raw = tok.encode(x)
    dist = tok.last_level_distances(x, raw) if sid.collision == "knn" else None
    final = resolve(
        raw, sid.collision, sid.codebook_size, sid.max_per_bucket, distances=dist, seed=seed
    )
    codes = np.concatenate([np.full((1, final.shape[1]), -1, dtype=np.int64), final])
    return SIDTable(codes, (sid.codebook_size,) * sid.num_levels), raw


def set_trainable(module: nn.Module, on: bool) -> None:
    module.train(on)
    for p in module.parameters():
        p.requires_grad_(on)


@dataclasses.dataclass
class ETEGRecTrainer:
    """Trains ``tok`` and ``model`` (+ ``heads``) on ``rows`` (pretrain rows: history, target)
    of items whose embeddings are ``x`` [N, D] (row i - 1 = item i)."""

    tok: RQVAE
    model: ETEGRecLM
    heads: AlignHeads
    x: np.ndarray
    rows: list[dict[str, Any]]
    cfg: ETEGRecConfig
    sid: SIDConfig
    seed: int = 0
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    log_metrics: Callable[[dict[str, float], int], None] = lambda metrics, step: None

    def __post_init__(self) -> None:
        check_sid_config(self.sid)
        self.xt = torch.as_tensor(np.asarray(self.x, np.float32), device=self.device)
        self.rec_modules = nn.ModuleList([self.model, self.heads])
        self.rec_opt = torch.optim.AdamW(
            self.rec_modules.parameters(), lr=self.cfg.rec_lr, weight_decay=self.cfg.weight_decay
        )
        self.tok_opt = torch.optim.AdamW(
            self.tok.parameters(), lr=self.cfg.tok_lr, weight_decay=self.cfg.weight_decay
        )
        total = max(1, self.cfg.rec_epochs * self.steps_per_epoch())
        # cosine decay of the recommender over its whole budget; the tokenizer's lr is constant
        self.rec_sched = torch.optim.lr_scheduler.LambdaLR(
            self.rec_opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        self.epoch = 0
        self.steps = {"rec": 0, "tok": 0}
        self.changed: list[float] = []

    # -- data ---------------------------------------------------------------------------------
    def steps_per_epoch(self) -> int:
        n = math.ceil(len(self.rows) / self.cfg.batch_size)
        return min(n, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else n

    def batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        """Right-padded item-stream batches under the current table, with ``targets`` [B] and
        ``state_index`` [B] (the position predicting each target's first code)."""
        order = np.random.default_rng(self.seed * 1_000_003 + epoch).permutation(len(self.rows))
        bs, m = self.cfg.batch_size, self.model.table.num_levels
        for step in range(self.steps_per_epoch()):
            rows = [self.rows[i] for i in order[step * bs : (step + 1) * bs]]
            batch = collate([self.model.encoder.train_example(r) for r in rows], self.model.pad_id)
            lengths = np.array([len(r["history"]) + 1 for r in rows])
            batch["targets"] = torch.as_tensor([r["target"] for r in rows])
            batch["state_index"] = torch.as_tensor(
                target_state_index(lengths, m, len(self.model.fmt.prefix))
            )
            yield {k: v.to(self.device) for k, v in batch.items()}

    # -- one batch ----------------------------------------------------------------------------
    def terms(self, batch: dict[str, Tensor], phase: str, align: bool) -> dict[str, Tensor]:
        """Unweighted loss terms of ``phase`` (``rec``, ``sq``, ``sia``, ``psa``) for a batch."""
        cfg, tok = self.cfg, self.tok
        tok_on, rec_on = phase in ("tokenizer", "joint"), phase != "tokenizer"
        use_sia, use_psa = align and cfg.sia, align and cfg.psa
        x_t = self.xt[batch["targets"] - 1]
        out: dict[str, Tensor] = {}
        with torch.set_grad_enabled(rec_on):
            rec, hidden = self.model.loss_and_states(batch)
            state = hidden[torch.arange(len(hidden), device=hidden.device), batch["state_index"]]
        if rec_on:
            out["rec"] = rec
        with torch.set_grad_enabled(tok_on):
            if tok_on:
                sq = tok.loss_terms({"x": x_t})
                out["sq"] = sq["recon"] + sq["vq"]
            z_t = tok.encoder(x_t)
        if use_sia:
            with torch.set_grad_enabled(rec_on or tok_on):
                out["sia"] = sia_loss(
                    code_log_probs(tok.quantizer, z_t),
                    code_log_probs(tok.quantizer, self.heads.sia(state)),
                )
        if use_psa:
            with torch.set_grad_enabled(tok_on):
                z_q, _, _ = tok.quantizer(z_t)
                recon = tok.decoder(z_q)
            out["psa"] = psa_loss(self.heads.psa(state), recon, cfg.temperature)
        return out

    def weighted(self, terms: dict[str, Tensor]) -> Tensor:
        w = {"rec": 1.0, "sq": 1.0, "sia": self.cfg.mu, "psa": self.cfg.lam}
        return sum((w[k] * v for k, v in terms.items()), torch.zeros((), device=self.device))

    def step(self, batch: dict[str, Tensor], phase: str, align: bool) -> dict[str, float]:
        """One optimiser step of ``phase`` (see the module doc) -> its unweighted terms."""
        tok_on, rec_on = phase in ("tokenizer", "joint"), phase != "tokenizer"
        set_trainable(self.tok, tok_on)
        set_trainable(self.rec_modules, rec_on)
        self.rec_opt.zero_grad(set_to_none=True)
        self.tok_opt.zero_grad(set_to_none=True)
        terms = self.terms(batch, phase, align)
        self.weighted(terms).backward()
        if rec_on:
            self._clip(self.rec_modules)
            self.rec_opt.step()
            self.rec_sched.step()
            self.steps["rec"] += 1
        if tok_on:
            self._clip(self.tok)
            self.tok_opt.step()
            self.steps["tok"] += 1
        return {k: float(v.detach()) for k, v in terms.items()}

    def _clip(self, module: nn.Module) -> None:
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.cfg.grad_clip)

    # -- epochs -------------------------------------------------------------------------------
    def run_epoch(self, phase: str) -> dict[str, float]:
        """One epoch of ``phase``; logs and returns the mean of each term under ``phase/``."""
        align = phase != "finetune" and self.epoch >= self.cfg.warmup_epochs
        sums: dict[str, float] = {}
        n = 0
        start = time.perf_counter()
        for batch in self.batches(self.epoch):
            for k, v in self.step(batch, phase, align).items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        means = {f"{phase}/{k}": v / max(n, 1) for k, v in sums.items()}
        means[f"{phase}/seconds"] = time.perf_counter() - start
        self.log_metrics({**means, "epoch": float(self.epoch)}, self.epoch)
        log.info("etegrec epoch %d %s: %s", self.epoch, phase, means)
        self.epoch += 1
        return means

    def reencode(self) -> dict[str, float]:
        """Re-encode every item, re-resolve collisions, rebind the SID LM to the new table."""
        self.tok.eval()
        old = self.model.table.codes[1:]
        table, raw = encode_table(self.tok, self.x, self.sid, self.seed)
        changed = float(np.mean((table.codes[1:] != old).any(axis=1)))
        self.changed.append(changed)
        self.model.set_table(table)
        stats = {"sid_changed_fraction": changed}
        for level in range(raw.shape[1]):
            used = len(np.unique(raw[:, level]))
            stats[f"utilization/level{level}"] = used / self.sid.codebook_size
        self.log_metrics(stats, self.epoch)
        return stats

    def train(self) -> dict[str, Any]:
        """The whole schedule of ``cfg.mode`` -> figures for the metrics JSON."""
        cfg, start = self.cfg, time.perf_counter()
        best, bad, frozen = math.inf, 0, cfg.mode == "two_stage"

        def tokenizer_improved(sq: float) -> bool:
            nonlocal best, bad, frozen
            if sq < best - 1e-12:
                best, bad = sq, 0
            else:
                bad += 1
                frozen = bool(cfg.freeze_patience) and bad >= cfg.freeze_patience
            return not frozen

        shared = cfg.cycles * (cfg.cycle - 1)
        if cfg.mode == "alternating":
            for _ in range(cfg.cycles):
                if not frozen:
                    sq = self.run_epoch("tokenizer")["tokenizer/sq"]
                    self.reencode()
                    tokenizer_improved(sq)
                for _ in range(cfg.cycle - 1):
                    self.run_epoch("recommender")
        elif cfg.mode == "joint":
            for _ in range(shared):
                if frozen:
                    self.run_epoch("recommender")
                    continue
                sq = self.run_epoch("joint")["joint/sq"]
                self.reencode()
                tokenizer_improved(sq)
        else:
            for _ in range(shared):
                self.run_epoch("finetune")
        for _ in range(cfg.finetune_epochs):
            self.run_epoch("finetune")
        self.model.materialize()
        self.tok.eval()
        self.model.eval()
        raw = self.tok.encode(self.x)
        table = self.model.table
        quality = sid_quality(
            raw, table.codes[1:], self.sid.codebook_size, list(table.codebook_sizes)
        )
        return {
            **quality,
            "recon_mse": self.tok.reconstruction_mse(self.x, raw),
            "unique": bool(table.is_unique()),
            "rec_steps": self.steps["rec"],
            "tok_steps": self.steps["tok"],
            "epochs": self.epoch,
            "sid_changed_fraction_last": self.changed[-1] if self.changed else 0.0,
            "sid_changed_fraction_mean": float(np.mean(self.changed)) if self.changed else 0.0,
            "train_seconds": time.perf_counter() - start,
        }
