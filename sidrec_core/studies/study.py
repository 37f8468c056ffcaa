"""What a study is: one factor, its levels, the stages each trial runs or reuses.

A study varies one factor over its levels with everything else at the defaults, over several
seeds, and says which stages each trial re-runs (``run``) and which upstream artifacts it reuses
(``reuse``, built once per seed at the default configuration and cached): the beam-width study
loads a trained SID LM and only re-runs evaluation (STYLE.md, "Experiments"). The catalogue of
studies is ``studies.yaml`` (read by :mod:`sidrec_core.studies.registry`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from sidrec_core.metrics import OBJECTIVE, TEST_KEYS
from sidrec_core.studies.pipeline import load_pipeline, upstream

COST_KEYS = ("wall_seconds", "peak_rss_mb")
# every SID quality metric of the build_sids stage; lists are per level
SID_QUALITY = (
    "utilization",
    "perplexity",
    "collision_rate_before",
    "collision_rate_after",
    "max_bucket",
    "gini",
    "recon_mse",
    "fit_seconds",
)
GEN_KEYS = ("test/invalid_rate", "test/duplicate_rate", "test/users_per_second")


@dataclasses.dataclass(frozen=True)
class Level:
    """One setting of the factor: a label and the dotted params keys it sets. ``formerly``: earlier
    overrides of this same configuration, from before a params.yaml default the level relied on
    changed and was written into the level; trials that recorded them still count (not stale)."""

    label: str
    overrides: dict[str, Any]
    formerly: tuple[dict[str, Any], ...] = ()


EXPECTATIONS = ("better", "not_worse", "equal")
# a figure in a study note: ``{level:metric}`` (the level's value over seeds in the section) or
# ``{*:metric}`` (the range of the levels' values); ``:%`` after the metric gives a percentage
NOTE_FIGURE = re.compile(r"\{([^{}:]+):([^{}:]+)(:%)?\}")


@dataclasses.dataclass(frozen=True)
class Claim:
    """A published finding the study puts to the test: ``level`` against ``versus`` on
    ``metric`` (higher is better; a per-level metric such as ``utilization`` is averaged over
    the SID levels). ``expect``: ``better`` (higher), ``not_worse`` or ``equal``."""

    finding: str
    source: str  # paper (arXiv id, section) or repository + file
    level: str
    versus: str
    expect: str
    metric: str = "test/ndcg@10"


@dataclasses.dataclass(frozen=True)
class Reference:
    """The model a study's stages start from, as another study's level measured it (same
    trained model, users and decoding): the report compares every level with it per seed, e.g.
    GRPO's reward mixes against the SID LM before GRPO. A seed pairs only where this study's
    ``match[0]`` equals the reference's ``match[1]`` exactly (both measured the same model on
    the same validation users), so a reference from another code version is never paired."""

    study: str
    level: str
    label: str  # what the reference is, for the report
    match: tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Study:
    """An ablation of one factor.

    ``fixed`` overrides hold for every level and for the reused upstream stages (the study's
    context, e.g. ``sid.method=rqvae`` for the RQ-VAE technique flags).
    """

    name: str
    factor: str
    levels: tuple[Level, ...]
    default: str
    run: tuple[str, ...]
    reuse: tuple[str, ...] = ()
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)
    # earlier ``fixed`` of the same context, from before a params.yaml default the study relied
    # on changed and was written into ``fixed``: trials that recorded them still count
    formerly_fixed: tuple[dict[str, Any], ...] = ()
    objective: str = OBJECTIVE
    direction: str = "maximize"
    secondary: tuple[str, ...] = TEST_KEYS + COST_KEYS
    group: str = ""
    # "module:function(params, out_dir) -> overrides" for inputs no stage makes (a checkpoint)
    setup: str | None = None
    claims: tuple[Claim, ...] = ()  # published findings the report compares with
    reference: Reference | None = None  # the starting model, measured by another study
    # pre-set paired comparisons (level, versus) besides every level against the default,
    # tested and Holm-corrected with them (e.g. a level against a control other than the default)
    contrasts: tuple[tuple[str, str], ...] = ()
    # what the study cannot answer, for whoever reads its numbers (its report and the index);
    # figures are written as NOTE_FIGURE placeholders, filled from the storage of each section
    notes: tuple[str, ...] = ()
    # (study, level) that measured the pipeline default, for a study whose ``fixed`` overrides
    # move its own default away from it: the index sets the two side by side
    pipeline_default: tuple[str, str] | None = None
    # seeds a real-data launch runs: 5 where a trial costs <= 10 CPU-minutes, else 3 (the measured
    # basis: experiments/trial_costs.md; sidrec_core.studies.seeds)
    seeds: int = 3

    def __post_init__(self) -> None:
        labels = [lv.label for lv in self.levels]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"study {self.name}: needs >= 2 distinct level labels, got {labels}")
        if self.default not in labels:
            raise ValueError(f"study {self.name}: default level {self.default!r} not in {labels}")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"study {self.name}: direction must be maximize|minimize")
        if self.seeds < 1:
            raise ValueError(f"study {self.name}: seeds must be >= 1, got {self.seeds}")
        if not self.run:
            raise ValueError(f"study {self.name}: 'run' must name at least one stage")
        known = set(self.run) | set(self.reuse)
        pipeline = load_pipeline()
        for name in (*self.run, *self.reuse):
            if name not in pipeline:
                raise ValueError(f"study {self.name}: unknown stage {name!r} (not in dvc.yaml)")
            missing = set(upstream(name, pipeline)) - known
            if missing:
                raise ValueError(
                    f"study {self.name}: stage {name} needs {sorted(missing)} in run or reuse"
                )
        if set(self.run) & set(self.reuse):
            raise ValueError(f"study {self.name}: a stage cannot be both run and reused")
        for level, versus in self.contrasts:
            if {level, versus} - set(labels) or level == versus:
                raise ValueError(
                    f"study {self.name}: contrast ({level!r}, {versus!r}) needs two different "
                    f"levels of {labels}"
                )
        for claim in self.claims:
            if {claim.level, claim.versus} - set(labels) or claim.expect not in EXPECTATIONS:
                raise ValueError(
                    f"study {self.name}: claim {claim.finding!r} needs levels in {labels} and "
                    f"expect in {EXPECTATIONS}, got {claim.level!r}, {claim.versus!r}, "
                    f"{claim.expect!r}"
                )

        measured = (self.objective, *self.secondary)
        for note in self.notes:
            for level, metric, _ in NOTE_FIGURE.findall(note):
                if (level != "*" and level not in labels) or metric not in measured:
                    raise ValueError(
                        f"study {self.name}: note figure {{{level}:{metric}}} needs a level in "
                        f"{labels} (or *) and a metric in {list(measured)}"
                    )

    @property
    def labels(self) -> list[str]:
        return [lv.label for lv in self.levels]

    def level(self, label: str) -> Level:
        for lv in self.levels:
            if lv.label == label:
                return lv
        raise KeyError(f"study {self.name}: no level {label!r}; levels: {self.labels}")

    @property
    def keys(self) -> list[str]:
        return sorted({k for lv in self.levels for k in lv.overrides})


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def one_key(key: str, values: list[Any]) -> tuple[Level, ...]:
    """Levels for a factor that is a single params key."""
    return tuple(Level(_label(v), {key: v}) for v in values)


def grid_point(trial: Any) -> tuple[str, int] | None:
    """The (level, seed) an Optuna trial was queued for (its ``grid_point`` user attribute)."""
    point = trial.user_attrs.get("grid_point")
    return (str(point[0]), int(point[1])) if point else None


# every committed trial (600 in experiments/*/optuna.jsonl) holds its grid point; the level and
# seed params of the first studies were migrated into it
def trial_level(trial: Any) -> str | None:
    point = grid_point(trial)
    return point[0] if point else None


def trial_seed(trial: Any) -> int | None:
    point = grid_point(trial)
    return point[1] if point else None


def level_spec(
    study: Study,
    label: str,
    overrides: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What defines the trials of level ``label`` besides their seed: the study's fixed overrides
    and the level's own (``fixed``, ``overrides``: earlier spellings of them), as a trial's
    ``level_spec`` user attribute stores them (JSON, so tuples read back as lists)."""
    own = study.level(label).overrides if overrides is None else overrides
    spec = {"fixed": study.fixed if fixed is None else fixed, "level": own}
    return json.loads(json.dumps(spec, sort_keys=True))


