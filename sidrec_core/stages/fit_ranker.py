"""The glue ``train_sasrec`` and ``train_rpg`` share: both fit a full-catalogue ranker with the
shared loop (:func:`sidrec_core.train.fit`), validating on a fixed user subsample, then score the
best checkpoint on every user of valid and test and record the same training figures and
per-epoch curves. What differs (model, batches, tags, extra figures) stays in each stage."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sidrec_core.callbacks import Callback
from sidrec_core.data.split import Split
from sidrec_core.evaluate import EvalConfig, EvalResult, evaluate
from sidrec_core.io import write_json
from sidrec_core.stages.context import StageContext
from sidrec_core.train import FitResult, Resume, TrainConfig, fit


def validation(
    model: Any,
    valid: Split,
    ev: EvalConfig,
    device: torch.device,
    num_items: int,
    users: np.ndarray | None,
) -> Callable[[], dict[str, float]]:
    """What ``fit`` validates with: the ranking metrics (``valid/{metric}@{k}``) of ``model`` on
    the ``users`` rows of ``valid`` (None = all), without bootstrap intervals."""

    def validate() -> dict[str, float]:
        res = evaluate(model, valid, ev, device, num_items=num_items, bootstrap=False, users=users)
        return {k: v for k, v in res.metrics.items() if "@" in k}

    return validate


def fit_ranker(
    ctx: StageContext,
    model: nn.Module,
    batches: Any,
    train: TrainConfig,
    validate: Callable[[], dict[str, float]],
    checkpoint: str,
    sid_fingerprint: Any,
    *,
    stateful: Sequence[Any] = (),
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """``fit`` on ``batches`` (``len`` = steps per epoch), the best state saved to ``checkpoint``;
    resumable from ``<checkpoint's grandparent>/.resume/<stage>.pt`` (beside the model folder,
    not inside it: DVC deletes a stage's outs before a run) while the stage's configs and
    ``sid_fingerprint`` are unchanged; ``callbacks`` run before the stage's own."""
    return fit(
        model,
        batches,
        validate,
        train,
        device=ctx.device,
        steps_per_epoch=len(batches),
        checkpoint=checkpoint,
        resume=Resume(
            Path(checkpoint).parent.parent / ".resume" / f"{ctx.name}.pt",
            fingerprint=ctx.fingerprint(sid_table=sid_fingerprint),
            stateful=stateful,
        ),
        callbacks=[*callbacks, *ctx.callbacks],
    )


def score(
    model: Any, splits: Iterable[Split], ev: EvalConfig, device: torch.device, num_items: int
) -> tuple[dict[str, float], EvalResult]:
    """The metrics of every split under ``ev`` (all users), and the last split's result."""
    metrics: dict[str, float] = {}
    for split in splits:
        res = evaluate(model, split, ev, device, num_items=num_items)
        metrics.update(res.metrics)
    return metrics, res


def record_fit(
    ctx: StageContext, result: FitResult, model: nn.Module, test: EvalResult, **extra: Any
) -> None:
    """The training figures, ``extra``, the parameter count and ``test``'s rank summary into the
    stage's metrics; the per-epoch records to ``<metrics_dir>/<stage>_curves.json``."""
    ctx.run.record(
        epochs=result.epochs,
        best_epoch=result.best_epoch,
        steps=result.steps,
        seconds_per_epoch=result.seconds_per_epoch,
        num_parameters=sum(p.numel() for p in model.parameters()),
        **extra,
        **{"test/ranks": test.ranks_record()},
    )
    curves = [
        {k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history
    ]
    write_json(Path(ctx.metrics_dir) / f"{ctx.name}_curves.json", curves)
