"""Study reports: per level, mean ± 95% CI over seeds (cost figures: median [min, max]) and a
PNG; on real data, paired t-tests of each level against the default (paired over seeds: they
share upstream artifacts and initialisation), Holm-corrected per section. A synthetic (smoke)
section is a pipeline check and carries no test."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sidrec_core.io import atomic_path, write_text
from sidrec_core.metrics import HEADLINE
from sidrec_core.studies import markdown as md
from sidrec_core.studies import stats
from sidrec_core.studies.defaults import (
    DEFAULTS,
    changed_text,
    current_labels,
    departures,
    profile_of,
)
from sidrec_core.studies.fingerprints import Records, broken_seeds, per_user, upstream
from sidrec_core.studies.literature import claim_lines
from sidrec_core.studies.markdown import is_cost
from sidrec_core.studies.notes import note_lines
from sidrec_core.studies.provenance import section_lines as provenance_lines
from sidrec_core.studies.reference import reference_lines
from sidrec_core.studies.rerun import RERUN_OF, counting, replaced_lines, rerun_text
from sidrec_core.studies.seeds import COST_TABLE, seeds_held, shortfall_text
from sidrec_core.studies.storage import sections, study_journal
from sidrec_core.studies.study import Study, is_stale, live_point, trial_level, trial_seed

PROFILE_ORDER = ("full", "beauty", "sports", "dev", "smoke")
SECTION_PREFIX = "## Profile `"
# the figures worth a panel when a study has them: quality, the factor's own cost, SID quality
PLOT_KEYS = (
    "test/ndcg@10 test/hr@10 collision_rate_before utilization/0 gini test/invalid_rate "
    "test/users_per_second seconds_per_epoch wall_seconds peak_rss_mb"
).split()
STOPPED = "no error raised: its worker stopped mid-trial and the heartbeat marked it failed"
STALE_NOTE = (
    "Left out: complete trials of a level redefined after they ran (they measured another "
    "configuration; a later launch re-runs the level):"
)
COUNT_KEYS = ("epochs", "num_parameters", "rec_steps")  # whole numbers: per seed, not mean ± CI
COUNTS_NOTE = (
    "counts (epochs run, parameters, steps): each seed's in seed order, one when all agree; "
)
Table = dict[str, dict[str, "Cell"]]  # level -> metric -> Cell


@dataclasses.dataclass
class Cell:
    """One (level, metric): values per seed, mean and 95% CI half-width (nan with one seed);
    from :func:`compare_levels` also the paired p and mean difference against its control."""

    values: dict[int, float]
    mean: float
    half_width: float
    p_value: float | None = None
    diff: float | None = None


def scalar_attrs(attrs: dict[str, Any]) -> dict[str, float]:
    """User attrs as scalars; lists (per-level SID figures) become ``key/i``."""
    out: dict[str, float] = {}
    for k, v in {**(attrs.get("metrics") or {}), **attrs}.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out.update({f"{k}/{i}": float(x) for i, x in enumerate(v)})
    return out


def metric_columns(study: Study, rows: list[dict[str, float]]) -> list[str]:
    """The objective, then each secondary figure present (lists expanded per level)."""
    present = set().union(*rows) if rows else set()
    cols = [study.objective]
    for key in study.secondary:
        cols += [key] if key in present else []
        per_level = [c for c in present if c.startswith(f"{key}/") and c[len(key) + 1 :].isdigit()]
        cols += sorted(per_level, key=lambda c: int(c.rsplit("/", 1)[1]))
    return [c for c in dict.fromkeys(cols) if c in present or c == study.objective]


def live_trials(study: Study, trials: list[optuna.trial.FrozenTrial]) -> Iterator[tuple]:
    """(level, seed, trial) of every complete trial that counts (on the grid, not stale, not
    replaced by a re-run)."""
    for point, t in counting(study, trials).items():
        yield *point, t


def summarize_trials(
    study: Study, trials: list[optuna.trial.FrozenTrial]
) -> tuple[list[str], Table]:
    """-> (metric columns, {level: {metric: Cell}})."""
    per_level: dict[str, dict[int, dict[str, float]]] = {lv: {} for lv in study.labels}
    for lv, seed, t in live_trials(study, trials):
        per_level[lv][seed] = {**scalar_attrs(t.user_attrs), study.objective: float(t.value)}
    cols = metric_columns(study, [r for lv in per_level.values() for r in lv.values()])

    def cell(by_seed: dict[int, dict[str, float]], col: str) -> Cell:
        vals = {s: r[col] for s, r in by_seed.items() if col in r and math.isfinite(r[col])}
        return Cell(vals, *stats.mean_ci(list(vals.values())))

    return cols, {lv: {c: cell(by_seed, c) for c in cols} for lv, by_seed in per_level.items()}


def trial_records(study: Study, trials: list[optuna.trial.FrozenTrial]) -> Records:
    """Each complete trial's stored metrics (fingerprints, per-user ranks) by level and seed."""
    out: Records = {lv: {} for lv in study.labels}
    for lv, seed, t in live_trials(study, trials):
        out[lv][seed] = t.user_attrs.get("metrics") or {}
    return out


