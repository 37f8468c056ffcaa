"""Decoding strategy x beam width table for a trained SID LM (no retraining).

Loads the model saved by the ``train_sidlm`` stage (``sidlm.output_dir``) and scores the test
split (a seeded user subset with ``--max-users``) with the shared evaluator for every
(strategy, width): HR/NDCG@10, invalid and duplicate rates, candidates per user, users/second.
``dynamic`` widths are al_sid's base B (it returns 12B candidates for 3 levels).

Usage::

    python bench/perf/sidlm_decoding.py --params params.yaml --max-users 3000 \\
        --out experiments/perf/sidlm_decoding.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch

from sidrec_core.config import BaseConfig, apply_overrides, load_params
from sidrec_core.data.dataset import DataConfig
from sidrec_core.data.split import subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_json, write_text
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, load_inputs
from sidrec_core.perf import provenance, usage_errors
from sidrec_core.stages.context import build_configs
from sidrec_core.utils import resolve_device, set_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--strategies", nargs="+", default=["beam", "constrained", "dynamic"])
    parser.add_argument("--widths", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--max-users", type=int, default=3000, help="0 = all test users")
    parser.add_argument("--out", default="experiments/perf/sidlm_decoding.json")
    args = parser.parse_args(argv)
    sections = {"base": BaseConfig, "data": DataConfig, "eval": EvalConfig, "sidlm": SIDLMConfig}
    with usage_errors(parser):
        cfgs = build_configs(apply_overrides(load_params(args.params), args.sets), sections)
    base, data, eval_cfg, cfg = cfgs["base"], cfgs["data"], cfgs["eval"], cfgs["sidlm"]
    set_threads(base.num_threads)
    device = resolve_device(base.device)
    made = provenance(torch.get_num_threads(), str(device))  # the count in effect, not 0
    ds, loo, table = load_inputs(data, cfg.sid_dir)
    model = SIDLM.load(cfg.output_dir, table, cfg, data.max_history).to(device)
    test = loo.split("test", data.max_history)
    users = subsample_rows(len(test), args.max_users)
    eval_cfg = dataclasses.replace(eval_cfg, ks=(5, 10, 20))
    rows = []
    for strategy in args.strategies:
        for width in args.widths:
            dec = DecodingConfig(strategy=strategy, beam_width=width)
            model.decoding = dec
            start = time.perf_counter()
            res = evaluate(
                model, test, eval_cfg, device, num_items=ds.num_items, bootstrap=False, users=users
            )
            m = res.metrics
            stats = model.candidate_stats
            row = {
                "strategy": strategy,
                "beam_width": width,
                "hr@10": m["test/hr@10"],
                "ndcg@10": m["test/ndcg@10"],
                "hr@20": m["test/hr@20"],
                "ndcg@20": m["test/ndcg@20"],
                "invalid_rate": m.get("test/invalid_rate", 0.0),
                "duplicate_rate": m.get("test/duplicate_rate", 0.0),
                "candidates_per_user": stats["generated"] / max(len(res.item_ids), 1),
                "users_per_second": m["test/users_per_second"],
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    num_users = len(users) if users is not None else len(test)
    header = (
        "| strategy | W | HR@10 | NDCG@10 | invalid | duplicate | cand./user | users/s |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['strategy']} | {r['beam_width']} | {r['hr@10']:.4f} | {r['ndcg@10']:.4f} | "
        f"{r['invalid_rate']:.4f} | {r['duplicate_rate']:.4f} | "
        f"{r['candidates_per_user']:.0f} | {r['users_per_second']:.1f} |"
        for r in rows
    ]
    write_json(
        args.out,
        {
            "provenance": made,
            "dataset": ds.name,
            "model": cfg.output_dir,
            "num_users": num_users,
            "rows": rows,
        },
    )
    write_text(
        args.out.replace(".json", ".md"),
        f"Test split, {num_users} users (seed {base.seed}), model {cfg.output_dir}\n\n"
        + header
        + "\n".join(lines)
        + "\n",
    )
    print(header + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
