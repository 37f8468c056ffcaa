"""DVC stage ``eval_etegrec``: ``eval_sidlm``'s evaluation (fixed validation subsample, every
test user, the ``decoding`` section, predictions) of the SID LM and table ``train_etegrec``
wrote (``etegrec.output_dir``, ``etegrec.sid_dir``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.etegrec.config import ETEGRecConfig
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_jsonl
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig
from sidrec_core.sid.table import SIDTable
from sidrec_core.stages.context import stage_context
from sidrec_core.stages.eval_sidlm import (
    EVAL_KEYS,
    PREDICTIONS_FILE,
    prediction_rows,
    reportable_ks,
)


def run(params: dict[str, Any]) -> dict[str, Any]:
    """Score the ETEGRec SID LM on valid (subsample) and test (every user)."""
    with stage_context(
        "eval_etegrec",
        params,
        data=DataConfig,
        eval=EvalConfig,
        sidlm=SIDLMConfig,
        decoding=DecodingConfig,
        etegrec=ETEGRecConfig,
    ) as ctx:
        data, ev, cfg = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["etegrec"]
        lm_cfg = dataclasses.replace(ctx.cfg["sidlm"], sid_dir=cfg.sid_dir)
        ds = load_prepared(data.prepared_dir)
        loo = leave_one_out(ds)
        table = SIDTable.load(cfg.sid_dir, num_items=ds.num_items)
        model = SIDLM.load(cfg.output_dir, table, lm_cfg, data.max_history).to(ctx.device)
        model.decoding = ctx.cfg["decoding"]
        ev = dataclasses.replace(ev, ks=reportable_ks(ev.ks, model.num_candidates()))
        valid = loo.split("valid", data.max_history)
        users = subsample_rows(len(valid), ev.max_valid_users)
        res_valid = evaluate(
            model, valid, ev, ctx.device, num_items=ds.num_items, bootstrap=False, users=users
        )
        test = loo.split("test", data.max_history)
        res_test = evaluate(
            model, test, ev, ctx.device, num_items=ds.num_items, bootstrap=ev.bootstrap > 0
        )
        ctx.run.log_metrics({**res_valid.metrics, **res_test.metrics})
        write_jsonl(
            Path(cfg.predictions_dir) / PREDICTIONS_FILE,
            prediction_rows(test, res_test, ds.user_ids),
        )
        ctx.run.record(
            valid_users=len(users) if users is not None else len(valid),
            test_users=len(test),
            candidates_per_user=model.num_candidates(),
            **{"test/ranks": res_test.ranks_record()},
            **{
                k: res_test.metrics[f"test/{k}"]
                for k in EVAL_KEYS
                if f"test/{k}" in res_test.metrics
            },
        )
        return ctx.result()
