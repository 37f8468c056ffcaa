"""One trial's stages run by DVC: ``dvc repro <stages>`` in a throw-away git worktree of this
working copy, with the trial's ``params.yaml`` and this working copy's DVC cache, so DVC's
run-cache restores any stage it ran before (upstream stages at the defaults, a resumed trial's
finished stages, a level another study measured) with the metrics file written when it ran.

Measured on smoke (one ``eval_sidlm`` trial, 2 cores at load 5): ~5 s when DVC restores every
stage, ~15 s when eval_sidlm runs; ``dvc exp run --temp -S`` took ~15 s / ~27 s and ``--queue``
~17 s a trial.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sidrec_core.config import flatten, params_hash
from sidrec_core.io import write_json, write_text
from sidrec_core.lifecycle import pid_alive
from sidrec_core.stages import resolve_params
from sidrec_core.studies import trial_resume
from sidrec_core.studies.pipeline import (
    PROJECT_ROOT,
    Stage,
    ancestors,
    inside,
    load_pipeline,
    ordered,
)
from sidrec_core.tracking import tracking_uri

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

RAN = re.compile(r"^Running stage '([^']+)'")
PRUNED = "TrialPruned: "  # a stage's pruner stopped it (its exception in the output)
RUN_FIELDS = ("dataset", "mlflow_run_id", "profile")  # about the run, not measured by it
UPSTREAM_OUTS = "upstream_outs"  # trial metric: the cache hashes of its upstream stages' outs
OUTS = "outs"  # trial metric: the cache hashes of the outs of the stages it ran or restored
UPSTREAM, UPSTREAM_SPENT = "upstream_seconds", "upstream_spent_seconds"  # their cost, part ran


class StageFailed(RuntimeError):
    """``dvc repro`` of a trial failed; ``lines`` is its output."""

    def __init__(self, message: str, lines: list[str]):
        super().__init__(message)
        self.lines = lines

    @property
    def pruned(self) -> str | None:
        """The message of the stage's pruner where it stopped the stage ("pruned after epoch
        N"), else None."""
        found = [line for line in self.lines if PRUNED in line]
        return found[-1].split(PRUNED)[-1] if found else None


def dvc_command() -> str:
    """The ``dvc`` of this interpreter's environment, else the one on PATH."""
    local = Path(sys.executable).with_name("dvc")
    return str(local) if local.exists() else "dvc"


def git(*args: str, cwd: Path = PROJECT_ROOT, tries: int = 8) -> str:
    """``git ARGS`` in ``cwd``. Two workers starting together both refresh the repository's index
    (``stash create``, ``worktree add``); the one that finds the other's ``index.lock`` (named in
    git's error, or left on disk: ``stash create`` then fails without a word) waits and tries
    again rather than failing its trial."""
    lock = Path(cwd) / ".git" / "index.lock"
    for attempt in range(tries):
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
        if not out.returncode:
            return out.stdout.strip()
        locked = "index.lock" in out.stderr or lock.exists()
        if not locked or attempt == tries - 1:
            break
        time.sleep(0.25 * 2**attempt)
    why = out.stderr.strip() or f"exit {out.returncode}"
    why += f" ({lock} is held by another git process)" if locked and lock.name not in why else ""
    raise RuntimeError(f"git {' '.join(args)} in {cwd}: {why}")


@functools.cache
def code_commit() -> str:
    """HEAD plus this working copy's changes to tracked files (``git stash create``), once."""
    anyone = ("-c", "user.name=sidrec", "-c", "user.email=sidrec@localhost")  # a dangling object
    return git(*anyone, "stash", "create") or git("rev-parse", "HEAD")


def cache_dir() -> str:
    """The DVC cache trials use: ``SIDREC_DVC_CACHE``, else this working copy's."""
    return os.environ.get("SIDREC_DVC_CACHE") or _repo_cache_dir()


@functools.cache
def _repo_cache_dir() -> str:
    out = subprocess.run([dvc_command(), "cache", "dir"], cwd=PROJECT_ROOT, capture_output=True)
    return out.stdout.decode().strip() or str(PROJECT_ROOT / ".dvc" / "cache")