def is_stale(study: Study, trial: Any) -> bool:
    """Whether the trial ran an earlier definition of its level: its recorded ``level_spec`` (the
    fixed overrides and the level's) matches no spelling of the level's now (``fixed`` or one of
    ``formerly_fixed``, with the level's overrides or one of its ``formerly``). Trials stored
    before specs were recorded, and trials of levels the study no longer has, are not stale."""
    label, spec = trial_level(trial), trial.user_attrs.get("level_spec")
    if spec is None or label not in study.labels:
        return False
    level = study.level(label)
    return all(
        spec != level_spec(study, label, o, f)
        for o in (level.overrides, *level.formerly)
        for f in (study.fixed, *study.formerly_fixed)
    )


def is_shared(trial: Any) -> bool:
    """Whether a stored trial took its figures from another study's trial and ran nothing (the
    engine before DVC's run-cache did so; ``shared_from`` names that trial)."""
    return "shared_from" in (trial.user_attrs.get("metrics") or {})


def live_point(study: Study, trial: Any) -> tuple[str, int] | None:
    """The (level, seed) a trial counts for in ``study`` as it is defined now; None when the trial
    has no level or seed, its level left the study, or it is stale (:func:`is_stale`: it measured
    another configuration)."""
    label, seed = trial_level(trial), trial_seed(trial)
    if label is None or seed is None or label not in study.labels or is_stale(study, trial):
        return None
    return label, seed
