"""Per-epoch training checkpoints that a re-run resumes from.

A checkpoint holds everything that decides the rest of a run: model, optimiser and LR-schedule
state, the python / numpy / torch RNG states, the early-stopping state and the state of any
caller-supplied object with ``state_dict`` / ``load_state_dict`` (e.g. a negative sampler whose
generator advances every batch). It is written atomically and loaded with ``weights_only=True``,
so only tensors and plain containers are stored (numpy arrays become tensors).

A ``fingerprint`` (hash of the caller's params and the training config) guards against resuming
a run with other settings: on a mismatch the checkpoint is ignored and training starts fresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidrec_core.io import save_torch

log = logging.getLogger(__name__)


def fingerprint(*parts: Any) -> str:
    """sha256 of JSON-serialisable ``parts`` (dicts sorted by key)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def to_plain(obj: Any) -> Any:
    """numpy arrays and scalars -> tensors / python numbers, recursively (for weights_only)."""
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Inverse of :func:`to_plain`."""
    if isinstance(obj, dict):
        if set(obj) == {"__ndarray__"}:
            return obj["__ndarray__"].numpy()
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_plain(v) for v in obj)
    return obj


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": to_plain(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(from_plain(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch(path, to_plain(state))


def load_checkpoint(path: str | Path, expected: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists and carries fingerprint ``expected``; else None
    (a different fingerprint or an unreadable file is logged and ignored)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a checkpoint from another version of the code: start over
        log.warning("resume checkpoint %s unreadable (%s): starting fresh", path, exc)
        return None
    found = state.get("fingerprint")
    if found != expected:
        log.warning(
            "resume checkpoint %s was written with other params (fingerprint %s, now %s): "
            "starting fresh",
            path,
            str(found)[:12],
            expected[:12],
        )
        return None
    return from_plain(state)