def data_env(params: dict[str, Any]) -> dict[str, str]:
    """``SIDREC_DATA_DIR`` for a dataset git does not hold (a worktree lacks it)."""
    from sidrec_core.data.dataset import SHIPPED_DATASETS, resolve_dataset_dir

    name = str(resolve_params(params)["data"]["name"])
    if name == "synthetic" or os.environ.get("SIDREC_DATA_DIR"):
        return {}
    found = resolve_dataset_dir(name)
    shipped = inside(str(found), str(SHIPPED_DATASETS))
    return {} if shipped else {"SIDREC_DATA_DIR": str(found.parent)}


def extra_deps(
    run: tuple[str, ...], reuse: tuple[str, ...], params: dict[str, Any], pipeline: dict[str, Stage]
) -> dict[str, list[str]]:
    """Inputs a run stage reads through a path in its params sections that names an out of an
    earlier stage of the trial but ``dvc.yaml`` does not list (``sid.embeddings`` -> the
    collaborative table): added as deps in the trial's ``dvc.yaml``, so DVC keys the stage by
    them."""
    flat = flatten(resolve_params(params))
    before, extra = list(reuse), {}

    def depth(stage: Stage, key: str) -> int:  # how specific a params entry naming key is
        return max(
            (p.count(".") + 1 for p in stage.params if key == p or key.startswith(p + ".")),
            default=0,
        )

    # a key belongs to the stage whose params name it most specifically (rpg.sid.* to
    # build_rpg_sids, not to eval_rpg, which reads all of rpg)
    deepest = {
        key: max(depth(s, key) for s in pipeline.values())
        for key, value in flat.items()
        if isinstance(value, str)
    }
    for name in ordered(run, pipeline):
        stage = pipeline[name]
        outs = [o for s in before for o in pipeline[s].outs]
        for key, most in deepest.items():
            mine = depth(stage, key)
            if not mine or mine < most:
                continue
            path = flat[key].rstrip("/")
            listed = any(inside(path, d) or inside(d, path) for d in stage.deps)
            if not listed and any(inside(path, o) for o in outs):
                extra.setdefault(name, []).append(path)
        before.append(name)
    return extra


