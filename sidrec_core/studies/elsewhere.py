"""What a study's trials cost on a dataset before any ran there on this machine: each level's
trials in the study's real-data sections on today's defaults (any dataset, any machine), scaled
by interaction count (a Sports trial trains on 1.5x Beauty's rows), plus, once per seed, the
stages the study reuses at the committed pipeline's cost, scaled the same way (a ``decoding``
trial decodes a SID LM its seed trains first). A plan (:mod:`~.plan`) prices a section with no
trial here by it, and a worker's time budget (:mod:`~.budget`) a level with no trial here."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import TrialState

from sidrec_core.config import build, flatten
from sidrec_core.data.dataset import DataConfig, load_dataset
from sidrec_core.stages import resolve_params
from sidrec_core.studies.defaults import digest, on_todays_defaults
from sidrec_core.studies.pipeline import PROJECT_ROOT, load_pipeline
from sidrec_core.studies.profiles import with_overrides
from sidrec_core.studies.report import is_pipeline_check
from sidrec_core.studies.storage import exists, sections
from sidrec_core.studies.study import Study, trial_level


@dataclasses.dataclass(frozen=True)
class Elsewhere:
    """Seconds on this dataset: ``levels``, each level's median trial (its own stages); ``every``,
    the median over all of them; ``per_seed``, the reused stages a seed's first trial trains;
    ``datasets``, where the trials ran."""

    levels: dict[str, float]
    every: float
    per_seed: float
    datasets: tuple[str, ...]

    def level(self, label: str) -> float:
        return self.levels.get(label, self.every)

    def points(self, points: list[tuple[str, int]]) -> float:
        """Grid ``points`` at their levels' cost, each of their seeds' reused stages once."""
        seeds = {s for _, s in points}
        return sum(self.level(lv) for lv, _ in points) + self.per_seed * len(seeds)


def elsewhere(location: str, study: Study, data: dict[str, Any]) -> Elsewhere | None:
    """``study``'s trials at ``location`` (see :func:`real_trials`) priced on the dataset the
    ``data`` params name, or None where none ran."""
    walls = real_trials(location, study) if exists(location) else []
    if not walls:
        return None
    here = interactions(build(DataConfig, data, "data"))
    names = sorted({d for d, _, _ in walls})
    there = {d: interactions(build(DataConfig, {**data, "name": d}, "data")) for d in names}
    scaled = [(lv, w * here / there[d]) for d, lv, w in walls]
    levels = {
        lv: float(np.median([w for other, w in scaled if other == lv]))
        for lv in dict.fromkeys(lv for lv, _ in scaled)
    }
    every = float(np.median([w for _, w in scaled]))
    return Elsewhere(levels, every, reused_seconds(study, here), tuple(names))


def real_trials(location: str, study: Study) -> list[tuple[str, str | None, float]]:
    """``(dataset, level, wall_seconds)`` of every complete trial in ``study``'s real-data
    sections at ``location`` that ran on today's defaults (a trial on earlier ones may have
    trained another model, at another cost)."""
    return [
        (str(ostudy.user_attrs["dataset"]), trial_level(t), float(t.user_attrs["wall_seconds"]))
        for _, ostudy in sections(location, study.name)
        if not is_pipeline_check(ostudy) and on_todays_defaults(study, ostudy)
        for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "wall_seconds" in t.user_attrs
    ]


def reused_seconds(study: Study, here: int, metrics: Path = PROJECT_ROOT / "metrics") -> float:
    """What a seed's first trial of ``study`` on a dataset of ``here`` interactions trains before
    its own stages: the wall seconds of the stages it reuses in the committed pipeline run
    (``metrics/<stage>.json``: the default params, on the dataset ``prepare.json`` names), scaled
    by interactions; a stage that recorded none costs nothing. Older trials did not record their
    upstream, so their own durations leave it out."""
    prepared = read_json(metrics / "prepare.json")
    if not prepared.get("num_interactions"):
        return 0.0
    walls = sum(
        float(read_json(metrics / f"{s}.json").get("wall_seconds") or 0.0) for s in study.reuse
    )
    return walls * here / float(prepared["num_interactions"])


def reused_key(study: Study, params: dict[str, Any]) -> str:
    """What a seed's reused stages depend on besides the seed: the stages and the params they
    read with ``study``'s fixed overrides. Two studies with one key train the same upstream at a
    seed, once (DVC's run-cache restores it for the second)."""
    return stages_key(study.reuse, with_overrides(params, study.fixed))


def point_key(study: Study, label: str, params: dict[str, Any]) -> str:
    """What a trial of ``study``'s level ``label`` computes besides its seed: every stage it runs
    or reuses and the params they read with the study's fixed and the level's overrides. Two
    studies' levels with one key run the same trial at a seed (``similarity``'s ``dot`` is
    ``sasrec_loss``'s ``ce``): DVC's run-cache restores the second."""
    level = next(lv for lv in study.levels if lv.label == label)
    over = with_overrides(with_overrides(params, study.fixed), flatten(level.overrides))
    return stages_key((*study.reuse, *study.run), over)


def stages_key(stages: tuple[str, ...] | list[str], params: dict[str, Any]) -> str:
    """The ``stages`` (as a set) and the ``params`` values they read, the seed left out."""
    read = {p.split(".")[0] for s in stages for p in load_pipeline()[s].params}
    flat = flatten(resolve_params(params))
    kept = {k: v for k, v in flat.items() if k.split(".")[0] in read and k != "base.seed"}
    return digest({"stages": sorted(set(stages)), "params": kept})


def read_json(path: Path) -> dict:
    """The JSON object at ``path``, or {} where there is none."""
    return json.loads(path.read_text()) if path.is_file() else {}


@functools.cache
def interactions(cfg: DataConfig) -> int:
    """The dataset's interactions after ``cfg``'s filtering: a trial's cost grows with them."""
    return load_dataset(cfg).num_interactions
