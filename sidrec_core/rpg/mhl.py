"""Masked History Learning for RPG (Wei et al., "From Past To Path: Masked History Learning for
Next-Item Prediction in Generative Recommendation", arXiv 2509.23649, §3.2-3.4 and App. C; the
authors' code, github.com/CQU-MM-Intelligent-Lab/MHL, is not readable here).

Each training step masks some codewords of a row's history (token level: single digits; item
level: every digit of an item), encodes the masked row, and adds to RPG's next-item loss the
cross-entropy of the masked codewords' true codes, averaged over them (the paper's Eq. 5-7, both
weights 1 by default). A masked digit's embedding is replaced by a learned per-digit mask vector
before the item's mean-pool. How many: N ~ U{1, ..., floor(ratio x units)} a row (units = items
or items x digits), none when that floor is 0. Which: uniformly at random (phase I), or the N
with the highest entropy of the model's own next-item prediction of that codeword, from a
no-grad pass over the unmasked row (phase II; an item's entropy is its digits' mean). Phase II
lowers the ratio to 0, and phase III trains on next-item prediction alone. ``RPG.loss`` is this
loss while its ``curriculum`` (a callback of the training loop) masks, RPG's own after.

Choices the paper leaves open, made here and named so a study can vary them:
- A masked item is reconstructed from its own position's state (causal attention kept: that state
  sees the item's unmasked digits and the history before it), through reconstruction heads of
  their own (RPG's per-digit residual blocks, zero-initialised), with the tied cosine logits; the
  next-item heads read the same state for the following item.
- The entropy is that of RPG's own logits (``rpg.temperature``), from the state before the item;
  a row's first item has none and is masked only at random.
- ``schedule: linear`` (the default) lowers the ratio linearly over ``entropy_epochs``: the
  paper's rule (``plateau``: lower it by a tenth of the start ratio after ``plateau_evals``
  validations without improvement, up to 300 epochs) needs 50+ plateau epochs, more than a CPU
  budget of 40.
- Early stopping counts from the first validation, as in every other model here (the paper's
  waits for phase III); so ``plateau`` needs ``rpg.train.patience`` 0 or above 10 x
  ``plateau_evals``, which the config checks.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sidrec_core.callbacks import Callback

if TYPE_CHECKING:
    from sidrec_core.rpg.model import RPG

GRANULARITIES = ("none", "token", "item")
SCHEDULES = ("linear", "plateau")


@dataclasses.dataclass(frozen=True)
class MHLConfig:
    """``rpg.mhl``. Paper values (App. C, Tables 2 and 5): token level, start ratio 0.15 (Beauty's
    best), reconstruction weight 1.0, random then entropy-guided masking, ratio lowered to 0."""

    granularity: Literal["none", "token", "item"] = "none"
    ratio: float = 0.15
    weight: float = 1.0
    random_epochs: int = 4  # phase I: random masking at ``ratio``
    schedule: Literal["linear", "plateau"] = "linear"
    entropy_epochs: int = 12  # linear: phase II's length, the ratio falling to 0 over it
    plateau_evals: int = 5  # plateau: validations without improvement before a step down

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"rpg.mhl.granularity: unknown {self.granularity!r}; valid: {GRANULARITIES}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"rpg.mhl.schedule: unknown {self.schedule!r}; valid: {SCHEDULES}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"rpg.mhl.ratio must be in (0, 1], got {self.ratio}")
        if self.weight < 0:
            raise ValueError(f"rpg.mhl.weight must be >= 0, got {self.weight}")
        for name in ("random_epochs", "entropy_epochs", "plateau_evals"):
            if getattr(self, name) < 0:
                raise ValueError(f"rpg.mhl.{name} must be >= 0, got {getattr(self, name)}")
        if self.plateau_evals < 1 and self.schedule == "plateau":
            raise ValueError("rpg.mhl.plateau_evals must be >= 1 with schedule plateau")

    @property
    def on(self) -> bool:
        return self.granularity != "none"


def select_units(
    scores: Tensor, eligible: Tensor, ratio: float, generator: torch.Generator
) -> Tensor:
    """Per row of ``scores`` [B, ...] (higher = masked first; ties broken by position), the top N
    of its ``eligible`` units, N ~ U{1, ..., floor(ratio x eligible units)} (0 when that is 0)
    -> bool mask shaped as ``scores``."""
    b = scores.shape[0]
    flat_scores, flat_ok = scores.reshape(b, -1), eligible.reshape(b, -1)
    most = torch.floor(ratio * flat_ok.sum(1).to(torch.float64)).long()
    draw = torch.rand(b, generator=generator, dtype=torch.float64).to(scores.device)
    count = torch.where(most > 0, (draw * most).long() + 1, torch.zeros_like(most))
    order = flat_scores.masked_fill(~flat_ok, -torch.inf).argsort(
        dim=1, descending=True, stable=True
    )
    positions = torch.arange(order.shape[1], device=order.device).expand_as(order).contiguous()
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return ((rank < count[:, None]) & flat_ok).reshape(scores.shape)


@torch.no_grad()
def codeword_entropy(model: RPG, history: Tensor) -> Tensor:
    """history [B, L] -> the entropy of the model's prediction of each history codeword from the
    state before it [B, L, M] (-inf where there is none: padding, a row's first item), without
    dropout."""
    was_training = model.training
    model.eval()
    states = model.encode(history)
    model.train(was_training)
    valid = history > 0
    has_prev = torch.zeros_like(valid)
    has_prev[:, 1:] = valid[:, 1:] & valid[:, :-1]
    log_p = F.log_softmax(model.digit_logits(states[:, :-1][has_prev[:, 1:]]), dim=-1)
    entropy = torch.full((*history.shape, model.num_levels), -torch.inf, device=history.device)
    entropy[has_prev] = -(log_p.exp() * log_p).sum(-1)
    return entropy


class Curriculum(Callback):
    """The masking ratio by epoch (phase I random, II entropy-guided, III none), advanced by
    ``fit``'s hooks. Its masking draws come from its own generator (seeded with ``seed``; dropout
    keeps the global one), saved with the ratio in a resume checkpoint (``state_dict``)."""

    def __init__(self, cfg: MHLConfig, monitor: str, seed: int):
        self.cfg, self.monitor = cfg, monitor
        self.epoch, self.ratio = 1, cfg.ratio
        self.best, self.bad_evals = -torch.inf, 0
        self.generator = torch.Generator().manual_seed(seed)
        self._sums = [0.0, 0]  # reconstruction loss and steps of the epoch

    @property
    def policy(self) -> Literal["random", "entropy", "none"]:
        if self.ratio <= 0:
            return "none"
        return "random" if self.epoch <= self.cfg.random_epochs else "entropy"

    def note(self, reconstruction: float) -> None:
        self._sums[0] += reconstruction
        self._sums[1] += 1

    # Both hooks run before the loop writes its resume checkpoint, so a resumed run starts the
    # next epoch with the ratio an uninterrupted one would.
    def on_train_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """Record the epoch's ratio and reconstruction loss; the linear schedule's next ratio."""
        record["mhl/ratio"] = self.ratio
        if self._sums[1]:
            record["train/reconstruction_loss"] = self._sums[0] / self._sums[1]
        self._sums = [0.0, 0]
        cfg, self.epoch = self.cfg, epoch + 1
        if cfg.schedule == "linear" and self.epoch > cfg.random_epochs:
            done = self.epoch - cfg.random_epochs - 1  # phase II epochs before the next
            left = 1.0 - done / cfg.entropy_epochs if cfg.entropy_epochs else 0.0
            self.ratio = cfg.ratio * max(0.0, left)

    def on_validation_end(self, epoch: int, record: dict[str, float]) -> None:
        """The plateau schedule: a tenth of the start ratio less after ``plateau_evals`` phase II
        validations in a row without improvement."""
        cfg = self.cfg
        if record[self.monitor] > self.best:
            self.best, self.bad_evals = record[self.monitor], 0
        elif epoch > cfg.random_epochs:
            self.bad_evals += 1
        if cfg.schedule == "plateau" and self.bad_evals >= cfg.plateau_evals:
            self.ratio = max(0.0, round(self.ratio - cfg.ratio / 10, 12))
            self.bad_evals = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "ratio": self.ratio,
            "best": self.best,
            "bad_evals": self.bad_evals,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.ratio = state["epoch"], state["ratio"]
        self.best, self.bad_evals = state["best"], state["bad_evals"]
        self.generator.set_state(state["generator"])


def digit_mask(model: RPG, history: Tensor, cur: Curriculum) -> Tensor:
    """history [B, L] -> the codewords to mask [B, L, M] under the curriculum's policy."""
    valid = history > 0
    units = valid[..., None].expand(-1, -1, model.num_levels)
    if cur.policy == "entropy":
        scores = codeword_entropy(model, history)
    else:
        scores = torch.rand(units.shape, generator=cur.generator).to(history.device)
    if model.cfg.mhl.granularity == "item":
        items = select_units(scores.mean(-1), valid, cur.ratio, cur.generator)
        return items[..., None] & units
    return select_units(scores, units, cur.ratio, cur.generator)


