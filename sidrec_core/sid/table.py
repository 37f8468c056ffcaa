"""The SID table: item id -> code per level, the artifact every SID consumer reads.

On disk (a folder): ``codes.npy`` int64 [N + 1, M] (row 0 = padding, all -1), ``sids.json``
``{"123": ["<a_12>", "<b_7>", "<c_200>"]}`` for people, and ``meta.json`` with the codebook size
of each level (a de-duplication level, if any, is the last one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import string
from pathlib import Path

import numpy as np

from sidrec_core.io import reading, save_npy, write_json

LEVEL_LETTERS = string.ascii_lowercase


def token(level: int, code: int) -> str:
    """``(0, 12) -> "<a_12>"``: one vocabulary token per (level, code)."""
    return f"<{LEVEL_LETTERS[level]}_{code}>"


@dataclasses.dataclass
class SIDTable:
    """codes: int64 [N + 1, M], row 0 = padding (-1); codebook_sizes: [M]."""

    codes: np.ndarray
    codebook_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.codebook_sizes):
            raise ValueError(
                f"codes must be [N + 1, {len(self.codebook_sizes)}], got {self.codes.shape}"
            )
        body = self.codes[1:]
        if body.size and (body.min() < 0 or (body >= np.asarray(self.codebook_sizes)).any()):
            raise ValueError("SID codes out of range of their level's codebook size")

    @property
    def num_items(self) -> int:
        return self.codes.shape[0] - 1

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    def tokens(self, item_id: int) -> list[str]:
        return [token(level, int(c)) for level, c in enumerate(self.codes[item_id])]

    def fingerprint(self) -> str:
        """Short hash of the codes: which table a model was trained on."""
        return hashlib.sha256(np.ascontiguousarray(self.codes).tobytes()).hexdigest()[:16]

    def is_unique(self) -> bool:
        return len(np.unique(self.codes[1:], axis=0)) == self.num_items

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        save_npy(directory / "codes.npy", self.codes)
        write_json(
            directory / "sids.json", {str(i): self.tokens(i) for i in range(1, self.num_items + 1)}
        )
        write_json(
            directory / "meta.json",
            {
                "codebook_sizes": list(self.codebook_sizes),
                "num_items": self.num_items,
                "num_levels": self.num_levels,
            },
        )

    @classmethod
    def load(cls, directory: str | Path, num_items: int | None = None) -> SIDTable:
        """Load a saved table; with ``num_items``, fail clearly if it does not match the dataset."""
        directory = Path(directory)
        if not (directory / "codes.npy").exists():
            raise FileNotFoundError(
                f"{directory / 'codes.npy'} not found: run the build_sids stage first"
            )
        remedy = "rebuild the SID table (dvc repro build_sids)"
        with reading(directory / "meta.json", remedy):
            sizes = tuple(json.loads((directory / "meta.json").read_text())["codebook_sizes"])
        with reading(directory / "codes.npy", remedy):
            codes = np.load(directory / "codes.npy", allow_pickle=False)
        table = cls(codes, sizes)
        if num_items is not None and table.num_items != num_items:
            raise ValueError(
                f"SID table {directory} covers {table.num_items} items but the dataset has "
                f"{num_items}: rebuild it (dvc repro build_sids)"
            )
        return table
