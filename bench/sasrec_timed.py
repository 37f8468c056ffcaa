"""SASRec trained for as many epochs as a wall-clock budget allows (run (g) of sasrec_bce.md on
a GPU): the train_sasrec stage's own pieces; the best state on the valid subsample is kept and
scored on every valid and test user when the budget is spent. With the same seed this is the
stage run with ``sasrec.train.epochs`` = the epochs it reached and ``patience`` 0.

Usage: RUN_SECONDS=420 RUN_OUT=run.json \
    python bench/sasrec_timed.py --set ... (the --set lines of the stage)"""

import copy
import json
import os
import sys
import time
from pathlib import Path

from sidrec_core.cli import main
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.models.sasrec import SASRecConfig, build_sasrec, training_batches
from sidrec_core.stages.context import stage_context
from sidrec_core.train import fit


class TimeUp(Exception):
    """The wall-clock budget is spent."""


def run(params: dict) -> dict:
    budget = float(os.environ.get("RUN_SECONDS", "400"))
    out = Path(os.environ["RUN_OUT"])
    with stage_context(
        "train_sasrec",
        params,
        output_key="sasrec.checkpoint",
        data=DataConfig,
        eval=EvalConfig,
        sasrec=SASRecConfig,
    ) as ctx:
        data, ev, cfg, device = ctx.cfg["data"], ctx.cfg["eval"], ctx.cfg["sasrec"], ctx.device
        loo = leave_one_out(load_prepared(data.prepared_dir))
        model = build_sasrec(cfg, loo).to(device)
        batches = training_batches(cfg, loo, ctx.base.seed)
        valid, test = loo.split("valid", cfg.max_history), loo.split("test", cfg.max_history)
        valid_rows = subsample_rows(len(valid), ev.max_valid_users)
        start, best, curve = time.time(), {"v": -1.0, "epoch": 0, "state": None}, []

        def validate() -> dict[str, float]:
            res = evaluate(
                model,
                valid,
                ev,
                device,
                num_items=loo.num_items,
                bootstrap=False,
                users=valid_rows,
                progress_every=1e9,
            )
            m = {k: v for k, v in res.metrics.items() if "@" in k}
            epoch = len(curve) + 1
            curve.append({"epoch": epoch, "seconds": time.time() - start, **m})
            print(
                f"epoch {epoch} valid/ndcg@10 {m['valid/ndcg@10']:.4f} "
                f"t {time.time() - start:.0f}s",
                flush=True,
            )
            if m["valid/ndcg@10"] > best["v"]:
                best.update(
                    v=m["valid/ndcg@10"],
                    epoch=epoch,
                    state=copy.deepcopy(
                        {k: t.detach().cpu() for k, t in model.state_dict().items()}
                    ),
                )
            if time.time() - start > budget:
                raise TimeUp
            return m

        print(f"{len(batches)} batches/epoch, device {device}", flush=True)
        try:
            fit(
                model,
                batches,
                validate,
                cfg.train,
                device=device,
                steps_per_epoch=len(batches),
                callbacks=ctx.callbacks,
            )
        except TimeUp:
            pass
        model.load_state_dict(best["state"])
        metrics = {}
        for split in (valid, test):
            metrics.update(
                evaluate(model, split, ev, device, num_items=loo.num_items, bootstrap=False).metrics
            )
        result = {
            "best_epoch": best["epoch"],
            "epochs": len(curve),
            "seconds": time.time() - start,
            "device": str(device),
            "metrics": {k: v for k, v in metrics.items() if "@" in k},
            "curve": curve,
        }
        out.write_text(json.dumps(result, indent=1))
        print(json.dumps({k: result["metrics"][k] for k in ("test/hr@10", "test/ndcg@10")}))
        return {}


if __name__ == "__main__":
    sys.exit(main(run, __doc__))
