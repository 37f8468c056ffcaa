"""DVC stage ``train_sidlm``: train the SID language model on the training part, early-stop on
validation, save it to ``sidlm.output_dir``.

Data parallelism and mixed precision come from accelerate: every process streams its own shard
of the examples file, gradients are synced through the prepared model's ``forward`` (which is the
loss), bf16 autocast is on for accelerators. Launch ``accelerate launch bench/train_sidlm.py`` for
several processes; a plain ``python`` run is one process. Validation during training runs the
same users on every process, so early-stopping decisions agree.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from transformers.utils import logging as hf_logging

from sidrec_core.callbacks import Callback
from sidrec_core.config import BaseConfig, build
from sidrec_core.data.dataset import DataConfig
from sidrec_core.data.sid_examples import (
    IGNORE,
    JsonlExamples,
    collate,
    length_grouped,
    training_rows,
    write_rows,
)
from sidrec_core.data.split import LeaveOneOut, subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import save_dir_atomic
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_sidlm, load_inputs
from sidrec_core.progress import format_seconds
from sidrec_core.stages.context import build_configs, stage_context
from sidrec_core.train import Resume, Step, fit
from sidrec_core.utils import resolve_device

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # per-file load/save bars flood the stage logs

SECTIONS = {"data": DataConfig, "eval": EvalConfig, "sidlm": SIDLMConfig}


def make_accelerator(cfg: SIDLMConfig, device: torch.device) -> Accelerator:
    """Accelerator on the resolved device; ``mixed_precision=auto`` is bf16 on accelerators only
    (CPU bf16 matmuls are slower than fp32 on most machines)."""
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "no" if device.type == "cpu" else "bf16"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)


def _chunks(rows: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def target_tokens(examples: JsonlExamples) -> int:
    """Labelled tokens over all rows of an encoded examples stream."""
    return sum(sum(1 for t in ex["labels"] if t != IGNORE) for ex in examples)


def train_sidlm(
    model: SIDLM,
    loo: LeaveOneOut,
    cfg: SIDLMConfig,
    data: DataConfig,
    eval_cfg: EvalConfig,
    acc: Accelerator,
    seed: int,
    *,
    resume: Resume | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit ``model`` on the training rows, early-stopped on validation; save it atomically to
    ``cfg.output_dir`` (main process). ``resume``/``callbacks``: as :func:`sidrec_core.train.fit`
    takes them (one resume file per process: each rank's RNG state differs). Returns training
    figures for the metrics JSON."""
    device = acc.device
    eval_cfg.check_catalogue(loo.num_items)  # before training, not at the first validation
    examples = (
        Path(cfg.output_dir).with_name(Path(cfg.output_dir).name + "_examples") / "train.jsonl"
    )
    if acc.is_main_process:
        rows = training_rows(
            loo, model.encoder.rows_task, data.max_history, cfg.first_item_targets == "keep"
        )
        write_rows(examples, rows)
    acc.wait_for_everyone()
    num_rows = sum(1 for _ in examples.open())
    num_targets = target_tokens(JsonlExamples(examples, model.encoder))
    if cfg.loss_normalization == "tokens":
        # per process: DDP averages the processes' gradients, so every token still weighs 1/
        # (world_size x loss_tokens)
        model.loss_tokens = cfg.train.batch_size * num_targets / max(num_rows, 1)
    stream = JsonlExamples(
        examples,
        model.encoder,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=seed,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    side = model.encoder.pad_side
    bs = cfg.train.batch_size
    tokens = {"n": 0}
    steps = max(1, num_rows // (bs * acc.num_processes))
    start = time.perf_counter()

    def batches(epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        stream.set_epoch(epoch)
        groups = (
            length_grouped(stream, bs, cfg.length_group, seed + epoch)
            if cfg.length_group
            else _chunks(stream, bs)
        )
        epoch_start = time.perf_counter()
        for i, group in enumerate(groups):
            batch = collate(group, model.pad_id, side)
            tokens["n"] += int(batch["attention_mask"].sum())
            if i % 20 == 0:
                now = time.perf_counter()
                # the first batch of an epoch has no rate yet
                left = (now - epoch_start) / i * max(steps - i, 0) if i else None
                log.info(
                    "epoch %d batch %d/%d, %.0f tokens/s%s",
                    epoch,
                    i,
                    steps,
                    tokens["n"] / max(now - start, 1e-9),
                    "" if left is None else f", epoch ETA {format_seconds(left)}",
                )
            yield batch

    valid = loo.split("valid", data.max_history)
    users = subsample_rows(len(valid), eval_cfg.max_valid_users)

    def validate() -> dict[str, float]:
        res = evaluate(
            model, valid, eval_cfg, device, num_items=loo.num_items, bootstrap=False, users=users
        )
        return res.metrics

    trainable = [p for p in model.parameters() if p.requires_grad]
    # Dense mode: AdamW's decoupled weight decay would move the frozen (zero-gradient) old rows.
    wd = 0.0 if cfg.load == "dense" else cfg.train.weight_decay
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=wd)
    prepared, optimizer = acc.prepare(model, optimizer)
    start = time.perf_counter()
    result = fit(
        model,
        batches,
        validate,
        cfg.train,
        device=device,
        steps_per_epoch=steps,
        step=Step(optimizer, loss_fn=prepared, backward=acc.backward),
        resume=resume,
        callbacks=callbacks,
    )
    seconds = time.perf_counter() - start
    if acc.is_main_process:
        save_dir_atomic(model, cfg.output_dir)
    acc.wait_for_everyone()
    return {
        "best_valid": result.best_metric,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "steps": result.steps,
        "num_processes": acc.num_processes,
        "train_examples": num_rows,
        "train_target_tokens": num_targets,
        "seconds_per_epoch": result.seconds_per_epoch,
        "train_seconds": seconds,
        "train_tokens_per_second": tokens["n"] / max(seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable_parameters": sum(p.numel() for p in trainable),
    }


def run(params: dict[str, Any]) -> dict[str, Any]:
    """-> ``sidlm.output_dir`` and ``metrics/train_sidlm.json`` (main process)."""
    base = build(BaseConfig, params.get("base"), "base")
    acc = make_accelerator(build_configs(params, SECTIONS)["sidlm"], resolve_device(base.device))
    with stage_context(
        "train_sidlm",
        params,
        write_metrics=acc.is_main_process,
        device=acc.device,
        trains="sidlm.train",
        output_key="sidlm.output_dir",
        **SECTIONS,
    ) as ctx:
        data, ev, cfg = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sidlm"]
        _, loo, table = load_inputs(data, cfg.sid_dir)
        if acc.is_main_process and Path(cfg.output_dir).exists():
            # a model of earlier params must not survive a killed run and be scored as this one
            shutil.rmtree(cfg.output_dir)
        model = build_sidlm(cfg, table, data.max_history).to(ctx.device)
        resume = Path(cfg.output_dir).parent / ".resume" / f"train_sidlm.rank{acc.process_index}.pt"
        figures = train_sidlm(
            model,
            loo,
            cfg,
            data,
            ev,
            acc,
            ctx.base.seed,
            resume=Resume(resume, fingerprint=ctx.fingerprint(sid_table=table.fingerprint())),
            callbacks=ctx.callbacks,
        )
        ctx.run.record(**figures)
        if acc.is_main_process:
            ctx.record_sha256(
                read={
                    "prepared": Path(data.prepared_dir) / "dataset.npz",
                    "sids": Path(cfg.sid_dir) / "codes.npy",
                },
                wrote={"sidlm": cfg.output_dir},
            )
        return ctx.result()
