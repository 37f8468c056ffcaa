"""The only MLflow import. One run per stage execution, nested runs per study trial.

Default tracking URI is ``sqlite:///mlflow.db`` in the project root (``MLFLOW_TRACKING_URI``
overrides). Each stage writes ``metrics/<stage>.json`` with its metrics and the MLflow run id so
``dvc.lock`` and MLflow point at each other. ``SIDREC_TRACKING=0`` (or ``enabled=False``) turns
MLflow off, e.g. in unit tests; the metrics JSON is still written.

Metric keys are ``{split}/{metric}@{k}`` everywhere; MLflow forbids ``@`` in names, so in MLflow
(only) the key reads ``{split}/{metric}_at_{k}`` (:func:`mlflow_key`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sidrec_core.config import flatten, params_hash
from sidrec_core.io import write_json
from sidrec_core.utils import peak_accelerator_mb, peak_rss_mb

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "sidrec"


def mlflow_key(key: str) -> str:
    """``test/ndcg@10`` -> ``test/ndcg_at_10`` (MLflow's allowed characters)."""
    return key.replace("@", "_at_")


def tracking_enabled() -> bool:
    return os.environ.get("SIDREC_TRACKING", "1") not in ("0", "false", "False", "off")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


PID_TAG, HOST_TAG, START_TAG = "sidrec.pid", "sidrec.host", "sidrec.pid_start"


class Terminated(SystemExit):
    """SIGTERM arrived: unwinds like ``sys.exit(143)`` so every open run ends as KILLED."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """Raise once; the default action is back in place first, because Python swallows an
    exception raised while it runs a finaliser (a weakref callback during garbage collection),
    and a process must never outlive a second SIGTERM."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated(128 + signum)


def install_sigterm_handler() -> bool:
    """Turn SIGTERM into :class:`Terminated` (only from the main thread, and only where nobody
    installed another handler). Returns whether ours is in place."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        return True
    if current not in (signal.SIG_DFL, None):
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (tells a reused pid apart), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start: str | None = None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return start is None or process_start(pid) in (None, start)


def process_tags() -> dict[str, str]:
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if (start := process_start(os.getpid())) is not None:
        tags[START_TAG] = start
    return tags


def mark_stale_runs() -> list[str]:
    """End as KILLED every RUNNING run whose recorded process on this host is gone (the process
    was killed before it could end its run). Returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri())
    host = socket.gethostname()
    stale = []
    for exp in client.search_experiments():
        for r in client.search_runs(
            [exp.experiment_id], filter_string="attributes.status = 'RUNNING'"
        ):
            tags = r.data.tags
            if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
                continue
            if not pid_alive(int(tags[PID_TAG]), tags.get(START_TAG)):
                client.set_terminated(r.info.run_id, status="KILLED")
                stale.append(r.info.run_id)
    if stale:
        log.warning("marked %d run(s) of killed processes as KILLED: %s", len(stale), stale)
    return stale


def git(*args: str) -> str | None:
    """``git ARGS`` in the project root -> its stdout (None when git fails or is missing)."""
    try:
        out = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> str:
    return (git("rev-parse", "--short", "HEAD") or "").strip() or "unknown"


