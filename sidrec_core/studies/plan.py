"""``python bench/ablate.py --remaining``: what each study has left to run on a profile and what
that costs, before anything is launched. A study's section is the one a launch today writes to:
its current defaults' (a section on earlier defaults is history, not progress), so a study whose
defaults changed since it ran reads as a new section with nothing done. A study whose set-up hook
finds an input missing (``load_mode``'s local checkpoint) is listed as blocked, out of the total.
Open points cost their levels' trials here; a section with no trial here, and a level with none,
the study's trials on other datasets and machines scaled to this one (:mod:`~.elsewhere`); a
study with no trial anywhere, the cost table's median. The total counts once what two studies
compute alike at a seed: reused stages, and whole trials (``similarity``'s ``dot`` is
``sasrec_loss``'s ``ce``), which DVC's run-cache restores for the second on one machine."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna

from sidrec_core.stages import resolve_params
from sidrec_core.studies.budget import level_seconds, points_seconds, ran_here
from sidrec_core.studies.defaults import effective_defaults, optuna_name
from sidrec_core.studies.elsewhere import elsewhere, point_key, reused_key
from sidrec_core.studies.profiles import with_overrides
from sidrec_core.studies.replicate import REPLICATE, owed_levels, replicated_levels
from sidrec_core.studies.restore import complete_points
from sidrec_core.studies.runner import (
    StudyOptions,
    base_params,
    grid,
    seeds_for,
    set_up,
)
from sidrec_core.studies.seeds import COST_TABLE, estimated_minutes
from sidrec_core.studies.storage import exists, make_storage
from sidrec_core.studies.study import Study

OWN = "this section's trials"
TABLE = f"the study's median in {COST_TABLE} (over its real-data sections, any dataset)"
SCALED = (
    "each level's median trial on {} and the reused stages once a seed (the committed "
    "pipeline's), scaled by interactions here / there"
)


@dataclasses.dataclass(frozen=True)
class Left:
    """``study``'s section ``section`` (``new``: why a launch would create it, else ""):
    ``points`` grid points, ``todo`` of them without a complete trial, costing ``seconds``
    (None: no estimate) on the basis named; ``blocked``: why a launch would fail at once; on a
    replication, the ``lead_todo`` open points (``lead_seconds``) a launch runs first."""

    study: str
    section: str
    new: str
    points: int
    todo: int
    seconds: float | None
    basis: str
    blocked: str = ""
    lead: tuple[str, ...] = ()  # a replication's levels queued first, with the default
    whole: str = ""  # why a replication owes every level (issue 38 names the study), else ""
    lead_todo: int = 0  # open points at the default and ``lead``
    lead_seconds: float | None = None
    per_seed: float = 0.0  # a seed's reused stages, in ``seconds`` once per seed of ``shares``
    shares: tuple[tuple[str, int], ...] = ()  # (reused_key, seed): what another study may share
    lead_shares: tuple[tuple[str, int], ...] = ()  # those of the lead points
    # each open point as (point_key, seed, its own seconds in ``seconds``, in the first part)
    trials: tuple[tuple[str, int, float, bool], ...] = ()
    ran: tuple[tuple[str, int], ...] = ()  # (point_key, seed) of the complete points restorable


def left_to_run(study: Study, opts: StudyOptions, n_seeds: int) -> Left:
    """The work ``study`` has left on ``opts.profile`` with ``n_seeds`` seeds: the open points at
    their levels' own cost here and each seed's upstream where this machine would train it again
    (:func:`points_seconds`, what a launch's ETA takes), else at the cost table's median."""
    params = base_params(opts)
    defaults, seeds = effective_defaults(study, params), seeds_for(params, n_seeds)
    url = opts.storage_url_for(study.name)
    storage = make_storage(url) if exists(url) else None
    first = name = f"{study.name}-{opts.profile}"
    names = optuna.get_all_study_names(storage) if storage is not None else []
    if names:
        name = optuna_name(storage, study.name, opts.profile, defaults)
    new = "" if name in names else "its defaults changed" if first in names else "never ran"
    ostudy = None if new else optuna.load_study(study_name=name, storage=storage)
    if ostudy is None:
        points, complete = [(lv, s) for lv in study.labels for s in seeds], set()
    else:
        points, complete = grid(ostudy, study, seeds)
    todo = [p for p in points if p not in complete]
    row = Left(study.name, name, new, len(points), len(todo), None, "no trial, no cost row")
    done = ran_here(ostudy) if ostudy is not None else []
    if ostudy is not None:  # what DVC's run-cache restores for another study running it alike
        row = dataclasses.replace(row, ran=tuple(sorted(complete_points(study, ostudy, params))))
    if not todo:  # complete: no cost, nothing to check
        return row
    try:
        with tempfile.TemporaryDirectory() as scratch:  # what the hook writes is not kept
            hooked = with_overrides(params, set_up(study, params, Path(scratch)))
    except ValueError as e:
        return dataclasses.replace(row, basis="", blocked=str(e))
    data = resolve_params(params)["data"]
    lead = replicated_levels(url, study, data["name"]) if exists(url) else []
    owed = owed_levels(study, data["name"], lead)
    owes = owed is not None  # the default and ``lead`` queued first (runner.enqueue_missing)
    ahead = [p for p in todo if p[0] in owed] if owes else []
    if owes:
        whole = "" if lead else REPLICATE[study.name]  # named: the whole grid is owed
        row = dataclasses.replace(row, lead=tuple(lead), whole=whole, lead_todo=len(ahead))
    other = elsewhere(url, study, data)
    keys = {lv: point_key(study, lv, hooked) for lv in {lv for lv, _ in todo}}

    def trials(cost: Callable[[str], float]) -> tuple[tuple[str, int, float, bool], ...]:
        return tuple((keys[lv], s, cost(lv), (lv, s) in ahead) for lv, s in todo)

    if done:
        lead_s = points_seconds(done, ahead, other) if owes else None
        return dataclasses.replace(
            row,
            seconds=points_seconds(done, todo, other),
            basis=OWN,
            lead_seconds=lead_s,
            trials=trials(lambda lv: level_seconds(done, lv, other)),
        )
    if other is not None:
        basis = SCALED.format(", ".join(other.datasets))
        lead_s = other.points(ahead) if owes else None
        key = reused_key(study, params)

        def shares(points: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
            return tuple((key, s) for s in sorted({s for _, s in points}))

        return dataclasses.replace(
            row,
            seconds=other.points(todo),
            basis=basis,
            lead_seconds=lead_s,
            per_seed=other.per_seed,
            shares=shares(todo),
            lead_shares=shares(ahead) if owes else (),
            trials=trials(other.level),
        )
    table = estimated_minutes(Path(opts.out_dir) / COST_TABLE, study.name)
    if table is None:
        return row
    each = 60.0 * table
    return dataclasses.replace(
        row,
        seconds=each * len(todo),
        basis=TABLE,
        lead_seconds=each * row.lead_todo,
        trials=trials(lambda _: each),
    )


def lead_cell(r: Left) -> str:
    """What a replication owes: its levels, open points and their cost."""
    if not (r.lead or r.whole):
        return ""
    named = ", ".join(f"`{lv}`" for lv in r.lead)
    levels = f"default + {named}" if r.lead else f"every level ({r.whole})"
    if not r.lead_todo:
        return f"{levels}: done"
    cost = "" if r.lead_seconds is None else f", {r.lead_seconds / 3600:.1f} CPU-h"
    return f"{levels}: {r.lead_todo} trials{cost}"


def shared_seconds(rows: list[Left], lead: bool = False) -> float:
    """What ``rows`` (their lead points) count twice: a seed's reused stages at one
    :func:`reused_key`, and a trial at one :func:`point_key` and seed, that an earlier row
    already counts or a row's section completed."""
    seen: set[tuple[str, int]] = set()
    ran = {done for r in rows for done in r.ran}  # complete here: restored, not trained
    twice = 0.0
    for r in rows:
        mine = r.lead_shares if lead else r.shares
        twice += r.per_seed * sum(share in seen for share in mine)
        seen.update(mine)
        for key, seed, cost, first in r.trials:
            if first or not lead:
                twice += cost if (key, seed) in ran else 0.0
                ran.add((key, seed))
    return twice


def remaining_table(rows: list[Left], profile: str) -> list[str]:
    """Markdown lines: a row per study with work left, then the total."""
    open_ = [r for r in rows if r.todo]
    lines = [
        f"Work left on profile `{profile}` (CPU-hours on one thread: each open point at its "
        "level's own cost, plus a seed's upstream stages where this machine's DVC cache lacks "
        "them; a trial DVC restores from its run-cache takes less). On a dataset other than the "
        "reference, a replication owes the default and the levels significant there (queued "
        "first, on every seed), or every level of a study the round-2 issue names (`first`):",
        "",
        "| study | section | points done | CPU-h left | estimated from | first (replication) |",
        "|---|---|---|---|---|---|",
    ]
    for r in open_:
        section = f"`{r.section}`" + (f" (new: {r.new})" if r.new else "")
        hours = "blocked" if r.blocked else "unknown" if r.seconds is None else ""
        hours = hours or f"{r.seconds / 3600:.1f}"
        lines.append(
            f"| `{r.study}` | {section} | {r.points - r.todo} of {r.points} | {hours} "
            f"| {r.blocked or r.basis} | {lead_cell(r)} |"
        )
    runnable = [r for r in open_ if not r.blocked]
    shared = shared_seconds(runnable)
    known = sum(r.seconds or 0.0 for r in runnable) - shared
    unknown = sum(r.seconds is None for r in runnable)
    total = f"{known / 3600:.1f} CPU-h in {sum(r.todo for r in runnable)} trials"
    if shared:
        total += (
            f" (the rows less {shared / 3600:.1f} CPU-h that two studies compute alike at a "
            "seed, reused stages or whole trials with the same params: counted once, as DVC's "
            "run-cache restores the second on one machine)"
        )
    total += f" ({unknown} studies without an estimate)" if unknown else ""
    if lead := [r for r in runnable if r.lead or r.whole]:
        hours = (sum(r.lead_seconds or 0.0 for r in lead) - shared_seconds(lead, True)) / 3600
        total += (
            f", of which {hours:.1f} CPU-h in {sum(r.lead_todo for r in lead)} trials are what "
            "the replications owe (`first`; `--replication-only` runs only those)"
        )
    blocked = [f"`{r.study}`" for r in open_ if r.blocked]
    total += f"; blocked, not counted: {', '.join(blocked)}" if blocked else ""
    finished = len(rows) - len(open_)
    return [*lines, "", f"Total: {total}; {finished} of {len(rows)} studies complete."]
