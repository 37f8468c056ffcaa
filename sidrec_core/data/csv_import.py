"""Import a plain interactions CSV (``user,item,timestamp``) and an optional items CSV into the
dataset directory format (``sequences.txt`` + ``items.jsonl``).

Everything is validated before anything is written, and every error is one line naming the file,
the line and the column. The dataset directory appears in one rename, so a failed import leaves
the previous directory (or nothing) in place, never a half-written one.

Duplicate rows: a row repeating an earlier row's user, item and timestamp is the same interaction
exported twice; it is dropped and counted (a warning names the first). The same user and item at
another time is a repeat interaction and is kept.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from sidrec_core.data.dataset import DataError
from sidrec_core.io import DIR_MODE, write_jsonl, write_text

log = logging.getLogger(__name__)
REQUIRED = ("user", "item", "timestamp")
_SPACE = re.compile(r"\s")


def read_csv_rows(path: Path, required: Sequence[str]) -> tuple[list[str], list[tuple[int, dict]]]:
    """Header and ``(line, {column: value})`` rows of a CSV; a missing or empty file, a missing
    column, a row with the wrong number of fields or undecodable bytes raise naming file and line.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[tuple[int, dict]] = []
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts the file with a byte-order mark
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise DataError(f"{path}:1: empty file, expected a header row")
            header = [h.strip() for h in header]
            missing = [c for c in required if c not in header]
            if missing:
                raise DataError(
                    f"{path}:1: missing column(s) {missing} in header {header}; "
                    f"expected {','.join(required)}"
                )
            for fields in reader:
                line = reader.line_num
                if not fields:  # a blank line
                    continue
                if len(fields) != len(header):
                    raise DataError(
                        f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), "
                        f"got {len(fields)}"
                    )
                rows.append((line, dict(zip(header, fields, strict=True))))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from exc
    if not rows:
        raise DataError(f"{path}:2: no data rows after the header")
    return header, rows


def _check_id(path: Path, line: int, column: str, value: str) -> str:
    if not value.strip():
        raise DataError(f"{path}:{line}: column '{column}': empty id")
    if _SPACE.search(value):
        raise DataError(
            f"{path}:{line}: column '{column}': id {value!r} contains whitespace "
            f"(the dataset format separates ids by spaces)"
        )
    return value


def parse_timestamps(path: Path, rows: list[tuple[int, dict]]) -> list[float]:
    """Numbers if the first row's timestamp is a number, else dates (ISO 8601 and the like);
    the first value of the other kind or unparsable is blamed with its own line and value."""
    values = [r["timestamp"].strip() for _, r in rows]
    numeric = pd.to_numeric(pd.Series(values), errors="coerce")
    if pd.notna(numeric.iloc[0]):
        parsed = numeric
        kind = "a number like the first row's"
    else:
        dates = pd.to_datetime(pd.Series(values), errors="coerce", utc=True, format="mixed")
        parsed = pd.Series(dates.astype("int64"), dtype="float64").where(dates.notna())
        kind = "a date like the first row's"
    bad = parsed.isna().to_numpy().nonzero()[0]
    if len(bad):
        line, value = rows[bad[0]][0], values[bad[0]]
        raise DataError(f"{path}:{line}: column 'timestamp': cannot parse {value!r} as {kind}")
    return parsed.tolist()


def _item_row(path: Path, line: int, row: dict, key: str) -> dict[str, Any]:
    obj: dict[str, Any] = {k: (v if v.strip() else None) for k, v in row.items()}
    obj["asin"] = _check_id(path, line, key, obj.pop(key) or "")
    if obj.get("categories"):
        obj["categories"] = [obj["categories"].split("|")]
    if obj.get("price") is not None:
        try:
            obj["price"] = float(obj["price"])
        except ValueError as exc:
            raise DataError(
                f"{path}:{line}: column 'price': expected a number, got {obj['price']!r}"
            ) from exc
    return obj


