"""Import a plain interactions CSV (``user,item,timestamp``) and an optional items CSV into the
dataset directory format (``sequences.txt`` + ``items.jsonl``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from sidrec_core.data.dataset import DataError
from sidrec_core.io import atomic_path, write_text

REQUIRED = ("user", "item", "timestamp")


def import_csv(
    interactions: str | Path, out_dir: str | Path, items: str | Path | None = None
) -> dict:
    """Sort each user's interactions by timestamp (stable) and write the dataset directory.

    Returns counts. Missing columns or unparsable timestamps raise naming file, line and column.
    """
    interactions = Path(interactions)
    df = pd.read_csv(interactions, dtype={"user": str, "item": str})
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            f"{interactions}: missing column(s) {missing}; expected header {','.join(REQUIRED)}"
        )
    for col in ("user", "item"):
        bad = df[col].isna()
        if bad.any():
            raise DataError(f"{interactions}:{int(bad.idxmax()) + 2}: empty '{col}'")
    ts = pd.to_numeric(df["timestamp"], errors="coerce")
    if ts.isna().any():
        ts = pd.to_datetime(df["timestamp"], errors="coerce", utc=True)
        if ts.isna().any():
            raise DataError(
                f"{interactions}:{int(ts.isna().idxmax()) + 2}: unparsable 'timestamp' "
                f"{df['timestamp'][ts.isna().idxmax()]!r}"
            )
    df = df.assign(_ts=ts, _row=range(len(df))).sort_values(["user", "_ts", "_row"], kind="stable")
    out_dir = Path(out_dir)
    lines = [f"{u} {' '.join(g['item'])}" for u, g in df.groupby("user", sort=False)]
    write_text(out_dir / "sequences.txt", "\n".join(lines) + "\n")
    num_items_meta = 0
    if items is not None:
        items = Path(items)
        meta = pd.read_csv(items, dtype=str)
        key = "item" if "item" in meta.columns else "asin" if "asin" in meta.columns else None
        if key is None:
            raise DataError(f"{items}: needs an 'item' (or 'asin') column")
        with atomic_path(out_dir / "items.jsonl") as tmp, tmp.open("w") as f:
            for row in meta.to_dict("records"):
                obj = {
                    k: (None if isinstance(v, float) and math.isnan(v) else v)
                    for k, v in row.items()
                }
                obj["asin"] = obj.pop(key)
                if obj.get("categories"):
                    obj["categories"] = [str(obj["categories"]).split("|")]
                if obj.get("price") is not None:
                    try:
                        obj["price"] = float(obj["price"])
                    except ValueError:
                        obj["price"] = None
                f.write(json.dumps(obj) + "\n")
        num_items_meta = len(meta)
    return {
        "num_users": len(lines),
        "num_interactions": len(df),
        "num_items_with_meta": num_items_meta,
    }
