"""Plain-dict registry of recommenders (after RecBole's model lookup, without the magic).

Each entry maps a name to a factory ``(loo, params) -> recommender``: ``loo`` is the leave-one-out
split (catalogue size, training popularity), ``params`` the full params dict (each factory reads
its own section). Trainable models come back untrained; their stage function trains them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidrec_core.config import build
from sidrec_core.data.split import LeaveOneOut
from sidrec_core.models.baselines import MostPop, RandomRec
from sidrec_core.models.sasrec import SASRecConfig
from sidrec_core.models.sasrec_stage import build_sasrec, sid_dir_from

Factory = Callable[[LeaveOneOut, dict[str, Any]], Any]


def _seed(params: dict[str, Any]) -> int:
    return int((params.get("base") or {}).get("seed", 0))


def _sasrec(loo: LeaveOneOut, params: dict[str, Any]) -> Any:
    cfg = build(SASRecConfig, params.get("sasrec"), "sasrec")
    return build_sasrec(cfg, loo, sid_dir_from(params))


def _sidlm(loo: LeaveOneOut, params: dict[str, Any]) -> Any:
    # imported lazily: transformers is slow to import and only the SID LM needs it
    from sidrec_core.data.dataset import DataConfig
    from sidrec_core.models.sidlm import SIDLMConfig, build_sidlm
    from sidrec_core.sid.table import SIDTable

    cfg = build(SIDLMConfig, params.get("sidlm"), "sidlm")
    data = build(DataConfig, params.get("data"), "data")
    return build_sidlm(cfg, SIDTable.load(cfg.sid_dir, num_items=loo.num_items), data.max_history)


RECOMMENDERS: dict[str, Factory] = {
    "mostpop": lambda loo, params: MostPop(loo),
    "random": lambda loo, params: RandomRec(loo.num_items, _seed(params)),
    "sasrec": _sasrec,
    "sidlm": _sidlm,
}


def get_recommender(name: str, loo: LeaveOneOut, params: dict[str, Any] | None = None) -> Any:
    """Build recommender ``name``; an unknown name fails listing the registered ones."""
    if name not in RECOMMENDERS:
        raise ValueError(
            f"unknown recommender {name!r}; valid choices: {', '.join(sorted(RECOMMENDERS))}"
        )
    return RECOMMENDERS[name](loo, params or {})
