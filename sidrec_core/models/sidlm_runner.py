"""One entry point for the SID language model: train, evaluate, predict (``do_*`` switches).

Data parallelism and mixed precision come from Hugging Face accelerate: every process streams its
own shard of the examples file, gradients are synced through the prepared model's ``forward``
(which is the loss), bf16 autocast is on for accelerators. Launch with ``accelerate launch
bench/train_sidlm.py`` for several processes; a plain ``python`` run is one process. Validation
during training runs the same users on every process, so early-stopping decisions agree.

Prediction writes one JSONL shard per process, ``part-<rank>-of-<world>.jsonl``, atomically
(temp file + rename): an interrupted run leaves complete shards or none, never a truncated one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from transformers.utils import logging as hf_logging

from sidrec_core.config import BaseConfig, build, to_dict
from sidrec_core.data.dataset import DataConfig, Dataset, load_prepared
from sidrec_core.data.sid_examples import (
    JsonlExamples,
    collate,
    length_grouped,
    split_rows,
    training_rows,
    write_rows,
)
from sidrec_core.data.split import LeaveOneOut, leave_one_out
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_jsonl
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_sidlm
from sidrec_core.sid.table import SIDTable
from sidrec_core.tracking import start_run
from sidrec_core.train import fit
from sidrec_core.utils import resolve_device, seed_everything, set_threads

log = logging.getLogger(__name__)
hf_logging.disable_progress_bar()  # per-file load/save bars flood the stage logs
EVAL_KEYS = ("invalid_rate", "duplicate_rate", "users_per_second")


@dataclasses.dataclass(frozen=True)
class SIDLMSetup:
    """What every SID-LM entry point builds first: configs, device, split and SID table."""

    base: BaseConfig
    data: DataConfig
    eval: EvalConfig
    cfg: SIDLMConfig
    device: torch.device
    ds: Dataset
    loo: LeaveOneOut
    table: SIDTable

    def load_model(self) -> SIDLM:
        """The trained model saved at ``sidlm.output_dir``, on the resolved device."""
        return SIDLM.load(self.cfg.output_dir, self.table, self.cfg, self.data.max_history).to(
            self.device
        )


def setup(params: dict[str, Any]) -> SIDLMSetup:
    """Build the configs from ``params``, seed, set threads, resolve the device, load the split."""
    base = build(BaseConfig, params.get("base"), "base")
    data = build(DataConfig, params.get("data"), "data")
    cfg = build(SIDLMConfig, params.get("sidlm"), "sidlm")
    seed_everything(base.seed)
    set_threads(base.num_threads)
    ds = load_prepared(data.prepared_dir)
    return SIDLMSetup(
        base=base,
        data=data,
        eval=build(EvalConfig, params.get("eval"), "eval"),
        cfg=cfg,
        device=resolve_device(base.device),
        ds=ds,
        loo=leave_one_out(ds),
        table=SIDTable.load(cfg.sid_dir, num_items=ds.num_items),
    )


def make_accelerator(cfg: SIDLMConfig, device: torch.device) -> Accelerator:
    """Accelerator on the resolved device; ``mixed_precision=auto`` is bf16 on accelerators only
    (CPU bf16 matmuls are slower than fp32 on most machines)."""
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "no" if device.type == "cpu" else "bf16"
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mp)


def save_dir_atomic(model: SIDLM, directory: str | Path) -> None:
    """Save into a temp folder beside ``directory`` and swap it in, so a crash never leaves a
    half-written model folder."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is a shared artifact
    try:
        model.save(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _train(
    model: SIDLM,
    loo: Any,
    cfg: SIDLMConfig,
    data: DataConfig,
    eval_cfg: EvalConfig,
    acc: Accelerator,
    device: torch.device,
    seed: int,
    run: Any,
) -> dict[str, Any]:
    examples = (
        Path(cfg.output_dir).with_name(Path(cfg.output_dir).name + "_examples") / "train.jsonl"
    )
    if acc.is_main_process:
        write_rows(examples, training_rows(loo, cfg.task, data.max_history))
    acc.wait_for_everyone()
    num_rows = sum(1 for _ in examples.open())
    stream = JsonlExamples(
        examples,
        model.encoder,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=seed,
        rank=acc.process_index,
        world_size=acc.num_processes,
    )
    side = "left" if cfg.task == "sft" else "right"
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
        for i, group in enumerate(groups):
            batch = collate(group, model.pad_id, side)
            tokens["n"] += int(batch["attention_mask"].sum())
            if i % 20 == 0:
                log.info(
                    "epoch %d batch %d/%d, %.0f tokens/s",
                    epoch,
                    i,
                    steps,
                    tokens["n"] / max(time.perf_counter() - start, 1e-9),
                )
            yield batch

    valid = loo.split("valid", data.max_history)
    users, cap = None, cfg.max_valid_users or eval_cfg.max_valid_users
    if cap and cap < len(valid):
        users = np.sort(np.random.default_rng(seed).choice(len(valid), cap, replace=False))

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
        run=run,
        steps_per_epoch=steps,
        optimizer=optimizer,
        loss_fn=prepared,
        backward=acc.backward,
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
        "train_examples": num_rows,
        "seconds_per_epoch": result.seconds_per_epoch,
        "train_seconds": seconds,
        "train_tokens_per_second": tokens["n"] / max(seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "num_trainable_parameters": sum(p.numel() for p in trainable),
    }


def _chunks(rows: Any, size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict(
    model: SIDLM, rows: list[dict[str, Any]], k: int, batch_size: int, device: torch.device
) -> list[dict[str, Any]]:
    """Rows (any fields, with ``history``) -> the same rows plus ``candidates`` and ``scores``."""
    out = []
    model.eval()
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(1, max(len(r["history"]) for r in chunk))
        hist = torch.zeros(len(chunk), width, dtype=torch.long)
        for j, r in enumerate(chunk):
            if r["history"]:
                hist[j, width - len(r["history"]) :] = torch.as_tensor(r["history"])
        ids, scores = model.recommend({"history": hist.to(device)}, k)
        for r, row_ids, row_scores in zip(
            chunk, ids.cpu().tolist(), scores.float().cpu().tolist(), strict=True
        ):
            keep = [j for j, item in enumerate(row_ids) if item > 0]
            out.append(
                {
                    **r,
                    "candidates": [row_ids[j] for j in keep],
                    "scores": [row_scores[j] for j in keep],
                }
            )
    return out


def write_prediction_shard(
    directory: str | Path, rows: list[dict[str, Any]], rank: int, world_size: int
) -> Path:
    """One atomic JSONL shard per process."""
    path = Path(directory) / f"part-{rank:05d}-of-{world_size:05d}.jsonl"
    write_jsonl(path, rows)
    return path


def run_sidlm(
    params: dict[str, Any], *, do_train: bool, do_eval: bool, do_predict: bool, stage: str
) -> dict[str, Any]:
    """Train and/or evaluate and/or predict with the SID LM; returns the flat metrics."""
    s = setup(params)
    base, data, eval_cfg, cfg, ds, loo, table = s.base, s.data, s.eval, s.cfg, s.ds, s.loo, s.table
    acc = make_accelerator(cfg, s.device)
    device = acc.device
    configs = {
        "base": to_dict(base),
        "data": to_dict(data),
        "eval": to_dict(eval_cfg),
        "sidlm": to_dict(cfg),
    }
    with start_run(
        stage,
        configs,
        dataset=ds.name,
        profile=base.profile,
        device=device,
        metrics_dir=base.metrics_dir if acc.is_main_process else None,
    ) as run:
        if do_train:
            model = build_sidlm(cfg, table, data.max_history).to(device)
            run.record(**_train(model, loo, cfg, data, eval_cfg, acc, device, base.seed, run))
        if do_eval or do_predict:
            model = SIDLM.load(cfg.output_dir, table, cfg, data.max_history).to(device)
        if do_eval and acc.is_main_process:
            res = evaluate(
                model,
                loo.split("test", data.max_history),
                eval_cfg,
                device,
                num_items=ds.num_items,
                bootstrap=eval_cfg.bootstrap > 0,
            )
            run.log_metrics(res.metrics)
            run.record(
                **{
                    key: res.metrics[f"test/{key}"]
                    for key in EVAL_KEYS
                    if f"test/{key}" in res.metrics
                }
            )
        if do_predict:
            rows = [
                r
                for i, r in enumerate(split_rows(loo, cfg.predict_split, data.max_history))
                if i % acc.num_processes == acc.process_index
            ]
            start = time.perf_counter()
            out = predict(model, rows, max(eval_cfg.ks), eval_cfg.batch_size, device)
            path = write_prediction_shard(
                cfg.predictions_dir, out, acc.process_index, acc.num_processes
            )
            run.record(predict_users=len(out), predict_seconds=time.perf_counter() - start)
            log.info("wrote %d predictions -> %s", len(out), path)
        acc.wait_for_everyone()
        return dict(run.metrics, **run.extra)


def run_train_sidlm(params: dict[str, Any]) -> dict[str, Any]:
    """DVC stage ``train_sidlm``: train on the training part, early-stop on validation, save."""
    return run_sidlm(params, do_train=True, do_eval=False, do_predict=False, stage="train_sidlm")


def run_eval_sidlm(params: dict[str, Any]) -> dict[str, Any]:
    """DVC stage ``eval_sidlm``: test metrics of the saved model and per-user predictions."""
    return run_sidlm(params, do_train=False, do_eval=True, do_predict=True, stage="eval_sidlm")
