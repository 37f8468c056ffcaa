"""DVC stage ``train_sidlm``: train the SID language model on the training part, early-stop on
validation, save it to ``sidlm.output_dir`` (see :mod:`sidrec_core.models.sidlm_train`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sidrec_core.config import BaseConfig, build
from sidrec_core.data.dataset import DataConfig
from sidrec_core.evaluate import EvalConfig
from sidrec_core.models.sidlm import SIDLMConfig, build_sidlm
from sidrec_core.models.sidlm_train import load_inputs, make_accelerator, train_sidlm
from sidrec_core.stages.context import build_configs, stage_context
from sidrec_core.train import Resume
from sidrec_core.utils import resolve_device

SECTIONS = {"data": DataConfig, "eval": EvalConfig, "sidlm": SIDLMConfig}


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
        _, loo, table = load_inputs(data, cfg)
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
