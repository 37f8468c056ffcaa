"""The only MLflow import. One run per stage execution, nested runs per study trial.

Default tracking URI is ``sqlite:///mlflow.db`` in the project root (``MLFLOW_TRACKING_URI``
overrides). Each stage writes ``metrics/<stage>.json`` with its metrics and the MLflow run id so
``dvc.lock`` and MLflow point at each other. ``SIDREC_TRACKING=0`` (or ``enabled=False``) turns
MLflow off, e.g. in unit tests; the metrics JSON is still written.

Metric keys are ``{split}/{metric}@{k}`` everywhere; MLflow forbids ``@`` in names, so in MLflow
(only) the key reads ``{split}/{metric}_at_{k}`` (:func:`mlflow_key`). Every run logs the headline
figures first (:func:`headline_first`): MLflow's compare view colours its parallel-coordinates
panel by the first metric a run logged.

:func:`sync_runs` writes runs rebuilt from stored results (a study's committed storage) into any
tracking store, idempotently: each carries a stable key, and a run whose content is unchanged is
left alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sidrec_core.config import ConfigError, flatten, params_hash
from sidrec_core.io import write_json
from sidrec_core.lifecycle import Terminated, install_sigterm_handler, orphaned, process_tags
from sidrec_core.metrics import HEADLINE, OBJECTIVE
from sidrec_core.perf import git_commit
from sidrec_core.utils import peak_accelerator_mb, peak_rss_mb

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = "sidrec"


def mlflow_key(key: str) -> str:
    """``test/ndcg@10`` -> ``test/ndcg_at_10`` (MLflow's allowed characters)."""
    return key.replace("@", "_at_")


def headline_first(keys: list[str], objective: str = OBJECTIVE) -> list[str]:
    """``keys`` with the headline test NDCG@10 first, then the objective, then test HR@10 (a
    model's prefixed keys, ``sasrec/test/ndcg@10``, count), then the rest in their order.

    MLflow's compare view opens its parallel-coordinates panel on one metric, the first one the
    run logged, and its tables sort keys alphabetically: the logging order is the one place the
    project chooses what a reader sees first."""
    first = [k for k in keys if k.endswith(HEADLINE[0])]
    first += [k for k in keys if k == objective]
    first += [k for k in keys if k.endswith(HEADLINE[1:])]
    first = list(dict.fromkeys(first))
    return first + [k for k in keys if k not in first]


def tracking_enabled() -> bool:
    return os.environ.get("SIDREC_TRACKING", "1") not in ("0", "false", "False", "off")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


@functools.cache
def open_store(uri: str) -> None:
    """Create the MLflow store's tables once per process. On SQLite the first opening runs
    MLflow's migrations, and two processes migrating one new file at once fail ("table ...
    already exists"), so openings of a SQLite store queue on an exclusive lock on
    ``<store>.lock`` beside it. A store that cannot be opened is a ``ConfigError`` naming it."""
    import sqlalchemy.exc
    from mlflow.tracking import MlflowClient

    lock = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        lock = open(uri.removeprefix("sqlite:///") + ".lock", "a")  # noqa: SIM115
    with lock as fh:
        if fh is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except sqlalchemy.exc.OperationalError as exc:
            raise ConfigError(f"MLflow store {uri}: {exc.orig}") from exc


PARENT_ENV = "SIDREC_PARENT_RUN_ID"  # the run a process's first run nests under


def mark_stale_runs() -> list[str]:
    """End as KILLED every RUNNING run whose owner process on this host is gone
    (:func:`~sidrec_core.lifecycle.orphaned`: it was killed before it could end its run).
    Returns their ids."""
    from mlflow.tracking import MlflowClient

    open_store(tracking_uri())
    client = MlflowClient(tracking_uri())
    stale = []
    for exp in client.search_experiments():
        running = client.search_runs(
            [exp.experiment_id], filter_string="attributes.status = 'RUNNING'"
        )
        for r in running:
            if orphaned(r.data.tags):
                client.set_terminated(r.info.run_id, status="KILLED")
                stale.append(r.info.run_id)
    if stale:
        log.warning("marked %d run(s) of killed processes as KILLED: %s", len(stale), stale)
    return stale


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
        clean = {
            k: float(metrics[k]) for k in headline_first(list(metrics)) if _is_number(metrics[k])
        }
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
    by another process (study workers; a stage DVC runs for a trial reads it from
    ``SIDREC_PARENT_RUN_ID``); ``run_id`` reopens an existing run (a resumed study)."""
    enabled = tracking_enabled() if enabled is None else enabled
    mlflow_run = None
    if enabled:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        active = mlflow.active_run() is not None
        if not active and parent_run_id is None:
            # a stage that DVC runs for a study trial nests under the trial's run
            parent_run_id = os.environ.get(PARENT_ENV) or None
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


KEY_TAG, CONTENT_TAG, NOTE_TAG = "sidrec.key", "sidrec.content_sha256", "mlflow.note.content"
MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value (the run description is a tag)
MAX_PARAM_CHARS = 500
BATCH = 100  # MLflow's log_batch takes at most 100 params or tags and 1000 metrics a call


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A finished run rebuilt from stored results. ``key`` names it across rebuilds; ``metrics``
    are logged in their order (put the headline first: :func:`headline_first`); times are
    epoch milliseconds; ``history`` holds per-step series (key -> {step: value})."""

    key: str
    name: str
    tags: dict[str, str]
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    history: dict[str, dict[int, float]] = dataclasses.field(default_factory=dict)
    status: str = "FINISHED"  # FINISHED | FAILED | KILLED | SCHEDULED | RUNNING
    start_ms: int | None = None
    end_ms: int | None = None
    description: str = ""
    artifacts: tuple[tuple[Path, str], ...] = ()  # (file, artifact folder)

    def content_sha256(self, parent_id: str | None = None) -> str:
        """sha256 of everything the run shows (artifacts by content) and of its parent."""
        body = dataclasses.asdict(self)
        body["artifacts"] = [
            (str(folder), path.name, hashlib.sha256(path.read_bytes()).hexdigest())
            for path, folder in self.artifacts
        ]
        body["parent"] = parent_id
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a SQLite store, ``<its folder>/mlruns/<experiment>``: MLflow's default is
    ``./mlruns`` of whatever folder the command ran in. Other stores keep their default."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).resolve().parent
    return str(folder / "mlruns" / experiment.replace("/", "-"))


def _note(text: str) -> str:
    """A run description within MLflow's tag limit, saying so when cut."""
    if len(text) <= MAX_TAG_CHARS:
        return text
    return text[: MAX_TAG_CHARS - 80] + "\n\n(cut at MLflow's 8,000-character limit)"


def _keyed_runs(client: Any, experiment_id: str) -> dict[str, Any]:
    """Active runs of the experiment that carry :data:`KEY_TAG`, by key."""
    out: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], f"tags.`{KEY_TAG}` != ''", max_results=1000, page_token=token
        )
        out.update({r.data.tags[KEY_TAG]: r for r in page})
        token = page.token
        if not token:
            return out