def read_items_csv(path: Path) -> list[dict[str, Any]]:
    """Items CSV with an ``item`` (or ``asin``) column -> ``items.jsonl`` objects."""
    header, rows = read_csv_rows(path, ())
    key = "item" if "item" in header else "asin" if "asin" in header else None
    if key is None:
        raise DataError(f"{path}:1: needs an 'item' (or 'asin') column, header is {header}")
    seen: dict[str, int] = {}
    out = []
    for line, row in rows:
        obj = _item_row(path, line, row, key)
        if obj["asin"] in seen:
            raise DataError(
                f"{path}:{line}: column '{key}': {obj['asin']!r} already listed on line "
                f"{seen[obj['asin']]}"
            )
        seen[obj["asin"]] = line
        out.append(obj)
    return out


def drop_duplicate_rows(
    path: Path, rows: list[tuple[int, dict]], records: list[tuple[str, str]], stamps: list[float]
) -> list[int]:
    """Indices of the rows to keep: a row repeating an earlier row's user, item and timestamp is
    the same interaction exported twice, so it is dropped and counted (with the first such line
    logged); the same item again at another time is a repeat interaction and stays."""
    first: dict[tuple[str, str, float], int] = {}
    keep: list[int] = []
    example: tuple[int, int] | None = None  # (line, line it repeats)
    for i, (record, stamp) in enumerate(zip(records, stamps, strict=True)):
        j = first.setdefault((*record, stamp), i)
        if j == i:
            keep.append(i)
        elif example is None:
            example = (rows[i][0], rows[j][0])
    if example is not None:
        log.warning(
            "%s: dropped %d duplicate row(s) (same user, item and timestamp as an earlier row), "
            "e.g. line %d repeats line %d",
            path,
            len(records) - len(keep),
            *example,
        )
    return keep


def check_items_listed(
    interactions: Path,
    items_path: Path,
    rows: list[tuple[int, dict]],
    records: list[tuple[str, str]],
    meta: list[dict[str, Any]],
) -> None:
    """Every item of the interactions must have a row in the items CSV (``prepare`` refuses a
    dataset whose ``items.jsonl`` lacks an item, so the import refuses it first)."""
    listed = {obj["asin"] for obj in meta}
    missing: dict[str, int] = {}
    for (line, _), (_, item) in zip(rows, records, strict=True):
        if item not in listed:
            missing.setdefault(item, line)
    if missing:
        item, line = next(iter(missing.items()))
        raise DataError(
            f"{interactions}:{line}: column 'item': {item!r} has no row in {items_path} "
            f"({len(missing)} item(s) missing from it, e.g. {list(missing)[:5]})"
        )


def replace_dir(src: Path, dst: Path) -> None:
    """Put directory ``src`` at ``dst`` by rename; a previous ``dst`` is moved aside first and
    removed only once ``src`` is in place."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
        os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old / dst.name, dst)
        raise
    if old is not None:
        shutil.rmtree(old)


def import_csv(
    interactions: str | Path, out_dir: str | Path, items: str | Path | None = None
) -> dict:
    """Sort each user's interactions by timestamp (stable) and write the dataset directory.

    Users appear in sorted order. Returns counts; bad input raises :class:`DataError`.
    """
    interactions, out_dir = Path(interactions), Path(out_dir)
    _, rows = read_csv_rows(interactions, REQUIRED)
    records = [
        (
            _check_id(interactions, line, "user", r["user"]),
            _check_id(interactions, line, "item", r["item"]),
        )
        for line, r in rows
    ]
    stamps = parse_timestamps(interactions, rows)
    keep = drop_duplicate_rows(interactions, rows, records, stamps)
    order = sorted(keep, key=lambda i: (records[i][0], stamps[i], i))
    seqs: dict[str, list[str]] = {}
    for i in order:
        seqs.setdefault(records[i][0], []).append(records[i][1])
    meta = None
    if items is not None:
        meta = read_items_csv(Path(items))
        check_items_listed(interactions, Path(items), rows, records, meta)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as exc:  # name the folder the user chose, not the random staging name
        raise OSError(exc.errno, exc.strerror, str(out_dir.parent)) from exc
    try:
        staging.chmod(DIR_MODE)
        write_text(
            staging / "sequences.txt", "".join(f"{u} {' '.join(s)}\n" for u, s in seqs.items())
        )
        if meta is not None:
            write_jsonl(staging / "items.jsonl", meta)
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "num_users": len(seqs),
        "num_interactions": len(keep),
        "duplicate_rows_dropped": len(records) - len(keep),
        "num_items_with_meta": len(meta) if meta is not None else 0,
    }