def cell_text(c: Cell, col: str = "") -> str:
    if not c.values:
        return "—"
    v = [c.values[s] for s in sorted(c.values)]
    if col in COUNT_KEYS:
        counts = [f"{x:.0f}" for x in v]
        return counts[0] if len(set(counts)) == 1 else ", ".join(counts)
    if is_cost(col):
        return f"{md.fmt(float(np.median(v)), 2)} [{md.fmt(min(v), 2)}, {md.fmt(max(v), 2)}]"
    return md.pm(c.mean, c.half_width)


def save_png(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_levels(study: Study, profile: str, cols: list[str], table: Table, path: Path) -> Path:
    """One panel per :data:`PLOT_KEYS` figure, dots = seeds, bars as the tables give them (a
    symmetric t interval over skewed timings would reach below zero)."""
    shown = [c for c in cols if c in PLOT_KEYS or c == study.objective]
    fig, axes = pyplot().subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    x = np.arange(len(study.labels))
    for ax, col in zip(axes[0], shown, strict=True):
        cells = [table[lv][col] for lv in study.labels]
        if is_cost(col):
            seeds = [list(c.values.values()) for c in cells]
            means = [float(np.median(v)) if v else math.nan for v in seeds]
            spans = zip(means, seeds, strict=True)
            errs = np.array([[m - min(v), max(v) - m] if v else [0.0, 0.0] for m, v in spans]).T
        else:
            means = [c.mean for c in cells]
            errs = [0.0 if math.isnan(c.half_width) else c.half_width for c in cells]
        colors = ["tab:orange" if lv == study.default else "tab:blue" for lv in study.labels]
        ax.bar(x, means, yerr=errs, color=colors, alpha=0.6, capsize=3)
        for i, c in enumerate(cells):
            ax.scatter([i] * len(c.values), list(c.values.values()), s=8, color="k", zorder=3)
        ax.set_xticks(x, study.labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(col, fontsize=8)
    fig.suptitle(
        f"{study.name} ({profile}): mean ± 95% CI over seeds (cost: median [min, max]); "
        "orange = default",
        fontsize=9,
    )
    return save_png(fig, path)


SYNTHETIC = "synthetic"  # the smoke profile's dataset


def is_pipeline_check(ostudy: optuna.Study) -> bool:
    """Synthetic data (the smoke profile): exercises the machinery, answers nothing."""
    return ostudy.user_attrs.get("dataset") == SYNTHETIC


@dataclasses.dataclass
class Comparison:
    """``level`` vs ``versus`` on ``metric``: the paired cell, the diff's 95% CI half-width,
    Holm p (None = undefined), the MDE at 80% power, the seed x test-user bootstrap CI (None:
    no ranks stored) and the seeds left out because their upstream inputs differ."""

    level: str
    metric: str
    cell: Cell
    ci: float
    holm_p: float | None
    versus: str = ""
    mde: float | None = None
    seed_user: tuple[float, float] | None = None
    broken: dict[int, list[str]] = dataclasses.field(default_factory=dict)


def user_level_ci(
    records: Records, level: str, versus: str, metric: str, seeds: list[int]
) -> tuple[float, float] | None:
    """Seed x test-user bootstrap CI of ``level - versus``, when every seed of both stored
    per-user ranks of the same test users."""
    diffs = {}
    for seed in seeds:
        a = per_user(records.get(level, {}).get(seed, {}), metric)
        b = per_user(records.get(versus, {}).get(seed, {}), metric)
        if a is None or b is None or a.shape != b.shape:
            return None
        diffs[seed] = a - b
    return stats.seed_user_ci(diffs)[1:] if diffs else None


def compare_levels(
    study: Study,
    cols: list[str],
    table: Table,
    records: Records | None = None,
    user_ci: bool = True,
) -> list[Comparison]:
    """Paired tests of the objective and headline test metrics, every level vs the default and
    then the study's contrasts, Holm-corrected together; seeds whose upstream inputs differ
    (per ``records``) are left out of a pair. ``user_ci``: also the seed x user bootstrap CI
    (seconds a pair on Beauty's 22,363 users; a caller reading only the tests skips it)."""
    records = records or {}
    tested = list(dict.fromkeys((study.objective, *(c for c in cols if c.endswith(HEADLINE)))))
    pairs = [(lv, study.default) for lv in study.labels if lv != study.default]
    rows = []
    for lv, versus in pairs + list(study.contrasts):
        measured = table[versus][study.objective].values or versus == study.default
        if not (table[lv][study.objective].values and measured):
            continue
        broken = broken_seeds(records, lv, versus, study.varied_inputs)
        for col in tested:
            keep = {s: v for s, v in table[lv][col].values.items() if s not in broken}
            control = {s: v for s, v in table[versus][col].values.items() if s not in broken}
            diff, p = stats.paired_test(keep, control)
            cell = dataclasses.replace(table[lv][col], values=keep, diff=diff, p_value=p)
            rows.append((lv, versus, col, cell, control, broken))
    out = []
    for (lv, versus, col, c, control, broken), adj in zip(
        rows, stats.holm([r[3].p_value for r in rows]), strict=True
    ):
        shared = sorted(c.values.keys() & control.keys())
        d = [c.values[s] - control[s] for s in shared]
        _, ci = stats.mean_ci(d)
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        mde = stats.min_detectable_effect(sd, len(d))
        su = user_level_ci(records, lv, versus, col, shared) if user_ci else None
        out.append(Comparison(lv, col, c, ci, adj, versus, mde, su, broken))
    return out


def significance_lines(
    study: Study, cols: list[str], table: Table, records: Records | None = None
) -> list[str]:
    """The section's table of :func:`compare_levels`."""
    comparisons = compare_levels(study, cols, table, records)
    n_tests = sum(c.holm_p is not None for c in comparisons)
    contrasts = ", ".join(f"`{a}` against `{b}`" for a, b in study.contrasts)
    lines = [
        "",
        f"Paired t-test of each level against the default `{study.default}`"
        + (f", then {contrasts}," if contrasts else "")
        + " over the seeds both "
        f"completed; p Holm-corrected over the {n_tests} tests of this section (significant at "
        f"adjusted p < {md.ALPHA}). p is undefined when every seed's difference is equal. "
        "The mean diff's CI is over seeds only; the seed × user CI also resamples the test users "
        "(two-way bootstrap of the per-user differences; `not recorded` where a trial stored no "
        "per-user ranks). MDE: the smallest true difference this test detects with 80% power, "
        "given the seeds' spread, shown where the difference is not significant.",
        "",
        *md.table(
            ["level", "metric", "mean diff (95% CI, seeds)", "seed × user 95% CI", "p"]
            + ["Holm p", "significant", "MDE"]
        ),
    ]
    for cmp in comparisons:
        c, sig = cmp.cell, md.significant(cmp.holm_p)
        p = "undefined" if c.p_value is None else md.fmt(c.p_value, 3)
        mde = "—" if sig == "yes" else md.fmt(cmp.mde)
        name = cmp.level if cmp.versus == study.default else f"{cmp.level} − {cmp.versus}"
        cells = [name, cmp.metric, md.pm(c.diff, cmp.ci), md.interval(cmp.seed_user), p]
        lines.append(md.row([*cells, md.fmt(cmp.holm_p, 3), sig, mde]))
    lines += [
        f"| {lv} | (no completed trial) | | | | | | |"
        for lv in study.labels
        if not table[lv][study.objective].values and lv != study.default
    ]
    broken = {(c.level, c.versus): c.broken for c in comparisons if c.broken}
    for (lv, versus), seeds in broken.items():
        lines.append(
            f"\nNot paired: `{lv}` and `{versus}` read different upstream inputs at "
            + "; ".join(f"seed {s} ({', '.join(k)})" for s, k in seeds.items())
            + ", so those seeds are left out of their tests."
        )
    if records is not None and not any(upstream(m) for lv in records.values() for m in lv.values()):
        lines.append(
            "\nUpstream fingerprints: not recorded (no stage of these trials recorded the sha256 "
            "of its inputs: they ran before stages did, or only stages that record none), so "
            "equal inputs across levels could not be checked."
        )
    return lines


def failure_lines(study: Study, trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Retried failures, failed grid points still open, stale and replaced trials left out."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    counted = counting(study, trials)
    last = {point: t.number for point, t in counted.items()}

    def is_open(t: optuna.trial.FrozenTrial) -> bool:
        """No complete trial of its point, or, a re-run, the trial it was to replace counts."""
        return last.get((trial_level(t), trial_seed(t))) == t.user_attrs.get(RERUN_OF)

    open_ = [t for t in failed if is_open(t)]
    lines = []
    if len(failed) > len(open_):
        lines += [
            "",
            f"{len(failed) - len(open_)} failed or interrupted attempt(s) were retried "
            "and completed in a later launch.",
        ]
    if open_:
        lines += ["", "Failed trials (grid points without a complete trial):", ""]
        lines += [
            f"- #{t.number} {trial_level(t)} seed {trial_seed(t)}{rerun_text(t)}: "
            f"{t.user_attrs.get('error', STOPPED)}"
            for t in open_[:10]
        ]
    stale = [t for t in complete if is_stale(study, t)][:10]
    lines += ["", STALE_NOTE, ""] if stale else []
    for t in stale:
        spec = t.user_attrs["level_spec"]
        ran = md.assignments(kv for part in ("fixed", "level") for kv in spec[part].items())
        lines.append(f"- #{t.number} {trial_level(t)} seed {trial_seed(t)} ran {ran}")
    return lines + replaced_lines(counted)


def profile_section(
    study: Study,
    profile: str,
    ostudy: optuna.Study,
    out: Path,
    storage_for: Callable[[str], str] | None = None,
    current: optuna.Study | None = None,
) -> list[str]:
    """One ``## Profile`` section (``profile``: the label, ``beauty`` or ``beauty@<sha>``);
    ``storage_for(study name)`` finds the storage of the study :attr:`Study.reference` names
    (default: its journal beside this study's folder); ``current``: the profile's Optuna study
    on the current defaults, given for a section on earlier ones."""
    trials = ostudy.get_trials(deepcopy=False)
    cols, table = summarize_trials(study, trials)
    seeds, dataset = ostudy.user_attrs.get("seeds", []), str(ostudy.user_attrs.get("dataset", "?"))
    check = is_pipeline_check(ostudy)
    overrides = ostudy.user_attrs.get("profile_overrides") or {}
    title = " — pipeline check on synthetic data, not a finding" if check else ""
    title += " — earlier defaults" if current is not None else ""
    lines = [
        f"{SECTION_PREFIX}{profile}`{title}",
        "",
        f"Dataset `{dataset}`; Optuna study `{ostudy.study_name}`; "
        f"seeds {seeds}; trials: {md.state_counts(trials)}.",
        "",
    ]
    if current is not None:
        then, now = (s.user_attrs.get(DEFAULTS, {}) for s in (ostudy, current))
        lines += [
            f"These trials ran on earlier defaults than `{current.study_name}`'s: "
            f"{changed_text(then, now)}.",
            "",
        ]
    moved = departures(study, ostudy).items()
    kept = {k: v for k, v in moved if k not in study.fixed or study.fixed[k] != v}
    if kept and current is None and not check:
        lines += [
            f"These trials ran with {md.assignments(kept.items())}, which neither `params.yaml` "
            "nor the study's fixed overrides hold now: a launch today runs the grid on today's "
            "defaults in a section beside this one.",
            "",
        ]
    short = shortfall_text(seeds_held(trials, lambda t: live_point(study, t)), study.seeds)
    if short and not check:
        lines += [
            f"Seeds: {short} (the registry declares {study.seeds} for this study; the measured "
            f"trial cost behind it: `experiments/{COST_TABLE}`).",
            "",
        ]
    lines += [
        "Reductions this profile applies to `params.yaml` (data, epochs, users): "
        f"{md.assignments(overrides.items()) or 'none'}.",
        "",
        *md.table(
            ["level", *cols],
            [
                [f"**{lv}** (default)" if lv == study.default else lv]
                + [cell_text(table[lv][c], c) for c in cols]
                for lv in study.labels
            ],
        ),
        "",
        "Quality cells: mean ± 95% CI (Student t) over seeds; "
        + (COUNTS_NOTE if any(c in COUNT_KEYS for c in cols) else "")
        + "cost cells (throughput, seconds, memory): median [min, max] over seeds.",
    ]
    if check:
        lines += ["", "No significance test: a synthetic smoke run checks the pipeline only."]
    else:
        lines += significance_lines(study, cols, table, trial_records(study, trials))
        lines += claim_lines(study, table) + note_lines(study, cols, table, dataset)
        where = storage_for or (lambda name: study_journal(out.parent, name))
        lines += reference_lines(study, profile, table, where, trial_records(study, trials))
    lines += failure_lines(study, trials) + provenance_lines(ostudy.study_name, trials, out.parent)
    if any(table[lv][cols[0]].values for lv in study.labels):
        png = plot_levels(study, profile, cols, table, out / f"{profile}.png")
        lines += ["", f"![{study.name} {profile}]({png.name})"]
    return lines + [""]


def profile_key(label: str, current: set[str] = frozenset()) -> tuple[int, str, bool, str]:
    """Profiles in their order, each one's current defaults before its earlier ones."""
    profile = profile_of(label)
    order = PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else 9
    return (order, profile, bool(current) and label not in current, label)


def report_sections(report: Path) -> dict[str, str]:
    """``## Profile `<name>` `` sections of an existing study report -> {profile: section text}."""
    if not report.exists():
        return {}
    chunks = report.read_text().split(SECTION_PREFIX)[1:]
    return {chunk.split("`", 1)[0]: SECTION_PREFIX + chunk for chunk in chunks}


def write_study_report(
    study: Study, storage: str, out_dir: Path, storage_for: Callable[[str], str] | None = None
) -> list[Path]:
    """``<out_dir>/<study>/report.md`` (+ one PNG per profile) from every profile of the study
    in ``storage``; a profile found only in the old report keeps its section (it ran against
    another storage). Returns the written paths, report first."""
    out = out_dir / study.name
    found = dict(sections(storage, study.name))  # label -> Optuna study, in creation order
    latest = current_labels(found)
    fixed = md.assignments(study.fixed.items())
    pinned = [f"Every level (and the reused stages) runs with {fixed}."] if study.fixed else []
    reuse = f" and reuses {', '.join(study.reuse)} (built once per seed at the defaults)"
    lines = [
        f"# Study `{study.name}`: {study.factor}",
        "",
        f"Factor keys: {', '.join(f'`{k}`' for k in study.keys)}; levels: "
        + ", ".join(f"`{lv}`" for lv in study.labels)
        + f" (default `{study.default}`).",
        f"Each trial re-runs {', '.join(study.run)}{reuse if study.reuse else ''}. Objective "
        f"`{study.objective}` ({study.direction}); cells are mean ± 95% CI (Student t) over seeds.",
        *pinned,
        "",
    ]
    report = out / "report.md"
    kept = {p: text for p, text in report_sections(report).items() if p not in found}
    written: list[Path] = []
    current = set(latest.values())
    for label in sorted([*found, *kept], key=lambda lb: profile_key(lb, current)):
        if label in kept:
            lines += kept[label].rstrip("\n").split("\n") + [""]
            continue
        now = None if label in current else found[latest[profile_of(label)]]
        lines += profile_section(study, label, found[label], out, storage_for, now)
        if (out / f"{label}.png").exists():
            written.append(out / f"{label}.png")
    write_text(report, "\n".join(lines))
    return [report, *written]
