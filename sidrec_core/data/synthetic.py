"""A seeded synthetic corpus with planted structure, for tests and a quick look without data.

Semantic structure: items belong to ``synthetic_clusters`` categories; their text names the
category and their vectors (:func:`synthetic_embeddings`) sit around a category centre.
Sequential structure: each category has a fixed cyclic order of its items; a user walks it
(next item = successor with probability 0.8, another item of the category 0.15, any item 0.05).
So a good sequential model predicts ``successor(last item)``. Everything built from it is labelled
``synthetic`` (dataset name, metrics JSON, MLflow tags).
"""

from __future__ import annotations

import numpy as np

from sidrec_core.data.dataset import DataConfig, Dataset, build_dataset

ADJECTIVES = ["gentle", "vivid", "matte", "daily", "intense", "classic", "fresh", "silky"]
CATEGORIES = [
    "Nail Polish",
    "Shampoo",
    "Face Cream",
    "Lipstick",
    "Perfume",
    "Hair Dryer",
    "Eye Liner",
    "Body Lotion",
    "Sunscreen",
    "Face Mask",
    "Razor",
    "Toner",
]


def _item_table(num_items: int, num_clusters: int) -> tuple[np.ndarray, list[dict]]:
    cluster = np.arange(num_items) % num_clusters
    meta = []
    for i in range(num_items):
        c = int(cluster[i])
        cat = CATEGORIES[c % len(CATEGORIES)] + ("" if c < len(CATEGORIES) else f" {c}")
        meta.append(
            {
                "asin": f"SYN{i:06d}",
                "title": f"{ADJECTIVES[i % len(ADJECTIVES)].title()} {cat} no. {i}",
                "brand": f"Brand{c}",
                "categories": [["Beauty", cat]],
                "price": float(5 + (i * 7) % 40),
            }
        )
    return cluster, meta


def planted_successor(num_items: int, num_clusters: int, seed: int) -> np.ndarray:
    """The planted next item of every item (0-based keys) -> [num_items]."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(num_items) % num_clusters
    succ = np.empty(num_items, dtype=np.int64)
    for c in range(num_clusters):
        members = rng.permutation(np.flatnonzero(cluster == c))
        succ[members] = np.roll(members, -1)
    return succ


def make_synthetic(cfg: DataConfig, seed: int) -> Dataset:
    n, k = cfg.synthetic_items, cfg.synthetic_clusters
    if n < 2 * k:
        raise ValueError(f"data.synthetic_items ({n}) must be >= 2 x data.synthetic_clusters ({k})")
    rng = np.random.default_rng(seed + 1)
    cluster, meta = _item_table(n, k)
    succ = planted_successor(n, k, seed)
    members = [np.flatnonzero(cluster == c) for c in range(k)]
    users, seqs = [], []
    for u in range(cfg.synthetic_users):
        length = int(rng.integers(max(5, cfg.min_sequence_length), 16))
        item = int(rng.integers(n))
        seq = [item]
        for _ in range(length - 1):
            r = rng.random()
            if r < 0.8:
                item = int(succ[item])
            elif r < 0.95:
                item = int(rng.choice(members[cluster[item]]))
            else:
                item = int(rng.integers(n))
            seq.append(item)
        users.append(f"user{u:05d}")
        seqs.append([meta[i]["asin"] for i in seq])
    items = {m["asin"]: m for m in meta}
    return build_dataset("synthetic", users, seqs, items, cfg, source="synthetic", synthetic=True)


def synthetic_embeddings(
    ds: Dataset, dim: int = 32, noise: float = 0.3, seed: int = 0
) -> np.ndarray:
    """Item vectors [N, dim] around category centres (float32, L2-normalised), by item id order."""
    rng = np.random.default_rng(seed + 2)
    cats = [m["categories"][0][-1] for m in ds.item_meta[1:]]
    names = sorted(set(cats))
    centres = rng.normal(size=(len(names), dim))
    idx = np.array([names.index(c) for c in cats])
    x = centres[idx] + noise * rng.normal(size=(len(cats), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)
