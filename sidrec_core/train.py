"""One readable training loop shared by every gradient-trained recommender (after nanoGPT's
train.py): AdamW, warmup + schedule, gradient clipping, evaluation every ``eval_every`` epochs,
early stopping on a monitored metric, best checkpoint kept and restored at the end.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from sidrec_core.io import save_torch
from sidrec_core.tracking import Run

log = logging.getLogger(__name__)
Batch = dict[str, Tensor]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Nested ``train`` subsection of a model's params section."""

    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Adam's (beta1, beta2); cornac's SASRec trains with (0.9, 0.98)
    # (PreferredAI/cornac: cornac/models/sasrec/recom_sasrec.py, as in Vaswani et al., 2017)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # 0 = off
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    eval_every: int = 1  # epochs
    patience: int = 10  # evaluations without improvement before stopping; 0 = never stop early
    monitor: str = "valid/ndcg@10"
    max_steps: int = 0  # 0 = no cap; a cap ends training early (smoke runs, benchmarks)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")


@dataclasses.dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    epochs: int
    steps: int
    seconds_per_epoch: float
    history: list[dict[str, float]]


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def fit(
    model: nn.Module,
    batches: Callable[[int], Iterable[Batch]],
    validate: Callable[[], dict[str, float]],
    cfg: TrainConfig,
    *,
    device: torch.device,
    run: Run | None = None,
    steps_per_epoch: int | None = None,
    checkpoint: str | Path | None = None,
    epoch_metrics: Callable[[], dict[str, float]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn: Callable[[Batch], Tensor] | None = None,
    backward: Callable[[Tensor], None] | None = None,
) -> FitResult:
    """Train ``model`` with ``loss_fn`` (default ``model.loss``) on ``batches(epoch)``.

    ``validate()`` returns metrics that include ``cfg.monitor`` (higher is better).
    ``epoch_metrics()`` adds per-epoch figures (e.g. learned fusion weights) to the run's curves.
    ``backward(loss)`` replaces ``loss.backward()`` (e.g. ``accelerator.backward`` for loss scaling
    and gradient sync across processes).
    """
    loss_fn = loss_fn or model.loss  # type: ignore[assignment]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    total_steps = (steps_per_epoch or 0) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, total_steps, cfg)
    )
    best, best_epoch, best_state = -math.inf, 0, None
    bad_evals, step, history, epoch_times = 0, 0, [], []
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        start, loss_sum, num_batches = time.perf_counter(), 0.0, 0
        for batch in batches(epoch):
            loss = loss_fn(to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            if backward is None:
                loss.backward()
            else:
                backward(loss)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
            num_batches += 1
            step += 1
            if cfg.max_steps and step >= cfg.max_steps:
                break
        epoch_times.append(time.perf_counter() - start)
        record = {
            "train/loss": loss_sum / max(num_batches, 1),
            "train/lr": scheduler.get_last_lr()[0],
            "train/epoch_seconds": epoch_times[-1],
        }
        if epoch_metrics is not None:
            record.update(epoch_metrics())
        stop = bool(cfg.max_steps and step >= cfg.max_steps)
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs or stop:
            record.update(validate())
            if cfg.monitor not in record:
                raise KeyError(
                    f"train.monitor {cfg.monitor!r} not in validation metrics {sorted(record)}"
                )
            if record[cfg.monitor] > best:
                best, best_epoch, bad_evals = record[cfg.monitor], epoch, 0
                best_state = copy.deepcopy(
                    {k: v.detach().cpu() for k, v in model.state_dict().items()}
                )
            else:
                bad_evals += 1
            log.info(
                "epoch %d loss %.4f %s %.4f (best %.4f @ %d)",
                epoch,
                record["train/loss"],
                cfg.monitor,
                record[cfg.monitor],
                best,
                best_epoch,
            )
        history.append({"epoch": epoch, **record})
        if run is not None:
            run.log_metrics(record, step=epoch)
        if stop or (cfg.patience and bad_evals >= cfg.patience):
            break
    if best_state is not None:
        model.load_state_dict(best_state)
        if checkpoint is not None:
            save_torch(checkpoint, best_state)
    return FitResult(
        best, best_epoch, epoch, step, sum(epoch_times) / max(len(epoch_times), 1), history
    )
