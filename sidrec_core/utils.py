"""Seeds, device resolution and resource measurement, shared by every stage."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from collections.abc import Iterator

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). Seed 0 is a valid seed."""
    if seed is None or seed < 0:
        raise ValueError(f"base.seed must be an integer >= 0 (0 is valid), got {seed}")
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto|cpu|cuda|npu`` -> a torch device. ``torch_npu`` is imported only when asked for.

    ``auto`` prefers CUDA, then an already-imported NPU backend, then CPU.
    """
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("base.device: 'cuda' requested but torch.cuda.is_available() is False")
        return torch.device("cuda")
    if name == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the 'npu' device)
        except ImportError as exc:
            raise ValueError(
                "base.device: 'npu' requested but torch_npu is not installed: "
                "pip install -e '.[npu]'"
            ) from exc
        if not torch.npu.is_available():  # type: ignore[attr-defined]
            raise ValueError("base.device: 'npu' requested but no Ascend NPU is available")
        return torch.device("npu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if "torch_npu" in sys.modules and torch.npu.is_available():  # type: ignore[attr-defined]
            return torch.device("npu")
        return torch.device("cpu")
    raise ValueError(f"base.device: expected one of auto, cpu, cuda, npu; got {name!r}")


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on accelerators; a no-op on CPU (CPU bf16 is slower on most machines)."""
    if not enabled or device.type == "cpu":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_accelerator_mb(device: torch.device) -> float | None:
    """CUDA max allocated memory in MiB, or None off CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def set_threads(num_threads: int) -> None:
    """Limit torch intra-op threads (0 leaves the default)."""
    if num_threads > 0:
        torch.set_num_threads(num_threads)


@contextlib.contextmanager
def no_grad_eval(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode without grads, restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
