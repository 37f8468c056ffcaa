"""Collaborative item embeddings as a tokenizer input (ETEGRec, LETTER): the trained SASRec's
item table, or text and collaborative vectors concatenated (each L2-normalised first, so neither
part dominates the tokenizer's distances by scale).

Shapes: item table [N + 1, d] (row 0 padding), text [N, D], output [N, d] or [N, D + d].
"""

from __future__ import annotations

import dataclasses

import numpy as np

SOURCES = ("collaborative", "both")


@dataclasses.dataclass(frozen=True)
class CollabConfig:
    """``collab`` section: the folder the ``item_embeddings`` stage writes, one ``.npy`` per
    source in :data:`SOURCES` (``sid.embeddings`` picks one, e.g.
    ``data/item_embeddings/collaborative.npy``)."""

    output: str = "data/item_embeddings"


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def item_vectors(item_table: np.ndarray, text: np.ndarray | None, source: str) -> np.ndarray:
    """Tokenizer input rows for items 1..N (row i - 1 = item i) -> float32."""
    collab = np.asarray(item_table[1:], dtype=np.float32)
    if source == "collaborative":
        return collab
    if source != "both":
        raise ValueError(f"collab.source: expected collaborative or both, got {source!r}")
    if text is None or len(text) != len(collab):
        raise ValueError(
            f"collab.source=both needs text embeddings for the {len(collab)} items (embed.output)"
        )
    return np.concatenate([_unit(np.asarray(text, np.float32)), _unit(collab)], axis=1)
