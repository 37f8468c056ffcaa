"""DVC stage ``train_sidlm``: train the SID language model on the training part, early-stop on
validation, save it to ``sidlm.output_dir`` (see :mod:`sidrec_core.models.sidlm_train`)."""

from __future__ import annotations

from typing import Any

from sidrec_core.config import BaseConfig, build
from sidrec_core.data.dataset import DataConfig
from sidrec_core.evaluate import EvalConfig
from sidrec_core.models.sidlm import SIDLMConfig, build_sidlm
from sidrec_core.models.sidlm_train import load_inputs, make_accelerator, train_sidlm
from sidrec_core.stages.context import build_configs, stage_context
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
        **SECTIONS,
    ) as ctx:
        data, ev, cfg = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sidlm"]
        _, loo, table = load_inputs(data, cfg)
        model = build_sidlm(cfg, table, data.max_history).to(ctx.device)
        ctx.run.record(**train_sidlm(model, loo, cfg, data, ev, acc, ctx.base.seed, ctx.run))
        return ctx.result()
