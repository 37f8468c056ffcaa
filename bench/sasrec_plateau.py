"""How long ``bce_shared`` idles before it ranks, on the synthetic corpus (a pipeline check).

The corpus plants one successor per item; the score is the share of test users whose top-1
recommendation is the planted successor of their last item. Prints, per setting, the first epoch
at which that share passes 0.3, and the final share.

Usage: OMP_NUM_THREADS=1 python bench/sasrec_plateau.py > experiments/sasrec_bce/plateau.txt
"""

from __future__ import annotations

import numpy as np
import torch

from sidrec_core.data.dataset import DataConfig, load_dataset
from sidrec_core.data.split import leave_one_out
from sidrec_core.data.synthetic import planted_successor
from sidrec_core.models.sasrec import SASRec, SASRecConfig, training_batches
from sidrec_core.train import TrainConfig, fit

DATA = DataConfig(name="synthetic", synthetic_users=200, synthetic_items=60, synthetic_clusters=4)
SMALL = dict(hidden_dim=32, num_blocks=1, num_heads=1, ffn_dim=32, dropout=0.0, max_history=16)
SETTINGS = [  # (batch users, K, extra SASRecConfig fields)
    (8, 64, {}),
    (8, 512, {}),
    (16, 64, {}),
    (8, 64, {"block": "post_ln"}),
    (8, 64, {"item_bias": False, "emb_scale": False}),
    (8, 64, {"dropout": 0.2}),
    (16, 64, {"bce_shared_balanced": True}),
]


def main() -> None:
    torch.set_num_threads(1)
    ds = load_dataset(DATA, seed=0)
    loo = leave_one_out(ds)
    key_to_id = {k: i for i, k in enumerate(ds.item_keys)}
    succ = planted_successor(DATA.synthetic_items, DATA.synthetic_clusters, seed=0)
    succ_id = {
        key_to_id[f"SYN{i:06d}"]: key_to_id[f"SYN{s:06d}"]
        for i, s in enumerate(succ)
        if f"SYN{i:06d}" in key_to_id and f"SYN{s:06d}" in key_to_id
    }
    histories = torch.as_tensor(loo.split("test", SMALL["max_history"]).histories)
    wanted = np.array([succ_id[int(item)] for item in histories[:, -1]])
    for batch_users, k, extra in SETTINGS:
        torch.manual_seed(0)
        fields = {**SMALL, "item_bias": True, "emb_scale": True, **extra}
        train = TrainConfig(
            epochs=40, batch_size=batch_users, lr=5e-3, grad_clip=0.0, betas=(0.9, 0.98)
        )
        cfg = SASRecConfig(**fields, loss="bce_shared", bce_shared_negatives=k, train=train)
        model, batches = SASRec(cfg, loo.num_items), training_batches(cfg, loo, seed=0)
        rates: list[float] = []

        def plant_rate(model: SASRec = model, rates: list[float] = rates) -> dict[str, float]:
            model.eval()
            ids, _ = model.recommend({"history": histories}, 1)
            rates.append(float((ids[:, 0].numpy() == wanted).mean()))
            model.train()
            return {"valid/ndcg@10": float(len(rates))}  # rising: fit keeps the last epoch

        fit(model, batches, plant_rate, train, device=torch.device("cpu"))
        first = next((i + 1 for i, r in enumerate(rates) if r > 0.3), None)
        positions = batches.num_positions / len(batches)
        print(
            f"batch {batch_users} users (mean P {positions:.0f}), K {k}, {extra}: "
            f"first epoch with top-1 plant rate > 0.3: {first}; final {rates[-1]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
