"""Peak memory and step time of one SFT training step with vs without LM-head slicing.

SFT batches are left-padded, so every answer (M SID tokens + end) sits in the last columns and
slicing computes logits for about M + 1 positions instead of the whole prompt. The gain grows
with history length and vocabulary size, so the benchmark runs histories 20 and 50 with the
SID-only vocabulary of a scratch model and with a vocabulary the size of a pretrained base
(``--base-vocab``, extra rows standing in for the base model's text tokens).

Each configuration runs in a fresh subprocess so peak RSS (CPU) is its own; on CUDA the peak is
``max_memory_allocated``. Usage::

    python bench/perf/lm_head_perf.py --out experiments/perf/lm_head_perf.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time

import numpy as np
import torch

from sidrec_core.io import write_json
from sidrec_core.perf import provenance


def _one(args: dict, queue: mp.Queue) -> None:
    from sidrec_core.data.sid_examples import collate
    from sidrec_core.models.sid_vocab import SIDVocab
    from sidrec_core.models.sidlm import SIDLM, SIDLMConfig, build_lm
    from sidrec_core.sid.table import SIDTable

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    sizes = (256, 256, 256)
    n = args["num_items"]
    i = np.arange(n)
    # unique SIDs for n <= 256**2: levels 1-2 enumerate the item, level 0 is random
    codes = np.stack([rng.permutation(n) % 256, (i // 256) % 256, i % 256], 1)
    table = SIDTable(np.vstack([-np.ones((1, 3), np.int64), codes]), sizes)
    vocab = SIDVocab.build(sizes)
    device = torch.device(args["device"])
    cfg = SIDLMConfig(
        task="sft",
        hidden_size=args["hidden"],
        num_layers=args["layers"],
        num_heads=4,
        num_kv_heads=4,
        intermediate_size=3 * args["hidden"],
        lm_head_slicing=args["slicing"],
    )
    lm = build_lm(cfg, vocab)
    if args["base_vocab"]:
        lm.resize_token_embeddings(len(vocab) + args["base_vocab"], mean_resizing=False)
    model = SIDLM(lm, vocab, table, cfg, args["history"]).to(device)
    rows = [
        {
            "history": rng.integers(1, n + 1, args["history"]).tolist(),
            "target": int(rng.integers(1, n + 1)),
        }
        for _ in range(args["batch_size"])
    ]
    batch = collate([model.encoder.train_example(r) for r in rows], model.pad_id, "left")
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = model.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss)

    step()  # warm-up: allocator, optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for _ in range(args["steps"]):
        start = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    queue.put(
        {
            **args,
            "seq_len": int(batch["input_ids"].shape[1]),
            "loss": loss,
            "step_seconds_median": float(np.median(times)),
            "peak_mb": peak,
            "peak_rss_before_timed_steps_mb": base_rss,
            "vocab_size": len(vocab) + args["base_vocab"],
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[20, 50])
    parser.add_argument(
        "--base-vocab",
        type=int,
        nargs="+",
        default=[0, 32000],
        help="extra vocabulary rows standing in for a pretrained base's tokens",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--num-items", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="experiments/perf/lm_head_perf.json")
    args = parser.parse_args(argv)
    made = provenance(args.threads, args.device)
    ctx = mp.get_context("spawn")
    results = []
    for history in args.histories:
        for base_vocab in args.base_vocab:
            for slicing in (False, True):
                cfg = {
                    "history": history,
                    "base_vocab": base_vocab,
                    "slicing": slicing,
                    "batch_size": args.batch_size,
                    "hidden": args.hidden,
                    "layers": args.layers,
                    "num_items": args.num_items,
                    "steps": args.steps,
                    "threads": args.threads,
                    "device": args.device,
                }
                queue = ctx.Queue()
                proc = ctx.Process(target=_one, args=(cfg, queue))
                proc.start()
                res = queue.get()
                proc.join()
                results.append(res)
                print(
                    json.dumps(
                        {
                            k: res[k]
                            for k in (
                                "history",
                                "vocab_size",
                                "slicing",
                                "seq_len",
                                "step_seconds_median",
                                "peak_mb",
                            )
                        }
                    ),
                    flush=True,
                )
    pairs = []
    for off, on in zip(results[::2], results[1::2], strict=True):
        pairs.append(
            {
                "history": off["history"],
                "vocab_size": off["vocab_size"],
                "speedup": off["step_seconds_median"] / on["step_seconds_median"],
                "peak_mb_full": off["peak_mb"],
                "peak_mb_sliced": on["peak_mb"],
                "loss_full": off["loss"],
                "loss_sliced": on["loss"],
            }
        )
    write_json(
        args.out,
        {
            "provenance": made,
            "results": results,
            "summary": pairs,
            "note": "CPU peak = process max RSS",
        },
    )
    print(json.dumps(pairs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
