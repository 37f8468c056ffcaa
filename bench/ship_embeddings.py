"""Ship a dataset's item-embedding table, so every machine builds SIDs from the same bytes.

Usage: python bench/ship_embeddings.py DATASET_DIR [--prepared data/prepared] [--model NAME]
                                       [--from EMBED_OUTPUT.npy]

Writes ``embeddings.<model>.npy`` and ``embeddings.<model>.json`` (the sha256 of the texts it
embedded, the command and the software that made it) into DATASET_DIR and adds both to its
``SHA256SUMS``. The texts are those of ``--prepared`` (run ``python bench/prepare.py`` for that
dataset first). ``--from`` takes the output of ``python bench/embed.py --set embed.shipped=false``
on the same prepared texts instead of encoding again; its shape is checked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from sidrec_core.data.dataset import CHECKSUMS, file_sha256, prepared_texts, read_checksums
from sidrec_core.data.embeddings import EmbedConfig, encode_texts, shipped_paths, texts_sha256
from sidrec_core.io import save_npy, write_json, write_text
from sidrec_core.perf import provenance


def package_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("transformers", "sentence-transformers", "numpy")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--prepared", default="data/prepared")
    ap.add_argument("--model", default=EmbedConfig.model)
    ap.add_argument("--from", dest="source", type=Path, default=None)
    args = ap.parse_args(argv)
    if not (args.dataset_dir / CHECKSUMS).is_file():
        ap.error(f"{args.dataset_dir}: no {CHECKSUMS} (a shipped dataset lists its files there)")
    import torch

    made_with = dict(provenance(torch.get_num_threads()), packages=package_versions())
    texts = prepared_texts(args.prepared)
    if args.source is not None:
        vectors = np.load(args.source, allow_pickle=False)
        if vectors.shape[0] != len(texts) or vectors.dtype != np.float32:
            ap.error(
                f"--from {args.source}: expected float32 [{len(texts)}, D], got "
                f"{vectors.dtype} {list(vectors.shape)}"
            )
    else:
        vectors = encode_texts(texts, EmbedConfig(model=args.model, shipped=False))
    npy, desc = shipped_paths(args.dataset_dir, args.model)
    save_npy(npy, vectors)
    write_json(
        desc,
        {
            "model": args.model,
            "texts_sha256": texts_sha256(texts),
            "rows": int(vectors.shape[0]),
            "dim": int(vectors.shape[1]),
            "made_with": made_with,
        },
    )
    sums = read_checksums(args.dataset_dir)
    sums.update({p.name: file_sha256(p) for p in (npy, desc)})
    write_text(
        args.dataset_dir / CHECKSUMS, "".join(f"{h}  {n}\n" for n, h in sorted(sums.items()))
    )
    print(f"{npy} ({vectors.shape[0]} x {vectors.shape[1]}) sha256 {sums[npy.name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