class Run:
    """A tracked run; a thin wrapper so the rest of the code never imports mlflow."""

    def __init__(self, stage: str, mlflow_run: Any | None, device: torch.device | None):
        self.stage = stage
        self._run = mlflow_run
        self.device = device
        self.metrics: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.started = time.perf_counter()

    @property
    def run_id(self) -> str | None:
        return self._run.info.run_id if self._run is not None else None

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log numeric metrics; non-finite or non-numeric values are kept in JSON only."""
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        if step is None:
            self.metrics.update(clean)
        if self._run is not None and clean:
            import mlflow

            finite = {mlflow_key(k): v for k, v in clean.items() if math.isfinite(v)}
            mlflow.log_metrics(finite, step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        if self._run is not None:
            import mlflow

            flat = {k: str(v)[:500] for k, v in flatten(params).items()}
            items = list(flat.items())
            for i in range(0, len(items), 100):
                mlflow.log_params(dict(items[i : i + 100]))

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._run is not None:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._run is not None and Path(path).exists():
            import mlflow

            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def record(self, **values: Any) -> None:
        """Non-metric values (lists, strings) for the metrics JSON, e.g. per-level utilisation."""
        self.extra.update(values)
        numeric = {k: v for k, v in values.items() if _is_number(v)}
        self.log_metrics(numeric)
        for key, value in values.items():
            if isinstance(value, (list, tuple)):
                self.log_metrics({f"{key}/{i}": v for i, v in enumerate(value) if _is_number(v)})


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_exists(run_id: str) -> bool:
    """Whether ``run_id`` is in the current tracking store."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mlflow.get_run(run_id)
    except MlflowException:
        return False
    return True


@contextlib.contextmanager
def start_run(
    stage: str,
    params: dict[str, Any],
    *,
    dataset: str,
    profile: str = "full",
    metrics_dir: str | Path | None = "metrics",
    device: torch.device | None = None,
    nested: bool = False,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    enabled: bool | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
) -> Iterator[Run]:
    """Open a tracked run for ``stage``; on exit log wall time and peak memory and write
    ``<metrics_dir>/<stage>.json`` (set ``metrics_dir=None`` to skip the JSON).

    A run opened while another is active in this process nests under it (a stage called inside
    an ablation trial becomes the trial run's child); ``parent_run_id`` nests under a run opened
    by another process (study workers); ``run_id`` reopens an existing run (a resumed study)."""
    enabled = tracking_enabled() if enabled is None else enabled
    mlflow_run = None
    if enabled:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        active = mlflow.active_run() is not None
        if not active:
            install_sigterm_handler()
            mark_stale_runs()
            mlflow.set_experiment(os.environ.get("SIDREC_EXPERIMENT", EXPERIMENT))
        nested = nested or active or parent_run_id is not None
        if run_id is not None and not run_exists(run_id):
            # a study storage committed on another machine names a run of that machine's store
            log.warning("run %s absent from %s; opening a new run", run_id, tracking_uri())
            run_id = None
        mlflow_run = mlflow.start_run(
            run_id=run_id,
            run_name=None if run_id else run_name or stage,
            nested=nested,
            parent_run_id=parent_run_id,
        )
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run = Run(stage, mlflow_run, device)
    status = "FAILED"
    try:
        run.set_tags(
            {
                "stage": stage,
                "dataset": dataset,
                "profile": profile,
                "git_commit": git_commit(),
                "params_hash": params_hash(params),
                "synthetic": dataset == "synthetic",
                **process_tags(),
                **(tags or {}),
            }
        )
        if run_id is None:  # a reopened run keeps the params it was started with
            run.log_params(params)
        yield run
        status = "FINISHED"
    except (Terminated, KeyboardInterrupt):
        status = "KILLED"
        raise
    finally:
        # A caller that measured its own cost (an ablation trial: peak since the trial began,
        # not the worker process's lifetime peak) keeps its figures.
        cost = {"wall_seconds": time.perf_counter() - run.started, "peak_rss_mb": peak_rss_mb()}
        run.log_metrics({k: v for k, v in cost.items() if k not in run.metrics})
        if device is not None and (acc := peak_accelerator_mb(device)) is not None:
            run.log_metrics({"peak_cuda_mb": acc})
        if metrics_dir is not None and status == "FINISHED":
            # a stage that learns its dataset from its inputs (the report) records it itself
            payload = {
                "dataset": dataset,
                **run.extra,
                **run.metrics,
                "mlflow_run_id": run.run_id,
                "profile": profile,
            }
            write_json(Path(metrics_dir) / f"{stage}.json", payload)
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run(status=status)
