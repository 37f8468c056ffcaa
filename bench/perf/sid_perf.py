"""SID tokenizer cost: fit time on the Beauty MiniLM embeddings (rqkmeans, rqkmeans_constrained,
rqvae with default flags + its per-level utilisation) and rqkmeans scaling on synthetic
10k / 100k / 1M x 64 vectors with peak RSS.

Each case runs in a fresh subprocess so its peak RSS is its own. Wall and CPU seconds are both
reported: on a shared machine wall time includes waiting for a core. Usage::

    OMP_NUM_THREADS=1 python bench/perf/sid_perf.py --threads 1 --out experiments/perf/sid_perf.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time

import numpy as np

from sidrec_core.io import write_json
from sidrec_core.perf import provenance


def _synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """A clustered cloud (1000 centres + noise), L2-normalised like text embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    x = centres[rng.integers(1000, size=n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _case(args: dict, queue: mp.Queue) -> None:
    import torch

    from sidrec_core.sid.build import build_sids
    from sidrec_core.sid.config import SIDConfig
    from sidrec_core.sid.kmeans import set_faiss_threads

    torch.set_num_threads(args["threads"])
    set_faiss_threads(args["threads"])
    if args["data"] == "beauty":
        x = np.load(args["embeddings"])
    else:
        x = _synthetic(args["num_items"], args["dim"])
    cfg = SIDConfig(method=args["method"], collision="knn")
    wall, cpu = time.perf_counter(), time.process_time()
    if args["data"] == "beauty":  # the whole stage: fit, knn resolution, quality
        metrics = build_sids(x, cfg, seed=0).metrics
    else:  # scaling: the tokenizer fit only (resolution cost depends on the data's collisions)
        metrics = _fit_only(x, cfg)
    queue.put(
        {
            **{k: args[k] for k in ("data", "method")},
            "num_items": int(x.shape[0]),
            "dim": int(x.shape[1]),
            "fit_seconds": metrics["fit_seconds"],
            "fit_cpu_seconds": metrics["fit_cpu_seconds"],
            "stage_wall_seconds": time.perf_counter() - wall,
            "stage_cpu_seconds": time.process_time() - cpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "utilization": metrics["utilization"],
            "perplexity": metrics["perplexity"],
            "collision_rate_before": metrics["collision_rate_before"],
            "recon_mse": metrics["recon_mse"],
            "unique": metrics["unique"],
        }
    )


def _fit_only(x: np.ndarray, cfg) -> dict:
    from sidrec_core.sid.quality import collision_rate, perplexity, utilization
    from sidrec_core.sid.registry import make_tokenizer

    tok = make_tokenizer(cfg, dim=x.shape[1], seed=0)
    wall, cpu = time.perf_counter(), time.process_time()
    codes = tok.fit(x)
    return {
        "fit_seconds": time.perf_counter() - wall,
        "fit_cpu_seconds": time.process_time() - cpu,
        "utilization": utilization(codes, [cfg.codebook_size] * cfg.num_levels),
        "perplexity": perplexity(codes),
        "collision_rate_before": collision_rate(codes),
        "recon_mse": tok.reconstruction_mse(x, codes),
        "unique": False,
    }


def run(args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_case, args=(args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--embeddings", default="data/embeddings.npy")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--methods", nargs="+", default=["rqkmeans", "rqkmeans_constrained", "rqvae"]
    )
    parser.add_argument("--scales", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--out", default="experiments/perf/sid_perf.json")
    opts = parser.parse_args()
    made = provenance(opts.threads)
    common = {"threads": opts.threads, "embeddings": opts.embeddings, "dim": 64}
    scale = [
        run({**common, "data": "synthetic", "method": "rqkmeans", "num_items": n})
        for n in opts.scales
    ]
    beauty = [run({**common, "data": "beauty", "method": m}) for m in opts.methods]
    report = {
        "provenance": made,
        "beauty": beauty,
        "scale": scale,
        "targets": {
            "rqkmeans_beauty_s": 10,
            "rqkmeans_constrained_beauty_s": 180,
            "rqvae_beauty_s": 300,
            "rqvae_min_utilization": 0.9,
            "rqkmeans_1m_s": 600,
            "rqkmeans_1m_peak_rss_mb": 4096,
        },
    }
    if len(scale) > 1:
        report["scale_growth"] = [
            {
                "from": a["num_items"],
                "to": b["num_items"],
                "items_x": b["num_items"] / a["num_items"],
                "fit_seconds_x": b["fit_seconds"] / max(a["fit_seconds"], 1e-9),
            }
            for a, b in zip(scale[:-1], scale[1:], strict=True)
        ]
    write_json(opts.out, report)
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
