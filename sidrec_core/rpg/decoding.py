"""Turning RPG's per-digit code distributions into ranked items (Hou et al., KDD 2025, Sec. 3.3;
facebookresearch/RPG_KDD2025: genrec/models/RPG/model.py ``generate``, ``build_ii_sim_mat``,
``graph_propagation``).

An item's score is the sum over its M digits of the log-probability of its code at that digit
(RPG averages; the ranking is the same). Two ways to find the top items:

- :func:`exact_scores`: every item of the catalogue, one gather per digit over the [N + 1, M]
  code table (O(B N M) adds; no beam, no misses). The default at these catalogue sizes.
- :func:`graph_beam`: RPG's graph-constrained decoding for catalogues too large to score whole.
  Offline, every item keeps its ``num_edges`` most similar items (:func:`item_graph`, similarity
  = mean over digits of the cosine of the two items' code embeddings, mapped to [0, 1]). Online,
  ``beam_width`` random items start the beam; each of ``propagation_steps`` steps scores the
  beam's neighbours and keeps the best ``beam_width``. RPG returns the final beam; here the top
  k of every item scored during the walk is returned (the same list when k <= beam_width and the
  last step found the best items; never worse, and k may exceed the width).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

STRATEGIES = ("exact", "graph")


@dataclasses.dataclass(frozen=True)
class GraphDecodingConfig:
    """``rpg.decoding`` subsection: how ``eval_rpg`` ranks (training validates exactly). Beam
    values: RPG's Beauty command (README, ``num_beams=20 n_edges=200 propagation_steps=3``)."""

    strategy: Literal["exact", "graph"] = "exact"
    beam_width: int = 20
    num_edges: int = 200
    propagation_steps: int = 3
    seed: int = 0  # the random starting beam
    chunk_size: int = 1024  # item rows per block when the graph is built

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"decoding.strategy: unknown {self.strategy!r}; valid: {STRATEGIES}")
        for name in ("beam_width", "num_edges", "propagation_steps", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"decoding.{name} must be >= 1, got {getattr(self, name)}")


def exact_scores(log_probs: Tensor, codes: Tensor) -> Tensor:
    """Summed code log-probabilities of every item.

    log_probs [B, M, K] (log-softmax per digit), codes [N + 1, M] (row 0 = padding, any value
    in range) -> scores [B, N + 1]; column 0 is -inf.
    """
    num_levels = codes.shape[1]
    scores = log_probs[:, 0].index_select(1, codes[:, 0])
    for m in range(1, num_levels):
        scores = scores + log_probs[:, m].index_select(1, codes[:, m])
    scores[:, 0] = float("-inf")
    return scores


def item_scores(log_probs: Tensor, codes: Tensor, items: Tensor) -> Tensor:
    """Scores of chosen items: log_probs [B, M, K], codes [N + 1, M], items [B, C] -> [B, C]."""
    item_codes = codes[items]  # [B, C, M]
    b, c, m = item_codes.shape
    picked = log_probs.gather(2, item_codes.permute(0, 2, 1))  # [B, M, C]
    return picked.sum(1).reshape(b, c)


def item_graph(code_emb: Tensor, codes: Tensor, num_edges: int, chunk_size: int = 1024) -> Tensor:
    """Each item's ``num_edges`` most similar items -> adjacency [N + 1, E] (row 0 unused).

    code_emb [M, K, D] code embeddings, codes [N + 1, M]. Similarity of items i, j = mean over
    digits m of (cos(e_m[c_im], e_m[c_jm]) + 1) / 2, computed from the M [K, K] code-similarity
    tables in blocks of ``chunk_size`` items (RPG's ``build_ii_sim_mat``). An item is its own
    most similar item; padding (column 0) is never a neighbour.
    """
    emb = F.normalize(code_emb.float(), dim=-1)
    sims = 0.5 * (torch.bmm(emb, emb.transpose(1, 2)) + 1.0)  # [M, K, K]
    n_rows, num_levels = codes.shape
    edges = min(num_edges, n_rows - 1)
    adjacency = torch.zeros(n_rows, edges, dtype=torch.long, device=codes.device)
    for start in range(1, n_rows, chunk_size):
        rows = codes[start : start + chunk_size]
        block = torch.zeros(len(rows), n_rows, device=codes.device)
        for m in range(num_levels):
            block += sims[m].index_select(0, rows[:, m]).index_select(1, codes[:, m])
        block[:, 0] = float("-inf")
        adjacency[start : start + len(rows)] = block.topk(edges, dim=1).indices
    return adjacency


def _dedupe(ids: Tensor, scores: Tensor) -> Tensor:
    """scores [B, C] with every repeat of an id in its row (after the first) and padding id 0
    set to -inf."""
    order = ids.argsort(dim=1, stable=True)
    sorted_ids = ids.gather(1, order)
    repeat = torch.zeros_like(sorted_ids, dtype=torch.bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    drop = torch.zeros_like(repeat).scatter(1, order, repeat) | (ids == 0)
    return scores.masked_fill(drop, float("-inf"))


def graph_beam(
    log_probs: Tensor,
    codes: Tensor,
    adjacency: Tensor,
    k: int,
    cfg: GraphDecodingConfig,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Graph-constrained beam -> (item_ids [B, k], scores [B, k]), best first; id 0 = empty.

    log_probs [B, M, K], codes [N + 1, M], adjacency [N + 1, E] from :func:`item_graph`.
    """
    b = log_probs.shape[0]
    num_items = codes.shape[0] - 1
    device = log_probs.device
    beam = torch.randint(
        1, num_items + 1, (b, cfg.beam_width), generator=generator, device="cpu"
    ).to(device)
    pool_ids = beam.new_zeros(b, 0)
    pool_scores = log_probs.new_zeros(b, 0)
    for _ in range(cfg.propagation_steps):
        neighbours = adjacency[beam].reshape(b, -1)  # [B, W * E]
        scores = _dedupe(neighbours, item_scores(log_probs, codes, neighbours))
        width = min(cfg.beam_width, neighbours.shape[1])
        top = scores.topk(width, dim=1)
        beam = neighbours.gather(1, top.indices)
        # keep the best k seen so far (an item may have been scored at an earlier step too)
        pool_ids = torch.cat([pool_ids, neighbours], 1)
        pool_scores = _dedupe(pool_ids, torch.cat([pool_scores, scores], 1))
        keep = pool_scores.topk(min(k, pool_ids.shape[1]), dim=1).indices
        pool_ids, pool_scores = pool_ids.gather(1, keep), pool_scores.gather(1, keep)
    pool_ids = pool_ids.masked_fill(torch.isinf(pool_scores), 0)
    if pool_ids.shape[1] < k:
        pad = k - pool_ids.shape[1]
        pool_ids = torch.cat([pool_ids, pool_ids.new_zeros(b, pad)], 1)
        pool_scores = torch.cat([pool_scores, pool_scores.new_full((b, pad), float("-inf"))], 1)
    return pool_ids, pool_scores