def _create_run(
    client: Any, experiment_id: str, rec: RunRecord, content: str, parent_id: str | None
) -> str:
    from mlflow.entities import Metric, Param

    tags = {**rec.tags, KEY_TAG: rec.key, CONTENT_TAG: content, "mlflow.runName": rec.name}
    if rec.description:
        tags[NOTE_TAG] = _note(rec.description)
    if parent_id is not None:
        tags["mlflow.parentRunId"] = parent_id
    run = client.create_run(experiment_id, start_time=rec.start_ms, tags=tags, run_name=rec.name)
    run_id = run.info.run_id
    at = rec.end_ms or rec.start_ms or 0
    metrics = [Metric(mlflow_key(k), v, at, 0) for k, v in rec.metrics.items()]
    metrics += [
        Metric(mlflow_key(k), v, at, step)
        for k, series in rec.history.items()
        for step, v in sorted(series.items())
    ]
    params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in rec.params.items()]
    for i in range(0, max(len(metrics), len(params)), BATCH):
        client.log_batch(run_id, metrics=metrics[i : i + BATCH], params=params[i : i + BATCH])
    _log_artifacts(client, run_id, rec)
    client.set_terminated(run_id, status=rec.status, end_time=rec.end_ms)
    return run_id


def _log_artifacts(client: Any, run_id: str, rec: RunRecord) -> None:
    for path, folder in rec.artifacts:
        client.log_artifact(run_id, str(path), artifact_path=folder or None)


