"""Dataset directory format, name resolution, strict loading and the prepared artifact.

A dataset directory holds ``sequences.txt[.gz]`` (one user per line: ``user_id item_1 ... item_n``,
chronological) and optionally ``items.jsonl[.gz]`` (one JSON object per item with ``asin`` and any
of ``title``, ``brand``, ``categories``, ``price``; any may be null).

Item ids are remapped to ``1..N`` in order of first appearance in the sequences; ``0`` is padding.
Users with fewer than ``min_sequence_length`` items (default 3: one training item, a validation
and a test target) are dropped and counted, as the literature's k-core filtering does.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sidrec_core.io import file_sha256, reading, save_npz, write_jsonl

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Benchmarks that ship with the repository (provenance and SHA256SUMS beside the files).
SHIPPED_DATASETS = PROJECT_ROOT / "data" / "datasets"
# The team's shared data folder next to the clone; absent on a user's machine.
SHARED_DATASETS = PROJECT_ROOT.parent / "shared" / "datasets"
CHECKSUMS = "SHA256SUMS"
PAD = "<pad>"


class DataError(ValueError):
    """Bad dataset input; the message names the file and line (or key)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data`` section."""

    name: str = "beauty"
    max_history: int = 20  # TIGER caps histories at 20; 50 is the SASRec literature's choice
    min_sequence_length: int = 3
    prepared_dir: str = "data/prepared"
    # synthetic corpus (name == "synthetic"); seeded from base.seed
    synthetic_users: int = 400
    synthetic_items: int = 120
    synthetic_clusters: int = 6

    def __post_init__(self) -> None:
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")
        if self.min_sequence_length < 3:
            raise ValueError(
                f"min_sequence_length must be >= 3 (train, valid and test need one item each), "
                f"got {self.min_sequence_length}"
            )


@dataclasses.dataclass
class Dataset:
    """Users' chronological item-id sequences plus per-item metadata.

    ``item_keys[i]`` is the original key (ASIN) of item id ``i``; ``item_meta[i]`` its metadata;
    index 0 is padding in both.
    """

    name: str
    user_ids: list[str]
    item_keys: list[str]
    sequences: list[np.ndarray]
    item_meta: list[dict[str, Any]]
    synthetic: bool = False
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    # sha256 of every file read to build it ({path: hex}); empty for generated data
    sources: dict[str, str] = dataclasses.field(default_factory=dict)

    def data_sha256(self) -> str | None:
        """One sha256 over the files this dataset was read from (names and contents), for the
        prepare stage's metrics; None for synthetic data."""
        if not self.sources:
            return None
        h = hashlib.sha256()
        for path in sorted(self.sources, key=lambda p: Path(p).name):
            h.update(f"{Path(path).name}\0{self.sources[path]}\n".encode())
        return h.hexdigest()

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_keys) - 1

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def counts(self) -> dict[str, Any]:
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            "synthetic": self.synthetic,
        }


def candidate_dirs(name: str) -> list[Path]:
    """Where ``data.name`` is looked for, in order."""
    dirs = []
    if env := os.environ.get("SIDREC_DATA_DIR"):
        dirs.append(Path(env) / name)
    dirs.append(PROJECT_ROOT / "data" / "raw" / name)
    dirs.append(SHIPPED_DATASETS / name)
    dirs.append(SHARED_DATASETS / name)
    return dirs


def resolve_dataset_dir(name: str) -> Path:
    for d in candidate_dirs(name):
        if _find(d, "sequences.txt") is not None:
            return d
    looked = "\n  ".join(str(d) for d in candidate_dirs(name))
    raise DataError(
        f"dataset '{name}' not found (data.name). Looked for sequences.txt[.gz] in:\n  {looked}\n"
        f"Set SIDREC_DATA_DIR, put it under data/raw/{name}, or use data.name=synthetic."
    )


