"""One evaluator for every recommender: batched ``recommend`` over a split -> metrics.

Ranking is over all items (the literature protocol); ``exclude_seen`` (default off) drops items
already in the user's history from the candidate list before scoring. Generative recommenders may
expose ``reset_candidate_stats()`` and ``candidate_stats`` (counts of generated, invalid and
duplicate sequences) to get invalid/duplicate rates in the output.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from sidrec_core.data.split import Split
from sidrec_core.metrics import (
    DEFAULT_KS,
    candidate_diagnostics,
    encode_ranks,
    per_user_metrics,
    summarize,
    target_ranks,
)
from sidrec_core.progress import Progress


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """``eval`` section."""

    ks: tuple[int, ...] = DEFAULT_KS
    batch_size: int = 256
    exclude_seen: bool = False
    bootstrap: int = 1000  # bootstrap resamples for the 95% CI; 0 = none
    # the one validation-users knob: every stage that validates (each model's per-epoch validation
    # during training, GRPO's, and the valid split of eval_sidlm / eval_etegrec) scores the same
    # fixed seeded subsample of this many users; None (or 0) = every user
    max_valid_users: int | None = None

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")

    def check_catalogue(self, num_items: int) -> None:
        """A cut-off above the number of items ranks the whole catalogue (every metric at it is
        trivially 1); fail naming ``eval.ks`` once the catalogue size is known."""
        over = [k for k in self.ks if k > num_items]
        if over:
            raise ValueError(
                f"eval.ks: cut-off(s) {over} exceed the catalogue's {num_items} items (a list "
                f"that long holds every item); lower eval.ks"
            )


@dataclasses.dataclass
class EvalResult:
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    item_ids: np.ndarray  # [U, max(ks)]
    scores: np.ndarray  # [U, max(ks)]
    ranks: np.ndarray  # [U] 0-based rank of each user's target, inf when not retrieved

    def ranks_record(self) -> str:
        """Per-user ranks as stored on a trial (the seed x user statistics read them)."""
        return encode_ranks(self.ranks, self.item_ids.shape[1])


def _drop_seen(ids: torch.Tensor, scores: torch.Tensor, history: torch.Tensor, k: int):
    """Remove history items from ranked lists ids/scores [B, K'] and keep the first k -> [B, k]."""
    seen = (ids[:, :, None] == history[:, None, :]).any(-1) & (ids > 0)
    order = torch.sort(seen.to(torch.int8), dim=1, stable=True).indices
    ids = torch.gather(ids, 1, order)[:, :k].clone()
    scores = torch.gather(scores, 1, order)[:, :k].clone()
    kept = torch.gather(~seen, 1, order)[:, :k]
    ids[~kept] = 0
    scores[~kept] = float("-inf")
    return ids, scores


def evaluate(
    recommender: Any,
    split: Split,
    cfg: EvalConfig = EvalConfig(),
    device: torch.device | str = "cpu",
    num_items: int | None = None,
    bootstrap: bool = True,
    users: np.ndarray | None = None,
    progress_every: float = 30.0,
) -> EvalResult:
    """Score ``recommender`` on ``split`` (optionally only the rows ``users``).

    Returns metrics keyed ``{split}/{metric}@{k}`` plus ``{split}/users_per_second`` and candidate
    diagnostics (``{split}/coverage`` etc.). Every ``progress_every`` seconds a line logs users
    done, users/s and the ETA (beam decoding over a whole split takes minutes).
    """
    device = torch.device(device)
    if num_items is not None:
        cfg.check_catalogue(num_items)
    rows = np.arange(len(split)) if users is None else np.asarray(users)
    k = max(cfg.ks)
    if hasattr(recommender, "reset_candidate_stats"):
        recommender.reset_candidate_stats()
    module = recommender if isinstance(recommender, torch.nn.Module) else None
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    all_ids, all_scores = [], []
    start = time.perf_counter()
    progress = Progress(len(rows), f"{split.name} {type(recommender).__name__}", progress_every)
    with torch.no_grad():
        for i in range(0, len(rows), cfg.batch_size):
            idx = rows[i : i + cfg.batch_size]
            history = torch.as_tensor(split.histories[idx], device=device)
            batch = {"history": history, "user": torch.as_tensor(split.users[idx], device=device)}
            want = k + history.shape[1] if cfg.exclude_seen else k
            ids, scores = recommender.recommend(batch, want)
            if ids.shape != (len(idx), want):
                raise ValueError(
                    f"recommend(batch, {want}) returned ids of shape {tuple(ids.shape)}, "
                    f"expected {(len(idx), want)}"
                )
            if cfg.exclude_seen:
                ids, scores = _drop_seen(ids, scores, history, k)
            all_ids.append(ids.cpu().numpy())
            all_scores.append(scores.float().cpu().numpy())
            progress.update(len(idx))
    seconds = time.perf_counter() - start
    if module is not None:
        module.train(was_training)
    item_ids = np.concatenate(all_ids) if all_ids else np.zeros((0, k), dtype=np.int64)
    scores = np.concatenate(all_scores) if all_scores else np.zeros((0, k), dtype=np.float32)
    ranks = target_ranks(item_ids, split.targets[rows])
    per_user = per_user_metrics(ranks, cfg.ks)
    metrics = summarize(per_user, split.name, cfg.bootstrap if bootstrap else 0)
    metrics[f"{split.name}/users_per_second"] = len(rows) / max(seconds, 1e-9)
    stats = getattr(recommender, "candidate_stats", None) or {}
    diag = candidate_diagnostics(
        item_ids,
        num_items or int(max(split.targets.max(), 1)),
        stats.get("generated"),
        stats.get("invalid"),
        stats.get("duplicate"),
    )
    metrics.update({f"{split.name}/{key}": value for key, value in diag.items()})
    return EvalResult(metrics, per_user, item_ids, scores, ranks)
