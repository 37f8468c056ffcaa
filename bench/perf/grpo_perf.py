"""GRPO speed: users/second of GRPO training at G = 16, and shared-prompt vs per-completion scoring.

Model: a scratch SID LM the size of the ``sidlm`` defaults in params.yaml (Qwen2, hidden 128, 4
layers, 4 heads, FFN 384) with RANDOM weights (seeded): speed does not depend on the weights.
SID table: ``--sid-dir`` (the ``build_sids`` output, Beauty 3 x 256 by default) if present, else
a random unique 3 x 256 table over 12,101 items; prompts: one random training cut per user of
``--prepared`` (``data/prepared``) if present, else random histories. The JSON says which.

Measured, one thread, interleaved batch by batch so load changes on a shared CPU hit both alike:

- ``grpo``: full GRPO steps (rollout, rewards, reference + policy log-probs, backward, AdamW) for
  each sampler, ``--users-per-step`` users per step -> users/second;
- ``scoring``: on the same rollouts, the policy log-probs of all G completions with one prompt
  pass per user (:func:`~sidrec_core.rl.logprobs.group_log_probs`) against scoring each
  completion as its own sequence (``per_completion_log_probs``), forward + backward, and their
  largest log-prob difference.

Usage::

    OMP_NUM_THREADS=1 python bench/perf/grpo_perf.py --out experiments/perf/grpo_perf.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from sidrec_core.io import write_json
from sidrec_core.models.sidlm import SIDLMConfig, build_sidlm
from sidrec_core.perf import provenance
from sidrec_core.rl.grpo import GRPO, RewardInputs, RLConfig
from sidrec_core.rl.logprobs import group_log_probs, per_completion_log_probs
from sidrec_core.rl.rollout import history_tensor, rl_rows, rollout
from sidrec_core.sid.table import SIDTable

MODEL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384}


def load_table(sid_dir: Path, num_items: int, seed: int) -> tuple[SIDTable, str]:
    if (sid_dir / "codes.npy").exists():
        return SIDTable.load(sid_dir), f"{sid_dir} (build_sids output)"
    rng = np.random.default_rng(seed)
    flat = rng.choice(256**3, size=num_items, replace=False)
    codes = np.stack([flat // 65536, flat // 256 % 256, flat % 256], 1)
    codes = np.vstack([-np.ones((1, 3), np.int64), codes])
    return SIDTable(codes, (256, 256, 256)), f"random unique 3x256 table over {num_items} items"


def load_rows(prepared: Path, num_items: int, max_history: int, users: int, seed: int):
    rng = np.random.default_rng(seed)
    if (prepared / "dataset.npz").exists():
        from sidrec_core.data.dataset import load_prepared
        from sidrec_core.data.split import leave_one_out

        ds = load_prepared(prepared)
        if ds.num_items == num_items:
            rows = rl_rows(leave_one_out(ds).train_sequences, max_history, rng, users)
            return rows, (
                f"{ds.name} ({prepared}): one random training cut per user, "
                f"last {max_history} items"
            )
    rows = [
        (rng.integers(1, num_items + 1, size=rng.integers(3, max_history + 1)).tolist(), 1)
        for _ in range(users)
    ]
    return rows, "random histories (prepared data missing or of another size)"


def timed_score(fn, lm, ids, mask, tokens, codes) -> tuple[torch.Tensor, float]:
    """Log-probs of every completion, forward + backward -> (log-probs [B, G, M], seconds)."""
    start = time.perf_counter()
    lm.zero_grad(set_to_none=True)
    logp = fn(lm, ids, mask, tokens, codes)
    logp.sum().backward()
    return logp.detach(), time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="experiments/perf/grpo_perf.json")
    ap.add_argument("--sid-dir", default="data/sids")
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--num-items", type=int, default=12101)
    ap.add_argument("--max-history", type=int, default=20)
    ap.add_argument("--num-generations", type=int, default=16)
    ap.add_argument("--users-per-step", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed GRPO steps per sampler")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    made = provenance(args.threads)

    table, table_src = load_table(Path(args.sid_dir), args.num_items, args.seed)
    cfg = SIDLMConfig(**MODEL)
    bs, g = args.users_per_step, args.num_generations
    rows, rows_src = load_rows(
        Path(args.prepared), table.num_items, args.max_history, bs * (args.steps + 1), args.seed
    )
    batches = [rows[i : i + bs] for i in range(0, len(rows), bs)]
    samplers = ("beam", "sampling")
    models, trainers = {}, {}
    for sampler in samplers:
        torch.manual_seed(args.seed)
        models[sampler] = build_sidlm(cfg, table, args.max_history)
        rl = RLConfig(num_generations=g, sampler=sampler)
        trainers[sampler] = GRPO(models[sampler], rl, RewardInputs(), args.steps + 1, args.seed)
    grpo_seconds = dict.fromkeys(samplers, 0.0)
    scoring = {"shared_prompt": 0.0, "per_completion": 0.0}
    max_diff, prompt_tokens = 0.0, []
    model = models["beam"]
    tokens = model.level_token_ids
    for i, batch in enumerate(batches):
        hist, targets = [h for h, _ in batch], [t for _, t in batch]
        timed = i > 0  # the first batch warms up allocators and thread pools
        for sampler in samplers:
            start = time.perf_counter()
            trainers[sampler].step(hist, targets)
            grpo_seconds[sampler] += time.perf_counter() - start if timed else 0.0
        prompt = model.prompts(history_tensor(hist))
        ids, mask = prompt["input_ids"], prompt["attention_mask"]
        prompt_tokens.append(float(mask.sum(1).float().mean()))
        codes = rollout(model, ids, mask, trainers["beam"].cfg).codes
        values = {}
        for name, fn in (
            ("shared_prompt", group_log_probs),
            ("per_completion", per_completion_log_probs),
        ):
            values[name], sec = timed_score(fn, model.lm, ids, mask, tokens, codes)
            scoring[name] += sec if timed else 0.0
        diff = (values["shared_prompt"] - values["per_completion"]).abs().max()
        max_diff = max(max_diff, float(diff))
    users = bs * (len(batches) - 1)
    result = {
        "provenance": made,
        "model": "scratch Qwen2 hidden 128, 4 layers, 4 heads, FFN 384, random weights (seeded)",
        "sid_table": table_src,
        "num_items": table.num_items,
        "codebook_sizes": list(table.codebook_sizes),
        "prompts": rows_src,
        "mean_prompt_tokens": float(np.mean(prompt_tokens)),
        "num_generations": g,
        "users_per_step": bs,
        "timed_users": users,
        "grpo_users_per_second": {s: users / grpo_seconds[s] for s in samplers},
        "grpo_seconds_per_step": {s: grpo_seconds[s] / (len(batches) - 1) for s in samplers},
        "scoring_seconds_per_step": {k: v / (len(batches) - 1) for k, v in scoring.items()},
        "shared_prompt_speedup": scoring["per_completion"] / scoring["shared_prompt"],
        "max_abs_logprob_diff": max_diff,
        "grpo_settings": "beta 1e-3 (reference forward each step), 1 iteration, rule+ndcg_rule",
    }
    write_json(Path(args.out), result)
    print(result)


if __name__ == "__main__":
    main()