def masked_history_loss(model: RPG, batch: dict[str, Tensor], cur: Curriculum) -> Tensor:
    """Next-item loss on the masked rows plus ``rpg.mhl.weight`` x the masked codewords'
    reconstruction loss (phases I and II)."""
    history = batch["history"]
    masked = digit_mask(model, history, cur)
    states = model.encode(history, masked)
    loss = model.next_item_loss(states, batch["targets"])
    if not bool(masked.any()):
        return loss
    rec = reconstruction_loss(model, history, states, masked)
    cur.note(float(rec.detach()))
    return loss + model.cfg.mhl.weight * rec


def reconstruction_loss(model: RPG, history: Tensor, states: Tensor, masked: Tensor) -> Tensor:
    """The mean cross-entropy of the ``masked`` [B, L, M] codewords' true codes, each read from
    its item's own state [B, L, D] through its digit's reconstruction head (RPG's residual block
    and tied cosine logits); digit by digit, so only masked codewords are scored."""
    codes = model.codes[history]  # [B, L, M]
    emb = F.normalize(model.code_emb, dim=-1)
    logits, labels = [], []
    for m in range(model.num_levels):
        at = masked[..., m]
        s = states[at]  # [n, D]
        h = s + F.silu(s @ model.recon_weight[m] + model.recon_bias[m])
        logits.append((F.normalize(h, dim=-1) / model.cfg.temperature) @ emb[m].T)
        labels.append(codes[..., m][at])
    return F.cross_entropy(torch.cat(logits), torch.cat(labels))
