"""One readable training loop shared by every gradient-trained recommender (after nanoGPT's
train.py): AdamW, warmup + schedule, gradient clipping, evaluation every ``eval_every`` epochs,
early stopping on a monitored metric, best checkpoint kept and restored at the end. What else
runs each epoch (tracking, a tuning trial's pruner, extra figures) is a callback passed to
:func:`fit` (:mod:`sidrec_core.callbacks`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sidrec_core import checkpoint as ckpt
from sidrec_core.callbacks import Callback, EarlyStopping
from sidrec_core.io import save_torch
from sidrec_core.metrics import METRICS, OBJECTIVE
from sidrec_core.progress import format_seconds

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
    monitor: str = OBJECTIVE
    max_steps: int = 0  # 0 = no cap; a cap ends training early (smoke runs, benchmarks)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas}")
        check_monitor(self.monitor)


def check_monitor(key: str) -> None:
    """``train.monitor`` is ``{split}/{metric}@{k}`` (split valid or train: monitoring the test
    split would select on it) or ``{split}/{name}`` for a model-specific validation figure; a
    ranking metric must be one :mod:`sidrec_core.metrics` computes. Checked at config time so a
    typo fails before the first epoch rather than after it."""
    split, _, name = key.partition("/")
    metric, at, k = name.partition("@")
    if split not in ("valid", "train") or not metric:
        raise ValueError(
            f"train.monitor must look like 'valid/ndcg@10' ({{split}}/{{metric}}@{{k}}, split "
            f"valid or train), got {key!r}"
        )
    if at and (metric not in METRICS or not k.isdigit() or int(k) < 1):
        raise ValueError(
            f"train.monitor {key!r}: expected {{split}}/{{metric}}@{{k}} with metric one of "
            f"{', '.join(METRICS)} and k a positive integer"
        )


def check_validated_monitor(key: str, monitor: str, ks: tuple[int, ...]) -> None:
    """A stage that validates with :func:`sidrec_core.evaluate.evaluate` reports
    ``valid/{metric}@{k}`` for each ``k`` in ``eval.ks``; a monitor outside that set would fail
    only after the first epoch, so it fails when the configs are built, naming ``key``."""
    split, _, name = monitor.partition("/")
    metric, _, k = name.partition("@")
    if split == "valid" and metric in METRICS and k.isdigit() and int(k) in ks:
        return
    raise ValueError(
        f"{key} {monitor!r}: validation reports valid/{{metric}}@{{k}} with metric one of "
        f"{', '.join(METRICS)} and k one of eval.ks {list(ks)}"
    )


def eta_text(elapsed: float, epochs_done: int, epochs_left: int) -> str:
    """``Ns/epoch, ETA ...`` from the wall seconds (training and validation) of the epochs this
    process ran; an upper bound when early stopping may end the run sooner."""
    per_epoch = elapsed / max(epochs_done, 1)
    eta = "done" if epochs_left <= 0 else f"ETA <= {format_seconds(per_epoch * epochs_left)}"
    return f"{format_seconds(per_epoch)}/epoch, {eta}"


@dataclasses.dataclass
class _State:
    """The training loop's progress (what a resume restores, with the early-stopping state)."""

    epoch: int = 0
    step: int = 0
    done: bool = False
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    epoch_times: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class FitResult:
    best_metric: float
    best_epoch: int
    epochs: int
    steps: int
    seconds_per_epoch: float
    history: list[dict[str, float]]


@dataclasses.dataclass(frozen=True)
class Resume:
    """A per-epoch checkpoint at ``path``, written atomically after every epoch and removed once
    training ends. A re-run whose ``fingerprint`` (the caller's params, hashed together with the
    :class:`TrainConfig`) matches continues after the last finished epoch and ends exactly as an
    uninterrupted run would; a different fingerprint starts fresh. ``stateful`` objects
    (``state_dict``/``load_state_dict``, e.g. a batch source whose sampler draws from its own
    generator) are saved and restored with it."""

    path: str | Path
    fingerprint: Any = None
    stateful: Sequence[Any] = ()


