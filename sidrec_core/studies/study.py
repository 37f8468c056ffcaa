"""A study varies one factor over its levels, everything else at the defaults, over several seeds;
``run`` names the stages each trial re-runs, ``reuse`` the upstream ones built once per seed at the
default and cached (the beam-width study re-runs evaluation only). Catalogue: ``studies.yaml``."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from sidrec_core.metrics import OBJECTIVE, TEST_KEYS
from sidrec_core.studies.pipeline import load_pipeline, upstream

COST_KEYS = ("wall_seconds", "peak_rss_mb")
SID_QUALITY = (  # the build_sids stage's SID quality metrics; lists are per level
    *("utilization", "perplexity", "collision_rate_before", "collision_rate_after"),
    *("max_bucket", "gini", "recon_mse", "fit_seconds"),
)
GEN_KEYS = ("test/invalid_rate", "test/duplicate_rate", "test/users_per_second")
EXPECTATIONS = ("better", "not_worse", "equal")
# a figure in a study note: ``{level:metric}`` (the level's value over seeds) or ``{*:metric}``
# (the range over levels); ``:%`` after the metric gives a percentage
NOTE_FIGURE = re.compile(r"\{([^{}:]+):([^{}:]+)(:%)?\}")


@dataclasses.dataclass(frozen=True)
class Level:
    """A setting of the factor. ``formerly``: earlier spellings of the same configuration (before
    a params.yaml default it relied on was written into it); their trials still count."""

    label: str
    overrides: dict[str, Any]
    formerly: tuple[dict[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class Claim:
    """A published finding put to the test: ``level`` vs ``versus`` on ``metric`` (higher is
    better; a per-level list is averaged); ``expect``: better | not_worse | equal."""

    finding: str
    source: str  # paper (arXiv id, section) or repository + file
    level: str
    versus: str
    expect: str
    metric: str = "test/ndcg@10"


@dataclasses.dataclass(frozen=True)
class Note:
    """What a study cannot answer, ``{level:metric}`` filled in from the section; ``datasets``:
    the datasets whose sections it is about (empty: every dataset's), as a note that sets a
    dataset's published figures beside the section's."""

    text: str
    datasets: tuple[str, ...] = ()

    def about(self, dataset: str) -> bool:
        return not self.datasets or dataset in self.datasets


@dataclasses.dataclass(frozen=True)
class Reference:
    """The starting model as another study's level measured it (e.g. the SID LM before GRPO); a
    seed pairs only where this study's ``match[0]`` equals the reference's ``match[1]``."""

    study: str
    level: str
    label: str  # what the reference is, for the report
    match: tuple[str, str]
    goal: float | None = None  # a relative gain over the reference the report places in the CI
    goal_source: str = ""  # who set the goal


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    factor: str
    levels: tuple[Level, ...]
    default: str
    run: tuple[str, ...]
    reuse: tuple[str, ...] = ()
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # every level, reused stages
    formerly_fixed: tuple[dict[str, Any], ...] = ()  # earlier spellings of ``fixed``
    objective: str = OBJECTIVE
    direction: str = "maximize"
    secondary: tuple[str, ...] = TEST_KEYS + COST_KEYS
    group: str = ""
    setup: str | None = None  # "module:function(params, out_dir) -> overrides" (a checkpoint)
    claims: tuple[Claim, ...] = ()
    reference: Reference | None = None
    # paired comparisons besides each level vs the default, Holm-corrected with them
    contrasts: tuple[tuple[str, str], ...] = ()
    notes: tuple[Note, ...] = ()  # a plain string is a Note about every dataset
    # (study, level) that measured the pipeline default, when ``fixed`` moves this default off it
    pipeline_default: tuple[str, str] | None = None
    seeds: int = 3  # a real-data launch's seeds (experiments/trial_costs.md)
    # upstream inputs (``sha256/read/<name>``) the levels read differently by design (the factor
    # is an input file): left out of the check that paired trials read the same bytes
    varied_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        notes = tuple(n if isinstance(n, Note) else Note(n) for n in self.notes)
        object.__setattr__(self, "notes", notes)
        labels, err = self.labels, f"study {self.name}:"
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ValueError(f"{err} needs >= 2 distinct level labels, got {labels}")
        if self.default not in labels:
            raise ValueError(f"{err} default level {self.default!r} not in {labels}")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"{err} direction must be maximize|minimize")
        if self.seeds < 1:
            raise ValueError(f"{err} seeds must be >= 1, got {self.seeds}")
        if not self.run:
            raise ValueError(f"{err} 'run' must name at least one stage")
        pipeline = load_pipeline()
        for name in (*self.run, *self.reuse):
            if name not in pipeline:
                raise ValueError(f"{err} unknown stage {name!r} (not in dvc.yaml)")
            missing = set(upstream(name, pipeline)) - {*self.run, *self.reuse}
            if missing:
                raise ValueError(f"{err} stage {name} needs {sorted(missing)} in run or reuse")
        if set(self.run) & set(self.reuse):
            raise ValueError(f"{err} a stage cannot be both run and reused")
        for level, versus in self.contrasts:
            if {level, versus} - set(labels) or level == versus:
                raise ValueError(
                    f"{err} contrast ({level!r}, {versus!r}) needs two different levels of {labels}"
                )
        for c in self.claims:
            if {c.level, c.versus} - set(labels) or c.expect not in EXPECTATIONS:
                raise ValueError(
                    f"{err} claim {c.finding!r} needs levels in {labels} and expect in "
                    f"{EXPECTATIONS}, got {c.level!r}, {c.versus!r}, {c.expect!r}"
                )
        measured = (self.objective, *self.secondary)
        for note in self.notes:
            for level, metric, _ in NOTE_FIGURE.findall(note.text):
                if (level != "*" and level not in labels) or metric not in measured:
                    raise ValueError(
                        f"{err} note figure {{{level}:{metric}}} needs a level in "
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


def one_key(key: str, values: list[Any]) -> tuple[Level, ...]:
    """Levels of a factor that is one params key (booleans labelled off/on)."""
    label = {True: "on", False: "off"}
    return tuple(Level(label[v] if isinstance(v, bool) else str(v), {key: v}) for v in values)


def grid_point(trial: Any) -> tuple[str, int] | None:
    """The (level, seed) a trial was queued for (its ``grid_point`` user attribute)."""
    point = trial.user_attrs.get("grid_point")
    return (str(point[0]), int(point[1])) if point else None


def trial_level(trial: Any) -> str | None:
    return (grid_point(trial) or (None, None))[0]


def trial_seed(trial: Any) -> int | None:
    return (grid_point(trial) or (None, None))[1]


def level_spec(study: Study, label: str, overrides: dict | None = None, fixed: dict | None = None):
    """A trial's ``level_spec`` user attr: the fixed and the level's overrides (or the earlier
    spellings given), JSON-normalised (tuples read back as lists)."""
    own = study.level(label).overrides if overrides is None else overrides
    spec = {"fixed": study.fixed if fixed is None else fixed, "level": own}
    return json.loads(json.dumps(spec, sort_keys=True))


def is_stale(study: Study, trial: Any) -> bool:
    """Whether the trial ran an earlier definition of its level: its ``level_spec`` matches no
    spelling of the level now. Trials without a spec or of a dropped level are not stale."""
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
    """Whether a stored trial took its figures from another study's (before DVC's run-cache)."""
    return "shared_from" in (trial.user_attrs.get("metrics") or {})


def live_point(study: Study, trial: Any) -> tuple[str, int] | None:
    """The (level, seed) a trial counts for in ``study`` now; None without one, for a dropped
    level or a stale trial."""
    point = grid_point(trial)
    if point is None or point[0] not in study.labels or is_stale(study, trial):
        return None
    return point
