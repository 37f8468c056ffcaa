"""The pipeline stages the ablation bench can (re)run, mirroring ``dvc.yaml``.

Each entry names the library function (imported lazily, so a study whose stage code has not
landed fails at run time naming the missing module instead of breaking ``--list``), the params
sections the stage reads (its cache key, as DVC's ``params:`` list), the stages whose outputs it
consumes, and the dotted params keys of its output paths. The bench relocates those keys into
per-trial or cache folders: stages read every path from params, never from constants.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any


class StageUnavailable(RuntimeError):
    """A stage's module or function is not importable (its code has not landed)."""


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One pipeline stage as the bench sees it.

    ``outputs`` maps a dotted params key to the file/folder name the bench gives it inside the
    stage's output folder (e.g. ``{"sid.output_dir": "sids"}``).
    """

    name: str
    module: str
    function: str
    reads: tuple[str, ...]
    deps: tuple[str, ...] = ()
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def load(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """Import the stage function; raise :class:`StageUnavailable` naming what is missing."""
        try:
            mod = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            raise StageUnavailable(
                f"stage '{self.name}' needs module {self.module} which is not available "
                f"({exc}); its code has not landed yet"
            ) from exc
        fn = getattr(mod, self.function, None)
        if fn is None:
            raise StageUnavailable(
                f"stage '{self.name}': module {self.module} has no function {self.function}"
            )
        return fn


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            "prepare",
            "sidrec_core.data.stages",
            "run_prepare",
            ("base", "data"),
            outputs={"data.prepared_dir": "prepared"},
        ),
        StageSpec(
            "embed",
            "sidrec_core.data.stages",
            "run_embed",
            ("base", "data", "embed"),
            deps=("prepare",),
            # build_sids reads the vectors from its own sid.embeddings
            outputs={"embed.output": "embeddings.npy", "sid.embeddings": "embeddings.npy"},
        ),
        StageSpec(
            "baselines",
            "sidrec_core.models.baselines",
            "run_baselines",
            ("base", "data", "eval"),
            deps=("prepare",),
        ),
        StageSpec(
            "build_sids",
            "sidrec_core.sid.build",
            "run_build_sids",
            ("base", "data", "sid"),
            deps=("prepare", "embed"),
            # the SID LM reads the table from its own sidlm.sid_dir
            outputs={"sid.output_dir": "sids", "sidlm.sid_dir": "sids"},
        ),
        StageSpec(
            "train_sasrec",
            "sidrec_core.models.sasrec_stage",
            "run_train_sasrec",
            ("base", "data", "eval", "sid", "sasrec"),
            deps=("prepare",),
            outputs={"sasrec.checkpoint": "sasrec/model.pt"},
        ),
        StageSpec(
            "train_sidlm",
            "sidrec_core.models.sidlm_runner",
            "run_train_sidlm",
            ("base", "data", "eval", "sidlm"),
            deps=("prepare", "build_sids"),
            outputs={"sidlm.output_dir": "sidlm"},
        ),
        # the DVC eval_sidlm stage + validation figures (the studies' objective)
        StageSpec(
            "eval_sidlm",
            "sidrec_core.studies.stage_fns",
            "run_eval_sidlm_with_valid",
            ("base", "data", "eval", "sidlm", "bench"),
            deps=("prepare", "build_sids", "train_sidlm"),
            outputs={"sidlm.predictions_dir": "predictions"},
        ),
    )
}


def stage(name: str) -> StageSpec:
    if name not in STAGES:
        raise KeyError(f"unknown stage '{name}'; known: {', '.join(STAGES)}")
    return STAGES[name]


def all_output_keys() -> set[str]:
    """Every dotted key that is a location, not a setting (excluded from cache keys)."""
    keys = {"base.metrics_dir", "base.profile"}
    for spec in STAGES.values():
        keys.update(spec.outputs)
    return keys
