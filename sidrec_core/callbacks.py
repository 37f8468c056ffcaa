"""What the training loops call at fixed points, passed explicitly (the ``transformers.Trainer``
/ Lightning / Keras pattern, with their hook names), and the early-stopping state both loops
share (:func:`sidrec_core.train.fit` and :func:`sidrec_core.rl.grpo.train_grpo`).

A callback overrides the hooks it needs; a hook may raise to stop training (a tuning trial's
pruner raises ``optuna.TrialPruned`` from :meth:`Callback.on_validation_end`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from sidrec_core.tracking import Run


class Callback:
    """The hooks of :func:`~sidrec_core.train.fit`, in the order it calls them each epoch."""

    def on_train_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """After the epoch's batches, before validation; may add figures to ``record``."""

    def on_validation_end(self, epoch: int, record: dict[str, float]) -> None:
        """After a validation (not every epoch: ``train.eval_every``); ``record`` holds it."""

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """After the epoch's record is final and its resume checkpoint is written."""


class EpochMetrics(Callback):
    """Adds ``fn()`` (e.g. SASRec's learned fusion weights) to each epoch's record."""

    def __init__(self, fn: Callable[[], dict[str, float]]):
        self.fn = fn

    def on_train_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        record.update(self.fn())


class LogToRun(Callback):
    """Logs each epoch's record to the stage's tracking run, at step ``epoch``."""

    def __init__(self, run: Run):
        self.run = run

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        self.run.log_metrics(record, step=epoch)


@dataclasses.dataclass
class EarlyStopping:
    """Best value of ``monitor`` (higher is better), its epoch and a CPU copy of the model's
    state then; ``stop`` once ``patience`` validations in a row did not improve (0 = never)."""

    monitor: str
    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    bad_evals: int = 0

    STATE = ("best", "best_epoch", "best_state", "bad_evals")  # what a resume restores

    def update(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> bool:
        """Record the validation ``metrics`` of ``epoch``; True when it is the new best."""
        if self.monitor not in metrics:
            raise KeyError(
                f"train.monitor {self.monitor!r} not in validation metrics {sorted(metrics)}"
            )
        if metrics[self.monitor] > self.best:
            self.best, self.best_epoch, self.bad_evals = metrics[self.monitor], epoch, 0
            # deepcopy keeps tied weights tied (one storage), as the saved checkpoint has them
            self.best_state = copy.deepcopy(
                {k: v.detach().cpu() for k, v in model.state_dict().items()}
            )
            return True
        self.bad_evals += 1
        return False

    @property
    def stop(self) -> bool:
        return bool(self.patience and self.bad_evals >= self.patience)

    def restore(self, model: nn.Module) -> dict[str, Tensor] | None:
        """Load the best state into ``model`` (no-op before any validation); returns it."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return self.best_state

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])
