"""A trial's training resumes across its attempts. The training stages keep their per-epoch
resume state (:class:`sidrec_core.train.Resume`) in ``models/.resume``; in a trial's throw-away
worktree that folder is a link to one kept beside the DVC cache and named by what the training
depends on (the trial's params, seed included, and the git objects of its stages' code), so a
trial killed mid-training (a stopped worker, a session's end) continues after its last finished
epoch on its next attempt on this machine, and ends as an uninterrupted run would. The folder is
removed once the stages finish or a pruner stopped them (a pruned trial never continues), and by
:func:`sweep` once nothing in it was written for :data:`STALE_DAYS`."""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import Any

from sidrec_core.config import params_hash
from sidrec_core.studies.pipeline import ancestors, inside, load_pipeline

# a resume state left this long belongs to a trial that did not come back: its level dropped,
# its code or params changed (its key then names no trial); one that does trains those epochs again
STALE_DAYS = 14.0
LINK = Path("models") / ".resume"  # what train_sidlm and fit_ranker resume from, in a worktree
RESUMED = re.compile(r"resumed from \S*?([^/\s]+\.pt) after epoch (\d+)")  # train.fit's log line
RESUMED_SECONDS = "resumed_seconds"  # trial metric: earlier attempts' training it continued
RESUMED_EPOCHS = "resumed_epochs"


def resume_root(cache: str | Path) -> Path:
    """Where the trials' resume folders live: beside the DVC cache ``cache``, in DVC's ``tmp``
    (``.dvc/tmp/trial-resume`` for the project's own cache)."""
    return Path(cache).parent / "tmp" / "trial-resume"


def resume_key(
    git_objects: str, stages: list[str], params: dict[str, Any], extra: dict[str, list[str]]
) -> str:
    """The folder name of a trial's resume state: its params, the stages it runs, the inputs
    added to them (``dvc_run.extra_deps``) and ``git_objects``, ``git ls-tree`` of the code its
    stages and their upstream depend on (:func:`code_deps`)."""
    key = {"params": params, "stages": sorted(stages), "extra": extra, "code": git_objects}
    return params_hash(key)


def code_deps(stages: list[str]) -> list[str]:
    """The deps ``dvc.yaml`` lists for ``stages`` and their upstream that no stage makes: the
    code (and shipped data) git holds."""
    pipeline = load_pipeline()
    made = [o for s in pipeline.values() for o in s.outs]
    closure = [*ancestors(stages, pipeline), *stages]
    deps = {d for s in closure for d in pipeline[s].deps}
    return sorted(d for d in deps if not any(inside(d, o) or inside(o, d) for o in made))


def link(tree: Path, folder: Path) -> dict[str, tuple[int, float]]:
    """Make ``tree``'s ``models/.resume`` a link to ``folder`` -> the epochs and training seconds
    each resume state already there holds (by file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    (tree / LINK).parent.mkdir(parents=True, exist_ok=True)
    (tree / LINK).symlink_to(folder.resolve(), target_is_directory=True)
    return saved_states(folder)


def saved_states(folder: Path) -> dict[str, tuple[int, float]]:
    """The epochs and training seconds of each resume state in ``folder`` (by file name)."""
    return {path.name: saved_training(path) for path in sorted(folder.glob("*.pt"))}


def saved_seconds(folder: Path) -> float:
    """The training seconds the resume states in ``folder`` hold (0 where there are none): what
    a trial's next attempt no longer spends."""
    return sum(seconds for _, seconds in saved_states(folder).values())


def saved_training(path: Path) -> tuple[int, float]:
    """(epochs, their training seconds) of the resume state at ``path``; (0, 0.0) where it
    cannot be read (the stage then starts fresh as well)."""
    import torch

    with contextlib.suppress(Exception):
        loop = torch.load(path, map_location="cpu", weights_only=True)["loop"]
        return int(loop["epoch"]), float(sum(loop["epoch_times"]))
    return 0, 0.0


def resumed(saved: dict[str, tuple[int, float]], lines: list[str]) -> dict[str, float]:
    """The earlier attempts' training the stages' output says they continued (``saved`` from
    :func:`link`): ``resumed_epochs`` and ``resumed_seconds`` (their epochs' training time, the
    validations left out); {} where none resumed."""
    found = [saved.get(m[1], (0, 0.0)) for line in lines if (m := RESUMED.search(line))]
    if not found:
        return {}
    return {
        RESUMED_EPOCHS: float(sum(e for e, _ in found)),
        RESUMED_SECONDS: sum(s for _, s in found),
    }


def sweep(root: Path, days: float = STALE_DAYS) -> list[Path]:
    """Remove the resume folders in ``root`` in which nothing (the folder, a state file) was
    written for ``days`` -> those removed. A running trial's state is rewritten every epoch."""
    cutoff, old = time.time() - days * 86400.0, []
    for folder in sorted(root.glob("*/")):
        with contextlib.suppress(OSError):  # another worker's trial removed it meanwhile
            if max(p.stat().st_mtime for p in (folder, *folder.iterdir())) < cutoff:
                discard(folder)
                old.append(folder)
    return old


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
