"""SID quality table on one dataset: method x technique flags -> every SID quality metric.

Each row fits one tokenizer (seed ``--seed``) on ``sid.embeddings`` and resolves collisions
with every mode (suffix / knn / random, max_per_bucket 1) from the same raw codes. Rows are
appended to ``<out>.jsonl`` as they finish; the markdown table is rewritten after each row.
Usage::

    OMP_NUM_THREADS=1 python bench/sid_quality.py --epochs 30 --out experiments/sid_quality
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from sidrec_core.config import apply_overrides, build
from sidrec_core.data.dataset import load_prepared
from sidrec_core.data.embeddings import load_embeddings
from sidrec_core.data.split import leave_one_out
from sidrec_core.io import write_jsonl, write_text
from sidrec_core.sid.build import build_sids
from sidrec_core.sid.collisions import resolve
from sidrec_core.sid.config import SIDConfig
from sidrec_core.sid.kmeans import set_faiss_threads
from sidrec_core.sid.quality import collision_rate, max_bucket

# overrides as dotted keys of the sid section (as ``--set sid.<key>=...`` would give them)
ROWS: list[tuple[str, dict]] = [
    ("rqkmeans (default)", {"method": "rqkmeans"}),
    ("rqkmeans -normalize_residuals", {"method": "rqkmeans", "normalize_residuals": False}),
    ("rqkmeans_constrained", {"method": "rqkmeans_constrained"}),
    ("rqvae (ema+restart+kmeans_init)", {"method": "rqvae"}),
    ("rqvae -ema (gradient codebook)", {"method": "rqvae", "rqvae.quantizer.ema": False}),
    ("rqvae -restart_unused", {"method": "rqvae", "rqvae.quantizer.restart_unused": False}),
    ("rqvae -kmeans_init", {"method": "rqvae", "rqvae.quantizer.kmeans_init": False}),
    ("rqvae +sinkhorn", {"method": "rqvae", "rqvae.quantizer.sinkhorn": True}),
    ("rqvae +clip", {"method": "rqvae", "rqvae.clip": True}),
    ("rqkmeans_plus", {"method": "rqkmeans_plus"}),
]


def _fmt(v: object) -> str:
    if isinstance(v, list):
        return "/".join(_fmt(x) for x in v)
    if isinstance(v, float):
        if 0 < abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict]) -> str:
    cols = [
        "row",
        "utilization",
        "perplexity",
        "distinct_prefixes",
        "collision_rate_before",
        "collision_rate_after",
        "max_bucket",
        "gini",
        "recon_mse",
        "fit_seconds",
        "fit_cpu_seconds",
    ]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        after = "/".join(f"{r['after'][m]['collision_rate']:.3f}" for m in r["after"])
        cells = [_fmt(r[c]) if c != "collision_rate_after" else after for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embeddings", default="data/embeddings.npy")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--epochs", type=int, default=30, help="RQ-VAE / RQ-KMeans+ epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--out", default="experiments/sid_quality")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    set_faiss_threads(opts.threads)
    ds = load_prepared(opts.prepared)
    x = load_embeddings(opts.embeddings, ds.num_items)
    train_sequences = leave_one_out(ds).train_sequences
    rows: list[dict] = []
    for label, overrides in ROWS:
        if opts.only and label not in opts.only:
            continue
        learned = overrides["method"] in ("rqvae", "rqkmeans_plus")
        sets = {**overrides, **({"rqvae.epochs": opts.epochs} if learned else {})}
        params = apply_overrides({}, [f"sid.{k}={json.dumps(v)}" for k, v in sets.items()])
        cfg = build(SIDConfig, params["sid"], "sid")
        start = time.perf_counter()
        _, tok, metrics, raw = build_sids(x, cfg, seed=opts.seed, train_sequences=train_sequences)
        dist = tok.last_level_distances(x, raw)
        after = {}
        for mode in ("suffix", "knn", "random"):
            final = resolve(raw, mode, cfg.codebook_size, 1, distances=dist, seed=opts.seed)
            after[mode] = {
                "collision_rate": collision_rate(final),
                "max_bucket": max_bucket(final),
                "num_levels": int(final.shape[1]),
            }
        row = {
            "row": label,
            "overrides": overrides,
            "config": dataclasses.asdict(cfg),
            **{k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)},
            "after": after,
            "row_seconds": time.perf_counter() - start,
        }
        rows.append(row)
        print(
            json.dumps(
                {k: row[k] for k in ("row", "collision_rate_before", "utilization", "fit_seconds")}
            ),
            flush=True,
        )
        write_jsonl(f"{opts.out}.jsonl", rows)
        write_text(Path(f"{opts.out}.md"), _header(opts) + markdown(rows))


def _header(opts: argparse.Namespace) -> str:
    return (
        "# SID quality on Beauty (3 x 256, seed "
        f"{opts.seed}; RQ-VAE/RQ-KMeans+ trained {opts.epochs} epochs)\n\n"
        "Lists are per level. collision_rate_after = suffix/knn/random (max_per_bucket 1). "
        "Wall seconds were taken on a shared 2-core machine; fit_cpu_seconds is the CPU time.\n\n"
        f"Command: `OMP_NUM_THREADS=1 python bench/sid_quality.py --epochs {opts.epochs}`\n\n"
    )


if __name__ == "__main__":
    main()