def _jsonable(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Numbers (NaN/inf -> None), strings, None, lists of numbers; nested keys joined by ``/``."""
    out: dict[str, Any] = {}
    for key, v in metrics.items():
        k = prefix + key
        if isinstance(v, dict):
            out.update(_jsonable(v, f"{k}/"))
        elif v is None or isinstance(v, (bool, str)):
            out[k] = v
        elif isinstance(v, (int, float)):
            out[k] = float(v) if math.isfinite(v) else None
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out[k] = [float(x) for x in v]
    return out


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the worker dies (Linux ``PR_SET_PDEATHSIG``)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _repro(tree: Path, targets: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """``dvc repro targets`` in ``tree``, output passed on to stderr -> (exit, lines). DVC and its
    stage form one process group that ends with the worker."""
    proc = subprocess.Popen(
        [dvc_command(), "repro", *targets],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    (tree.parent / "pgid").write_text(str(proc.pid))  # for the sweep, should the worker die
    lines = []
    try:
        for line in proc.stdout or ():
            sys.stderr.write(line)
            lines.append(line.rstrip("\n"))
        return proc.wait(), lines
    finally:
        end_group(proc.pid)  # the stage DVC started, if it is still running
        proc.wait()


def add_worktree(tree: Path, commit: str, attempts: int = 3) -> None:
    """``git worktree add``, retried after a pause: a worker killed inside its own add leaves git
    writing for a moment ("Could not write new index file")."""
    for attempt in range(attempts):
        try:
            git("worktree", "add", "--quiet", "--detach", str(tree), commit)
            return
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            with contextlib.suppress(RuntimeError):
                git("worktree", "remove", "--force", "--force", str(tree))
            shutil.rmtree(tree, ignore_errors=True)
            git("worktree", "prune")
            time.sleep(2.0 * (attempt + 1))


def _group_running(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (a zombie is not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rpartition(")")[2].split()  # state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                return True
    return False


def end_group(pgid: int, wait: float = 5.0) -> None:
    """SIGKILL process group ``pgid`` and wait (up to ``wait`` s) until none of it runs: a
    process killed mid-write can still add a file to the tree that is about to be removed."""
    deadline = time.monotonic() + wait
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
        while _group_running(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def remove_worktree(tree: Path, attempts: int = 3) -> None:
    """Remove the worktree ``tree`` and its folder; never raises (a file another process is
    still writing there fails ``git worktree remove``: tried again, then deleted and pruned)."""
    for attempt in range(attempts):
        done = subprocess.run(
            ["git", "worktree", "remove", "--force", "--force", str(tree)],
            cwd=PROJECT_ROOT,
            capture_output=True,
        )
        if done.returncode == 0 or not tree.exists():
            break
        time.sleep(0.5 * (attempt + 1))
    shutil.rmtree(tree.parent, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=PROJECT_ROOT, capture_output=True)


def sweep_worktrees() -> None:
    """Remove the trial worktrees of workers that died (a SIGKILL skips their cleanup), ending
    the stage a dead worker's DVC left running; a tree that cannot be removed at once never
    fails the trial that sweeps it."""
    for line in git("worktree", "list", "--porcelain").splitlines():
        found = re.search(r"^worktree (.*/sidrec-trial-(\d+)-[^/]+)/repo$", line)
        if found and not pid_alive(int(found[2])):
            with contextlib.suppress(OSError, ValueError):  # a stage still running for nobody
                end_group(int(Path(found[1], "pgid").read_text()))
            # twice forced: a worker killed inside `git worktree add` leaves its tree locked
            remove_worktree(Path(found[1], "repo"))
    git("worktree", "prune")


def upstream_cost(
    folder: Path, lock: dict[str, Any], stages: tuple[str, ...], ran: set[str]
) -> dict[str, Any]:
    """What the trial's upstream ``stages`` cost: ``upstream_seconds``, the wall time
    they recorded when they ran (here or wherever DVC restored them from), the part that ran in
    this trial (``upstream_spent_seconds``) and the cache hashes of their outs
    (``upstream_outs``): a worker's time budget reads whether this machine's DVC cache holds them
    (:func:`cached`) before it starts the same seed's next trial."""
    walls, spent = 0.0, 0.0
    for name in stages:
        path = folder / "metrics" / f"{name}.json"  # a stage that records none costs nothing
        stored = json.loads(path.read_text()) if path.exists() else {}
        wall = float(stored.get("wall_seconds") or 0.0)
        walls, spent = walls + wall, spent + (wall if name in ran else 0.0)
    return {UPSTREAM: walls, UPSTREAM_SPENT: spent, UPSTREAM_OUTS: outs_of(lock, stages)}


def outs_of(lock: dict[str, Any], stages: tuple[str, ...]) -> list[str]:
    """The cache hashes ``lock`` records for the outs ``dvc.yaml`` declares of ``stages``."""
    pipeline = load_pipeline()
    return [
        o["md5"]
        for name in stages
        for o in lock[name].get("outs", [])
        if o["path"] in pipeline[name].outs and "md5" in o
    ]


def restorable(t: FrozenTrial) -> bool:
    """Whether DVC's run-cache would restore trial ``t``'s stages here for another study that
    runs them alike: this machine's DVC cache holds the outs it recorded, its upstream's too (a
    trial from another machine trains again). Assumed so where there is no evidence: a trial
    from before outs were recorded, or stages whose outs DVC does not cache (metrics only)."""
    outs = t.user_attrs.get(OUTS)
    return outs is None or cached([*outs, *(t.user_attrs.get(UPSTREAM_OUTS) or [])])


def cached(hashes: list[str]) -> bool:
    """Whether this working copy's DVC cache holds every out hash in ``hashes`` (``<md5>`` or
    ``<md5>.dir``, as ``dvc.lock`` writes them)."""
    root = Path(cache_dir()) / "files" / "md5"
    return all((root / h[:2] / h[2:]).exists() for h in hashes)


def trial_metrics(
    folder: Path,
    targets: list[str],
    ran: set[str],
    key: str,
    trial_dir: Path,
    upstream: dict[str, Any] | None = None,
    earlier: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The merged figures of ``folder/metrics/<target>.json`` (see :func:`run_trial`) and the
    ``upstream`` cost; ``ran``: the stages that ran rather than came from the cache;
    ``earlier``: the training of earlier attempts the stages resumed (:mod:`~.trial_resume`)."""
    merged: dict[str, Any] = {}
    walls, peaks, spent = [], [], 0.0
    for name in targets:
        stored = json.loads((folder / "metrics" / f"{name}.json").read_text())
        metrics = {k: v for k, v in _jsonable(stored).items() if k not in RUN_FIELDS}
        write_json(trial_dir / "metrics" / f"{name}.json", metrics)
        walls.append(metrics.pop("wall_seconds"))
        peaks.append(metrics.pop("peak_rss_mb"))
        spent += walls[-1] if name in ran else 0.0
        merged |= {**metrics, f"{name}/wall_seconds": walls[-1], f"{name}/peak_rss_mb": peaks[-1]}
    merged |= {"wall_seconds": float(sum(walls)), "peak_rss_mb": float(max(peaks))}
    merged |= {"cached_stages": float(len(set(targets) - ran)), "spent_seconds": spent}
    merged["trial_key"] = key
    merged |= (upstream or {}) | (earlier or {})
    write_json(trial_dir / "trial_metrics.json", merged)
    return merged


def resume_folder(run: tuple[str, ...], reuse: tuple[str, ...], params: dict[str, Any]) -> Path:
    """Where a trial of the ``run`` stages (after ``reuse``) at ``params`` keeps its training's
    resume state on this machine, with this working copy's code (:mod:`~.trial_resume`)."""
    pipeline = load_pipeline()
    targets = ordered(run, pipeline)
    code = git("ls-tree", code_commit(), "--", *trial_resume.code_deps(targets))
    extra = extra_deps(run, reuse, params, pipeline)
    cache = cache_dir()
    return trial_resume.resume_root(cache) / trial_resume.resume_key(code, targets, params, extra)


def run_trial(
    run: tuple[str, ...],
    reuse: tuple[str, ...],
    params: dict,
    trial_dir: Path,
    env: dict | None = None,
) -> dict[str, Any]:
    """Run the ``run`` stages (and, as DVC decides, their upstream) at ``params`` -> their merged
    metrics (a later stage's key wins) with ``<stage>/wall_seconds``, ``<stage>/peak_rss_mb``,
    the totals, ``cached_stages`` (restored by DVC), ``spent_seconds`` (of the stages DVC ran),
    the upstream stages' cost (:func:`upstream_cost`) and ``trial_key`` (DVC's run-cache key:
    the stages' lock entries without outs); copied under ``trial_dir``. ``env`` is added to the
    stages' environment."""
    pipeline = load_pipeline()
    resolve_params(params)  # a bad key fails here, naming it, not inside DVC
    sweep_worktrees()
    trial_resume.sweep(trial_resume.resume_root(cache_dir()))
    parent = Path(tempfile.mkdtemp(prefix=f"sidrec-trial-{os.getpid()}-"))
    tree = parent / "repo"
    try:
        add_worktree(tree, code_commit())
        cache = cache_dir()
        site = tree / ".dvc" / "tmp" / "site"
        config = f"[cache]\n    dir = {cache}\n[core]\n    site_cache_dir = {site}\n"
        write_text(tree / ".dvc" / "config.local", config)
        write_text(tree / "params.yaml", yaml.safe_dump(params, sort_keys=False))
        extra = extra_deps(run, reuse, params, pipeline)
        if extra:
            spec = yaml.safe_load((tree / "dvc.yaml").read_text())
            for name, paths in extra.items():
                spec["stages"][name].setdefault("deps", []).extend(paths)
            write_text(tree / "dvc.yaml", yaml.safe_dump(spec, sort_keys=False))
        stage_env = {
            **os.environ,
            # each stage's `python` is this interpreter, activated or not
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(tree),
            "MLFLOW_TRACKING_URI": tracking_uri(),
            **data_env(params),
            **(env or {}),
        }
        targets = ordered(run, pipeline)
        keep = resume_folder(run, reuse, params)
        saved = trial_resume.link(tree, keep)
        code, lines = _repro(tree, targets, stage_env)
        if code:
            tail = " | ".join(lines[-5:])
            failed = StageFailed(
                f"dvc repro {' '.join(targets)} failed (exit {code}): {tail}", lines
            )
            if failed.pruned:
                trial_resume.discard(keep)
            raise failed
        ran = {m[1] for line in lines if (m := RAN.match(line))}
        lock = yaml.safe_load((tree / "dvc.lock").read_text())["stages"]
        key = params_hash({n: {k: v for k, v in lock[n].items() if k != "outs"} for n in targets})
        before = tuple(n for n in ancestors(targets, pipeline) if n in lock)
        cost = upstream_cost(tree, lock, before, ran) | {OUTS: outs_of(lock, targets)}
        earlier = trial_resume.resumed(saved, lines)
        metrics = trial_metrics(tree, targets, ran, key, trial_dir, cost, earlier)
        trial_resume.discard(keep)
        return metrics
    finally:
        remove_worktree(tree)
