"""Prefix tables over the SID table, and generated SIDs -> ranked item candidates.

Constrained decoding (as in TIGER, Rajput et al. 2023, and the trie-constrained beams of
MiniOneRec / al_sid) may only extend a SID prefix with codes that some item continues it with.
:class:`PrefixTable` stores that relation once, as dense tensors, so a decoding step is one
gather per beam instead of a Python trie walk per beam:

- level ``l`` has ``P_l`` distinct prefixes of length ``l`` (``P_0 = 1``: the empty prefix),
  numbered in the sorted order of their mixed-radix keys;
- ``children[l]`` is int64 [P_l, K_l]: the index of the length ``l + 1`` prefix reached by
  appending code ``c`` to prefix ``p`` (for the last level: the item id), -1 where no item has
  that SID prefix;
- the exact SID -> item lookup is a binary search over the sorted full keys.

Memory is ``sum_l P_l x K_l`` int64, at most ``N x K`` per level (Beauty, 3 x 256 codes over 12,101
items: ~1 M entries, 8 MB).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class PrefixTable:
    """Valid-continuation tables and the SID -> item lookup, built once from a unique SID table.

    Attributes (all on one device):
        codebook_sizes: (K_0, ..., K_{M-1}).
        radix: int64 [M], ``key = sum_l code_l * radix_l`` (mixed radix, level 0 most significant).
        children: list of M int64 tensors [P_l, K_l]; next prefix index (last level: item id),
            -1 = no item continues this prefix with that code.
        keys: int64 [N] sorted full SID keys; ``key_items``: int64 [N] their item ids (1..N).
    """

    def __init__(
        self,
        codebook_sizes: tuple[int, ...],
        radix: Tensor,
        children: list[Tensor],
        keys: Tensor,
        key_items: Tensor,
    ) -> None:
        self.codebook_sizes = tuple(int(k) for k in codebook_sizes)
        self.radix, self.children, self.keys, self.key_items = radix, children, keys, key_items
        self._copies: dict[torch.device, PrefixTable] = {}

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def num_items(self) -> int:
        return int(self.keys.numel())

    @property
    def device(self) -> torch.device:
        return self.keys.device

    @classmethod
    def from_codes(
        cls,
        codes: Tensor | np.ndarray,
        codebook_sizes: tuple[int, ...] | list[int],
    ) -> PrefixTable:
        """Build from ``codes`` int [N, M] (``SIDTable.codes[1:]``: row i is item i + 1).

        Raises ValueError when the table is empty, codes are out of range, the codebooks are too
        large for int64 keys, or two items share a SID (run collision resolution first).
        """
        codes = torch.as_tensor(np.asarray(codes) if not isinstance(codes, Tensor) else codes)
        codes = codes.to(device="cpu", dtype=torch.int64)
        sizes = tuple(int(k) for k in codebook_sizes)
        if codes.ndim != 2 or codes.shape[1] != len(sizes) or codes.shape[0] == 0:
            raise ValueError(
                f"SID codes must be a non-empty [N, {len(sizes)}] table (one column "
                f"per codebook size), got shape {tuple(codes.shape)}"
            )
        if min(sizes) < 1:
            raise ValueError(f"codebook sizes must be >= 1, got {sizes}")
        if (codes < 0).any() or (codes >= torch.tensor(sizes)).any():
            raise ValueError(
                "SID codes out of range of their level's codebook size "
                "(pass SIDTable.codes[1:], without the -1 padding row)"
            )
        if float(np.prod([float(k) for k in sizes])) >= 2.0**62:
            raise ValueError(f"codebook sizes {sizes} are too large for int64 SID keys")
        radix = torch.tensor(
            [int(np.prod(sizes[lvl + 1 :], dtype=np.int64)) for lvl in range(len(sizes))],
            dtype=torch.int64,
        )
        full = codes @ radix
        keys, order = torch.sort(full)
        dup = keys[1:] == keys[:-1]
        if bool(dup.any()):
            first = int(order[1:][dup][0]) + 1
            raise ValueError(
                f"SID table is not unique: {int(dup.sum())} items share a SID with another item "
                f"(e.g. item {first}, SID {codes[first - 1].tolist()}); resolve collisions "
                "(de-duplication level) before decoding"
            )
        key_items = order + 1
        children = []
        num_items = codes.shape[0]
        for lvl, size in enumerate(sizes):
            # prefix key of length l = key // (product of the sizes of levels l..M-1)
            span = int(np.prod(sizes[lvl:], dtype=np.int64))
            parent_keys = torch.div(full, span, rounding_mode="floor")
            parents = torch.unique(parent_keys)
            parent_idx = torch.searchsorted(parents, parent_keys)
            if lvl + 1 < len(sizes):
                child_keys = torch.div(full, span // size, rounding_mode="floor")
                child_idx = torch.searchsorted(torch.unique(child_keys), child_keys)
            else:
                child_idx = torch.arange(1, num_items + 1)
            table = torch.full((parents.numel(), size), -1, dtype=torch.int64)
            table[parent_idx, codes[:, lvl]] = child_idx
            children.append(table)
        return cls(sizes, radix, children, keys, key_items)

    def to(self, device: torch.device | str) -> PrefixTable:
        """This table on ``device`` (copies are cached, so per-batch calls cost nothing)."""
        device = torch.device(device)
        if device == self.device or (device.type == self.device.type and device.index is None):
            return self
        if device not in self._copies:
            self._copies[device] = PrefixTable(
                self.codebook_sizes,
                self.radix.to(device),
                [c.to(device) for c in self.children],
                self.keys.to(device),
                self.key_items.to(device),
            )
        return self._copies[device]

    def lookup(self, codes: Tensor) -> Tensor:
        """``codes`` int [..., M] -> item ids [...] (0 where the SID is not in the table)."""
        table = self.to(codes.device)
        sizes = torch.tensor(table.codebook_sizes, device=codes.device)
        in_range = ((codes >= 0) & (codes < sizes)).all(-1)
        key = (codes.clamp(min=0) * table.radix).sum(-1)
        pos = torch.searchsorted(table.keys, key.reshape(-1)).clamp(max=table.num_items - 1)
        pos = pos.reshape(key.shape)
        found = in_range & (table.keys[pos] == key)
        return torch.where(found, table.key_items[pos], torch.zeros_like(pos))


def candidates_to_items(
    output,
    prefix_table: PrefixTable,
    k: int,
) -> tuple[Tensor, Tensor, dict[str, int]]:
    """Generated SIDs -> the top-``k`` distinct items per user.

    Args:
        output: a :class:`~sidrec_core.models.beam.BeamOutput` (``codes`` [B, C, M], ``scores``
            [B, C]; empty slots have score -inf).
        prefix_table: the table of the SIDs the model was trained on.
        k: number of items to return.

    Returns:
        item_ids int64 [B, k] (0 = empty slot), scores float [B, k] (sequence log-prob, -inf for
        empty slots), ranked by score; invalid SIDs (not in the table) and repeated items are
        dropped. stats: {"generated": candidates with a finite score, "invalid": of those, SIDs
        not in the table, "duplicate": valid ones repeating an item already ranked higher}.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    codes, scores = output.codes, output.scores
    batch, num_cand = scores.shape
    items = prefix_table.lookup(codes)
    generated = torch.isfinite(scores)
    invalid = generated & (items == 0)
    # rank by score first so "duplicate" means "a lower-scored repeat"
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    items, scores = items.gather(1, order), scores.gather(1, order)
    valid = (generated & ~invalid).gather(1, order)
    # equal items become adjacent after a stable sort by item id, in score order within a run;
    # invalid slots get distinct negative ids so they never look like repeats
    slot = torch.arange(num_cand, device=items.device).expand(batch, -1)
    by_item, perm = torch.sort(torch.where(valid, items, -1 - slot), dim=1, stable=True)
    repeat = torch.zeros_like(valid)
    repeat[:, 1:] = by_item[:, 1:] == by_item[:, :-1]
    dup = torch.zeros_like(valid).scatter(1, perm, repeat) & valid
    keep = valid & ~dup
    # kept slots first, still in score order
    front = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    keep, items, scores = keep.gather(1, front), items.gather(1, front), scores.gather(1, front)
    items = torch.where(keep, items, torch.zeros_like(items))
    scores = torch.where(keep, scores, torch.full_like(scores, float("-inf")))
    if num_cand < k:
        items = torch.cat([items, items.new_zeros(batch, k - num_cand)], 1)
        scores = torch.cat([scores, scores.new_full((batch, k - num_cand), float("-inf"))], 1)
    stats = {
        "generated": int(generated.sum()),
        "invalid": int(invalid.sum()),
        "duplicate": int(dup.sum()),
    }
    return items[:, :k], scores[:, :k], stats