def _find(directory: Path, filename: str) -> Path | None:
    for candidate in (directory / filename, directory / f"{filename}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_one(directory: Path, filename: str) -> Path | None:
    """``filename`` or ``filename.gz`` in ``directory``; when both are there they must hold the
    same text, else which one the pipeline reads would be a silent choice."""
    plain, packed = directory / filename, directory / f"{filename}.gz"
    if plain.is_file() and packed.is_file():
        with open(plain, "rb") as a, gzip.open(packed, "rb") as b:
            try:
                same = _same_stream(a, b)
            except (EOFError, gzip.BadGzipFile, zlib.error):
                same = False
        if not same:
            raise DataError(
                f"{directory}: both {filename} and {filename}.gz are present and they differ; "
                f"remove the one that is out of date"
            )
    return _find(directory, filename)


def _same_stream(a: Any, b: Any, chunk: int = 1 << 20) -> bool:
    while True:
        x, y = a.read(chunk), b.read(chunk)
        if x != y:
            return False
        if not x:
            return True


def read_checksums(directory: Path) -> dict[str, str]:
    """``SHA256SUMS`` (``<hex>  <file>`` per line, as ``sha256sum`` writes it) -> {file: hex}."""
    path = directory / CHECKSUMS
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(f"{path}:{lineno}: expected '<sha256>  <file>', got {line[:80]!r}")
        sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def verify_file(path: Path, sums: dict[str, str]) -> str:
    """sha256 of ``path``; raises if ``sums`` lists the file with another hash."""
    actual = file_sha256(path)
    expected = sums.get(path.name)
    if expected is not None and expected != actual:
        raise DataError(
            f"{path}: sha256 mismatch with {CHECKSUMS}: expected {expected}, got {actual} "
            f"(corrupt or modified data file)"
        )
    return actual


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file, gzip-compressed when it ends in ``.gz``; a truncated
    or corrupt archive, or bytes that are not UTF-8, raise :class:`DataError` naming the file and
    the line where reading stopped."""
    opener = gzip.open if path.suffix == ".gz" else open
    lineno = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                yield lineno, line.rstrip("\n")
    except UnicodeDecodeError as exc:
        # text mode decodes in chunks, so the line is found again from the raw bytes
        line, detail = _bad_utf8(path, opener)
        raise DataError(f"{path}:{line}: not UTF-8 text ({detail})") from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{path}:{lineno + 1}: corrupt or truncated gzip file ({exc}); restore it from its "
            f"source"
        ) from exc


def _bad_utf8(path: Path, opener: Any) -> tuple[int | str, str]:
    """Line number and reason of the first line of ``path`` that is not valid UTF-8."""
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return (
                    lineno,
                    f"{exc.reason} at column {exc.start + 1}: byte 0x{raw[exc.start]:02x}",
                )
    return "?", "undecodable bytes"


def read_items(path: Path) -> dict[str, dict[str, Any]]:
    """``items.jsonl[.gz]`` -> {asin: metadata}; invalid JSON, a missing ``asin`` or a repeated
    asin raise naming file and line."""
    items: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for lineno, line in _lines(path):
        if not line.strip():
            raise DataError(f"{path}:{lineno}: empty line (expected one JSON object per line)")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        asin = obj.get("asin")
        if not isinstance(asin, str) or not asin:
            raise DataError(f"{path}:{lineno}: key 'asin' missing or not a non-empty string")
        if asin in items:
            raise DataError(
                f"{path}:{lineno}: asin {asin!r} already listed on line {first_line[asin]}"
            )
        items[asin] = obj
        first_line[asin] = lineno
    return items


def read_sequences(path: Path) -> tuple[list[str], list[list[str]]]:
    """``sequences.txt[.gz]`` -> (user ids, item-key lists). Blank lines inside the file, a line
    without items, or a user listed twice raise naming file and line."""
    users: list[str] = []
    seqs: list[list[str]] = []
    seen: dict[str, int] = {}
    pending_blank: int | None = None
    for lineno, line in _lines(path):
        if not line.strip():
            pending_blank = pending_blank or lineno
            continue
        if pending_blank is not None:
            raise DataError(
                f"{path}:{pending_blank}: empty line (expected 'user_id item_1 ... item_n')"
            )
        parts = line.split()
        if len(parts) < 2:
            raise DataError(
                f"{path}:{lineno}: malformed line, expected 'user_id item_1 ... item_n', "
                f"got {line[:80]!r}"
            )
        user = parts[0]
        if user in seen:
            raise DataError(
                f"{path}:{lineno}: user {user!r} listed twice (first on line {seen[user]})"
            )
        seen[user] = lineno
        users.append(user)
        seqs.append(parts[1:])
    if not users:
        raise DataError(f"{path}: no users found")
    return users, seqs


def build_dataset(
    name: str,
    users: list[str],
    seqs: list[list[str]],
    items: dict[str, dict[str, Any]] | None,
    cfg: DataConfig,
    source: str = "",
    synthetic: bool = False,
) -> Dataset:
    """Remap keys to ids 1..N (first appearance), drop too-short users (counted)."""
    keep_users, keep_seqs = [], []
    for user, seq in zip(users, seqs, strict=True):
        if len(seq) >= cfg.min_sequence_length:
            keep_users.append(user)
            keep_seqs.append(seq)
    dropped = {"short_sequences": len(users) - len(keep_users)}
    if not keep_users:
        raise DataError(
            f"{source or name}: all {len(users)} users have fewer than "
            f"{cfg.min_sequence_length} items (data.min_sequence_length: one training item, a "
            f"validation and a test target), so no user is left"
        )
    if dropped["short_sequences"]:
        log.warning(
            "%s: dropped %d users with fewer than %d items",
            source or name,
            dropped["short_sequences"],
            cfg.min_sequence_length,
        )
    key_to_id: dict[str, int] = {}
    sequences = []
    for seq in keep_seqs:
        ids = [key_to_id.setdefault(k, len(key_to_id) + 1) for k in seq]
        sequences.append(np.asarray(ids, dtype=np.int64))
    item_keys = [PAD] + list(key_to_id)
    if items is not None:
        missing = [k for k in item_keys[1:] if k not in items]
        if missing:
            raise DataError(
                f"{source}: {len(missing)} item(s) in the sequences are missing from items.jsonl, "
                f"e.g. {missing[:5]}"
            )
        unused = len(items) - len(item_keys) + 1
        if unused:
            log.info(
                "%s: %d items in items.jsonl never appear in kept sequences (ignored)", name, unused
            )
        dropped["unused_items"] = unused
    meta = [{}] + [dict(items[k]) if items is not None else {} for k in item_keys[1:]]
    return Dataset(name, keep_users, item_keys, sequences, meta, synthetic, dropped)


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """Load ``cfg.name``: ``synthetic`` is generated; anything else is resolved on disk."""
    if cfg.name == "synthetic":
        from sidrec_core.data.synthetic import make_synthetic

        ds = make_synthetic(cfg, seed)
    else:
        ds = load_dataset_dir(resolve_dataset_dir(cfg.name), cfg, cfg.name)
    log.info(
        "dataset %s: %d users, %d items, %d interactions%s",
        ds.name,
        ds.num_users,
        ds.num_items,
        ds.num_interactions,
        " (SYNTHETIC)" if ds.synthetic else "",
    )
    return ds


def load_dataset_dir(directory: Path, cfg: DataConfig, name: str | None = None) -> Dataset:
    seq_path = _find_one(directory, "sequences.txt")
    if seq_path is None:
        raise DataError(f"{directory}: no sequences.txt or sequences.txt.gz")
    sums = read_checksums(directory)
    sources = {str(seq_path): verify_file(seq_path, sums)}
    users, seqs = read_sequences(seq_path)
    items_path = _find_one(directory, "items.jsonl")
    items = None
    if items_path is not None:
        sources[str(items_path)] = verify_file(items_path, sums)
        items = read_items(items_path)
    absent = [f for f in sums if not (directory / f).is_file()]
    if absent:
        raise DataError(f"{directory / CHECKSUMS}: lists {absent} but the folder lacks them")
    ds = build_dataset(name or directory.name, users, seqs, items, cfg, source=str(seq_path))
    ds.sources = sources
    return ds


# --- prepared artifact (output of the `prepare` stage) -------------------------------------------


def save_prepared(ds: Dataset, directory: str | Path) -> None:
    """Write ``dataset.npz`` (ids and sequences) and ``items.jsonl`` (keys, metadata, text)."""
    from sidrec_core.data.text import item_text, warn_empty_texts

    directory = Path(directory)
    lengths = np.array([len(s) for s in ds.sequences], dtype=np.int64)
    save_npz(
        directory / "dataset.npz",
        user_ids=np.array(ds.user_ids),
        item_keys=np.array(ds.item_keys),
        seq_items=np.concatenate(ds.sequences),
        seq_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        name=np.array(ds.name),
        synthetic=np.array(ds.synthetic),
    )
    rows = [
        {
            "item_id": i,
            "key": ds.item_keys[i],
            "text": item_text(ds.item_meta[i]),
            "meta": ds.item_meta[i],
        }
        for i in range(1, ds.num_items + 1)
    ]
    warn_empty_texts([r["text"] for r in rows], ds.name)
    write_jsonl(directory / "items.jsonl", rows)


def load_prepared(directory: str | Path) -> Dataset:
    """Read the ``prepare`` stage's output back into a :class:`Dataset`."""
    directory = Path(directory)
    npz_path = directory / "dataset.npz"
    if not npz_path.exists():
        raise DataError(f"{npz_path} not found: run the prepare stage first (dvc repro prepare)")
    remedy = "re-run the prepare stage (dvc repro prepare)"
    with reading(npz_path, remedy), np.load(npz_path) as z:
        offsets = z["seq_offsets"]
        items = z["seq_items"]
        sequences = [items[offsets[i] : offsets[i + 1]].copy() for i in range(len(offsets) - 1)]
        user_ids = z["user_ids"].tolist()
        item_keys = z["item_keys"].tolist()
        name, synthetic = str(z["name"]), bool(z["synthetic"])
    meta: list[dict[str, Any]] = [{}]
    with reading(directory / "items.jsonl", remedy), open(directory / "items.jsonl") as f:
        meta += [json.loads(line)["meta"] for line in f]
    return Dataset(name, user_ids, item_keys, sequences, meta, synthetic)


def prepared_texts(directory: str | Path) -> list[str]:
    """Item texts [N] in item-id order (1..N) from the prepared ``items.jsonl``."""
    from sidrec_core.data.text import warn_empty_texts

    path = Path(directory) / "items.jsonl"
    with reading(path, "re-run the prepare stage (dvc repro prepare)"), open(path) as f:
        texts = [json.loads(line)["text"] for line in f]
    warn_empty_texts(texts, str(path))
    return texts
