"""RPG decoding speed and agreement: exact full-catalogue scoring vs the graph-constrained beam.

For each beam setting (width W, graph edges E, propagation steps), on the same users and the same
per-digit log-probabilities: users/second of exact scoring (top-k of the summed code log-probs of
every item) and of the graph beam (the graph built once, its seconds reported apart), and the
beam's recall@k against exact scoring (share of the exact top-k the beam returns in its top-k;
1.0 = the beam misses nothing). Both decoders run batch by batch, interleaved, so load changes on
a shared CPU hit them alike; timings include the transformer forward.

Model: the trained RPG at ``rpg.checkpoint`` when it exists (with the table at
``rpg.sid.output_dir``), else a seeded random-weight RPG of the ``rpg`` sizes over that table, or
over a random unique table of ``--num-items`` items when there is none (speed does not depend on
the weights; recall against exact does, so a random model's recall is no quality figure).
Users: the test histories of ``data.prepared_dir`` when their catalogue matches, else random.
With ``--sidlm-width W`` and a trained RPG, the trained SID LM's constrained beam of width W is
timed on the same test users (the pipeline's generative decoder, for the users/s comparison).

Usage (one thread on a shared CPU)::

    OMP_NUM_THREADS=1 python bench/perf/rpg_decoding.py --max-users 1000 --sidlm-width 20 \\
        --out experiments/perf/rpg_decoding.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sidrec_core.config import BaseConfig, apply_overrides, load_params
from sidrec_core.data.dataset import DataConfig, load_prepared
from sidrec_core.data.split import leave_one_out, subsample_rows
from sidrec_core.evaluate import EvalConfig, evaluate
from sidrec_core.io import write_json
from sidrec_core.models.beam import DecodingConfig
from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, load_inputs
from sidrec_core.perf import provenance, usage_errors
from sidrec_core.rpg.decoding import GraphDecodingConfig
from sidrec_core.rpg.model import RPG, RPGConfig
from sidrec_core.stages.context import build_configs
from sidrec_core.utils import set_threads


def load_codes(cfg: RPGConfig, num_items: int, seed: int) -> tuple[np.ndarray, str]:
    """[N + 1, M] codes (row 0 = padding) and where they came from."""
    path = Path(cfg.sid.output_dir) / "codes.npy"
    if path.exists():
        return np.load(path), str(path)
    m, k = cfg.sid.num_codebooks, cfg.sid.codebook_size
    rng = np.random.default_rng(seed)
    body = rng.integers(0, k, size=(num_items, m))  # unique with near certainty at M >= 4
    return np.concatenate([np.full((1, m), -1), body]), f"random {m} x {k} table, {num_items} items"


def load_histories(data: DataConfig, num_items: int, users: int, seed: int, max_len: int):
    """-> (histories [U, max_len], where they came from, their test-split rows or None)."""
    prepared = Path(data.prepared_dir)
    if (prepared / "dataset.npz").exists():
        ds = load_prepared(prepared)
        if ds.num_items == num_items:
            split = leave_one_out(ds).split("test", max_len)
            rows = subsample_rows(len(split), users, seed)
            hist = split.histories if rows is None else split.histories[rows]
            rows = np.arange(len(split)) if rows is None else rows
            return torch.as_tensor(hist), f"{prepared} test split", rows
    rng = np.random.default_rng(seed)
    hist = np.zeros((users, max_len), dtype=np.int64)
    for row in hist:
        n = rng.integers(3, max_len + 1)
        row[max_len - n :] = rng.integers(1, num_items + 1, size=n)
    return torch.as_tensor(hist), "random histories", None


def sidlm_beam(params: dict, rows: np.ndarray, width: int) -> dict:
    """The trained SID LM's constrained beam of ``width`` on the same test users: users/s (its
    generation included, the evaluator's batches) and HR/NDCG@10."""
    cfgs = build_configs(params, {"data": DataConfig, "eval": EvalConfig, "sidlm": SIDLMConfig})
    data, ev, cfg = cfgs["data"], cfgs["eval"], cfgs["sidlm"]
    ds, loo, table = load_inputs(data, cfg.sid_dir)
    model = SIDLM.load(cfg.output_dir, table, cfg, data.max_history)
    model.decoding = DecodingConfig(strategy="constrained", beam_width=width)
    test = loo.split("test", data.max_history)
    ev = dataclasses.replace(ev, ks=(10,))
    device = torch.device("cpu")
    res = evaluate(model, test, ev, device, num_items=ds.num_items, bootstrap=False, users=rows)
    m = res.metrics
    return {
        "model": cfg.output_dir,
        "strategy": "constrained",
        "beam_width": width,
        "users_per_second": m["test/users_per_second"],
        "hr@10": m["test/hr@10"],
        "ndcg@10": m["test/ndcg@10"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--widths", type=int, nargs="+", default=[20, 50])
    parser.add_argument("--edges", type=int, nargs="+", default=[200])
    parser.add_argument("--steps", type=int, nargs="+", default=[3])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-items", type=int, default=12101, help="random table size")
    parser.add_argument(
        "--sidlm-width",
        type=int,
        default=0,
        help="also time the trained SID LM's constrained beam of this width on the same users",
    )
    parser.add_argument("--out", default="experiments/perf/rpg_decoding.json")
    args = parser.parse_args(argv)
    with usage_errors(parser):
        params = apply_overrides(load_params(args.params), args.sets)
        cfgs = build_configs(params, {"base": BaseConfig, "data": DataConfig, "rpg": RPGConfig})
    base, data, cfg = cfgs["base"], cfgs["data"], cfgs["rpg"]
    set_threads(base.num_threads)
    made = provenance(torch.get_num_threads())
    codes, codes_from = load_codes(cfg, args.num_items, base.seed)
    num_items = len(codes) - 1
    torch.manual_seed(base.seed)
    trained = Path(cfg.checkpoint).exists() and codes_from.endswith("codes.npy")
    if trained:
        model = RPG.load(cfg, torch.as_tensor(codes))
    else:
        model = RPG(cfg, torch.as_tensor(codes), cfg.sid.codebook_size).eval()
    history, users_from, test_rows = load_histories(
        data, num_items, args.max_users, base.seed, cfg.max_history
    )
    rows = []
    for width in args.widths:
        for edges in args.edges:
            for steps in args.steps:
                dec = GraphDecodingConfig(
                    strategy="graph", beam_width=width, num_edges=edges, propagation_steps=steps
                )
                model.decoding = dec
                start = time.perf_counter()
                model.graph()
                graph_seconds = time.perf_counter() - start
                exact_s = beam_s = 0.0
                hits = same = 0
                for i in range(0, len(history), args.batch_size):
                    batch = {"history": history[i : i + args.batch_size]}
                    model.decoding = dataclasses.replace(dec, strategy="exact")
                    t = time.perf_counter()
                    exact_ids, _ = model.recommend(batch, args.k)
                    exact_s += time.perf_counter() - t
                    model.decoding = dataclasses.replace(dec, seed=base.seed + i)
                    t = time.perf_counter()
                    beam_ids, _ = model.recommend(batch, args.k)
                    beam_s += time.perf_counter() - t
                    match = (beam_ids[:, :, None] == exact_ids[:, None, :]).any(-1)
                    hits += int(match.sum())
                    same += int((beam_ids == exact_ids).all(1).sum())
                n = len(history)
                row = {
                    "beam_width": width,
                    "num_edges": edges,
                    "propagation_steps": steps,
                    "graph_seconds": graph_seconds,
                    "exact_users_per_second": n / exact_s,
                    "graph_users_per_second": n / beam_s,
                    f"recall@{args.k}_vs_exact": hits / (n * args.k),
                    f"same_top{args.k}": same / n,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    against = {}
    if args.sidlm_width and trained and test_rows is not None:
        against = {"sidlm": sidlm_beam(params, test_rows, args.sidlm_width)}
        print(json.dumps(against), flush=True)
    write_json(
        args.out,
        {
            **against,
            "provenance": made,
            "model": cfg.checkpoint if trained else "random weights (seeded)",
            "codes": codes_from,
            "users": users_from,
            "num_users": len(history),
            "num_items": num_items,
            "num_codebooks": int(codes.shape[1]),
            "hidden_dim": cfg.hidden_dim,
            "k": args.k,
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
