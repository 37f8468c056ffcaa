"""The ``etegrec`` params section: schedule, loss weights, optimisers, tying, outputs.

Defaults are the official ones (ETEGRec paper and its public code, YYYYXL1004/ETEGRec):
cycles of C = 2 epochs, mu = 1e-4 (SIA), lambda = 3e-4 (PSA), AdamW with lr 5e-3 for the
recommender and 1e-4 for the tokenizer, weight decay 0.05, PSA temperature 0.07.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

PREFIX = "etegrec"


@dataclasses.dataclass(frozen=True)
class ETEGRecConfig:
    """``etegrec`` section.

    ``mode``: ``alternating`` (ETEGRec), ``joint`` (both models step on every batch, no
    alternation: the paper's ablation) or ``two_stage`` (tokenizer frozen from the start: the
    same architecture trained as TIGER is). Every mode gives the recommender the same number of
    epochs, ``cycles * (cycle - 1) + finetune_epochs``, so levels compare at equal updates.
    """

    mode: Literal["alternating", "joint", "two_stage"] = "alternating"
    cycle: int = 2  # epochs per cycle: 1 tokenizer epoch + (cycle - 1) recommender epochs
    cycles: int = 4
    finetune_epochs: int = 4  # recommender alone, tokenizer frozen, after the cycles
    warmup_epochs: int = 1  # epochs (of any phase) before SIA/PSA switch on
    freeze_patience: int = 1  # tokenizer epochs without a lower L_SQ before it is frozen; 0 = never
    sia: bool = True
    psa: bool = True
    mu: float = 1e-4  # SIA weight
    lam: float = 3e-4  # PSA weight
    temperature: float = 0.07  # PSA InfoNCE temperature (cosine similarities)
    rec_lr: float = 5e-3
    tok_lr: float = 1e-4
    weight_decay: float = 0.05
    grad_clip: float = 1.0  # 0 = off
    batch_size: int = 256
    max_steps_per_epoch: int = 0  # 0 = every batch; a cap for smoke runs
    tie_codebooks: bool = False
    sid_dir: str = "data/sids_etegrec"
    output_dir: str = "models/etegrec"
    predictions_dir: str = "data/predictions/etegrec"

    def __post_init__(self) -> None:
        """Reject nonsensical settings, naming the dotted key."""
        if self.cycle < 2:
            raise ValueError(
                f"{PREFIX}.cycle must be >= 2 (one tokenizer epoch + at least one "
                f"recommender epoch), got {self.cycle}"
            )
        for name in ("cycles", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{PREFIX}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("finetune_epochs", "warmup_epochs", "freeze_patience", "max_steps_per_epoch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{PREFIX}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("mu", "lam", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"{PREFIX}.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("temperature", "rec_lr", "tok_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{PREFIX}.{name} must be > 0, got {getattr(self, name)}")

    @property
    def rec_epochs(self) -> int:
        """Recommender epochs of every mode (the equal-update budget)."""
        return self.cycles * (self.cycle - 1) + self.finetune_epochs