def _update_parent(client: Any, run: Any, rec: RunRecord, content: str) -> None:
    """A parent run is updated in place (its children point at it): tags, description,
    artifacts and end. Parent records carry no params or metrics, which MLflow cannot change."""
    from mlflow.entities import RunTag

    tags = {**rec.tags, CONTENT_TAG: content, "mlflow.runName": rec.name}
    if rec.description:
        tags[NOTE_TAG] = _note(rec.description)
    items = [RunTag(k, str(v)) for k, v in tags.items() if run.data.tags.get(k) != str(v)]
    for i in range(0, len(items), BATCH):
        client.log_batch(run.info.run_id, tags=items[i : i + BATCH])
    _log_artifacts(client, run.info.run_id, rec)
    client.set_terminated(run.info.run_id, status=rec.status, end_time=rec.end_ms)


def sync_runs(
    experiment: str,
    parent: RunRecord,
    children: list[RunRecord],
    *,
    uri: str | None = None,
) -> dict[str, Any]:
    """Make ``experiment`` in the store at ``uri`` (default :func:`tracking_uri`) hold ``parent``
    and, nested under it, exactly ``children``: a run whose key and content are already there is
    kept; a changed parent is updated in place and a changed child replaced (MLflow params and
    metrics cannot be rewritten); a child run of this parent whose key is no longer given is
    deleted. Returns counts of runs ``created``, ``updated``, ``replaced``, ``unchanged`` and
    ``deleted``, and the ``experiment_id``."""
    from mlflow.tracking import MlflowClient

    if parent.params or parent.metrics or parent.history:
        raise ValueError(f"parent run {parent.key}: params and metrics go on its children")
    keys = [parent.key, *(c.key for c in children)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"run keys repeat under {parent.key}: {sorted(keys)}")
    uri = uri or tracking_uri()
    open_store(uri)
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    exp_id = (
        found.experiment_id
        if found
        else client.create_experiment(experiment, _artifact_location(uri, experiment))
    )
    existing = _keyed_runs(client, exp_id)
    counts: dict[str, Any] = dict.fromkeys(
        ("created", "updated", "replaced", "unchanged", "deleted"), 0
    )
    content = parent.content_sha256()
    old = existing.get(parent.key)
    if old is None:
        parent_id = _create_run(client, exp_id, parent, content, None)
        counts["created"] += 1
    else:
        parent_id = old.info.run_id
        if old.data.tags.get(CONTENT_TAG) == content:
            counts["unchanged"] += 1
        else:
            _update_parent(client, old, parent, content)
            counts["updated"] += 1
    for rec in children:
        content = rec.content_sha256(parent_id)
        old = existing.get(rec.key)
        if old is not None and old.data.tags.get(CONTENT_TAG) == content:
            counts["unchanged"] += 1
            continue
        if old is not None:
            client.delete_run(old.info.run_id)
        _create_run(client, exp_id, rec, content, parent_id)
        counts["replaced" if old is not None else "created"] += 1
    given = set(keys)
    for key, run in existing.items():
        if key not in given and run.data.tags.get("mlflow.parentRunId") == parent_id:
            client.delete_run(run.info.run_id)
            counts["deleted"] += 1
    return {**counts, "experiment_id": exp_id}