@dataclasses.dataclass(frozen=True)
class Step:
    """Replacements for the parts of one optimizer step: ``optimizer`` (default AdamW over the
    trainable parameters with the config's lr, betas and weight decay), ``loss_fn`` (default
    ``model.loss``), ``backward(loss)`` (default ``loss.backward()``; e.g. ``accelerator.backward``
    for loss scaling and gradient sync across processes)."""

    optimizer: torch.optim.Optimizer | None = None
    loss_fn: Callable[[Batch], Tensor] | None = None
    backward: Callable[[Tensor], None] | None = None


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    if cfg.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def lr_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup then ``cfg.schedule`` over ``total_steps`` optimizer steps (0 = unknown: constant
    after warmup)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, cfg))


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
    steps_per_epoch: int | None = None,
    checkpoint: str | Path | None = None,
    step: Step = Step(),
    resume: Resume | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` on ``batches(epoch)``, ``steps_per_epoch`` optimizer steps an epoch (None =
    unknown: the schedule is constant after warmup).

    ``validate()`` returns metrics that include ``cfg.monitor`` (higher is better); the best
    state by it is restored at the end and saved to ``checkpoint``. ``step`` replaces parts of an
    optimizer step, ``resume`` makes the run resumable, ``callbacks`` are called at the points
    :class:`~sidrec_core.callbacks.Callback` names.
    """
    loss_fn = step.loss_fn or model.loss  # type: ignore[assignment]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = step.optimizer or torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    total_steps = (steps_per_epoch or 0) * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps) if total_steps else cfg.max_steps
    scheduler = lr_scheduler(optimizer, total_steps, cfg)
    st, early = _State(), EarlyStopping(cfg.monitor, cfg.patience)
    stateful = resume.stateful if resume is not None else ()
    fp = ckpt.fingerprint(
        dataclasses.asdict(cfg), steps_per_epoch, resume.fingerprint if resume else None
    )
    saved = ckpt.load_checkpoint(resume.path, fp) if resume is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        for obj, obj_state in zip(stateful, saved["stateful"], strict=True):
            obj.load_state_dict(obj_state)
        ckpt.set_rng_state(saved["rng"])
        loop = dict(saved["loop"])
        early.load_state_dict({name: loop.pop(name) for name in EarlyStopping.STATE})
        st = _State(**loop)
        log.info("resumed from %s after epoch %d (step %d)", resume.path, st.epoch, st.step)
    run_start, first_epoch = time.perf_counter(), st.epoch
    while not st.done and st.epoch < cfg.epochs:
        st.epoch += 1
        epoch = st.epoch
        model.train()
        start, loss_sum, num_batches = time.perf_counter(), 0.0, 0
        for batch in batches(epoch):
            loss = loss_fn(to_device(batch, device))
            optimizer.zero_grad(set_to_none=True)
            if step.backward is None:
                loss.backward()
            else:
                step.backward(loss)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach())
            num_batches += 1
            st.step += 1
            if cfg.max_steps and st.step >= cfg.max_steps:
                break
        st.epoch_times.append(time.perf_counter() - start)
        record = {
            "train/loss": loss_sum / max(num_batches, 1),
            "train/lr": scheduler.get_last_lr()[0],
            "train/epoch_seconds": st.epoch_times[-1],
        }
        for cb in callbacks:
            cb.on_train_epoch_end(epoch, record)
        stop = bool(cfg.max_steps and st.step >= cfg.max_steps)
        validates = epoch % cfg.eval_every == 0 or epoch == cfg.epochs or stop
        if not validates:
            log.info(
                "epoch %d/%d loss %.4f, %s",
                epoch,
                cfg.epochs,
                record["train/loss"],
                eta_text(time.perf_counter() - run_start, epoch - first_epoch, cfg.epochs - epoch),
            )
        if validates:
            record.update(validate())
            early.update(epoch, record, model)
            log.info(
                "epoch %d/%d loss %.4f %s %.4f (best %.4f @ %d), %s",
                epoch,
                cfg.epochs,
                record["train/loss"],
                cfg.monitor,
                record[cfg.monitor],
                early.best,
                early.best_epoch,
                eta_text(time.perf_counter() - run_start, epoch - first_epoch, cfg.epochs - epoch),
            )
            for cb in callbacks:
                cb.on_validation_end(epoch, record)
        st.history.append({"epoch": epoch, **record})
        st.done = stop or early.stop
        if resume is not None:
            ckpt.save_checkpoint(
                resume.path,
                {
                    "fingerprint": fp,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "stateful": [obj.state_dict() for obj in stateful],
                    "rng": ckpt.rng_state(),
                    "loop": {**dataclasses.asdict(st), **early.state_dict()},
                },
            )
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)
    best_state = early.restore(model)
    if best_state is not None and checkpoint is not None:
        save_torch(checkpoint, best_state)
    if resume is not None:
        Path(resume.path).unlink(missing_ok=True)
    return FitResult(
        early.best,
        early.best_epoch,
        st.epoch,
        st.step,
        sum(st.epoch_times) / max(len(st.epoch_times), 1),
        st.history,
    )
