"""Study reports: per level, mean ± 95% CI over seeds of the objective and key secondary
figures (throughput, wall time and memory as median [min, max]), PNG plots, and
``experiments/README.md`` indexing every study.

On real data, only the objective and the headline test metrics are tested: a paired t-test of
each level against the default (paired over seeds: trials with the same seed share upstream
artifacts and initialisation), Holm-corrected across every test of the section; p is undefined
when the seed differences have zero variance. A synthetic (smoke) section is a pipeline check and
carries no test at all. Each section states its profile and every override it applies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from sidrec_core.io import atomic_path, write_text
from sidrec_core.metrics import HEADLINE
from sidrec_core.studies.fingerprints import pairing_break, per_user, upstream
from sidrec_core.studies.literature import claim_lines
from sidrec_core.studies.markdown import row
from sidrec_core.studies.markdown import table as md_table
from sidrec_core.studies.notes import note_lines
from sidrec_core.studies.provenance import section_lines as provenance_lines
from sidrec_core.studies.reference import reference_lines
from sidrec_core.studies.seeds import COST_TABLE, seeds_held, shortfall_text
from sidrec_core.studies.stats import (
    diff_ci,
    holm,
    mean_ci,
    min_detectable_effect,
    paired_test,
    seed_user_ci,
)
from sidrec_core.studies.storage import exists, read_storage, study_journal
from sidrec_core.studies.study import (
    Study,
    is_stale,
    live_point,
    trial_level,
    trial_seed,
)

PROFILE_ORDER = ("full", "beauty", "dev", "smoke")
SECTION_PREFIX = "## Profile `"
# the figures worth a panel when a study has them: quality, the factor's own cost, SID quality
PLOT_KEYS = (
    "test/ndcg@10",
    "test/hr@10",
    "collision_rate_before",
    "utilization/0",
    "gini",
    "test/invalid_rate",
    "test/users_per_second",
    "seconds_per_epoch",
    "wall_seconds",
    "peak_rss_mb",
)
ALPHA = 0.05
# a failed trial without an error attr raised nothing: its worker stopped mid-trial (killed or
# relaunched) and the heartbeat marked it failed
STOPPED = "no error raised: its worker stopped mid-trial and the heartbeat marked it failed"
STALE_NOTE = (
    "Left out: complete trials of a level redefined after they ran (they measured another "
    "configuration; a later launch re-runs the level):"
)
COST_MARKERS = ("per_second", "seconds", "peak_rss_mb", "peak_cuda_mb", "_mb")
# whole numbers (epochs run, parameters, recommender steps): shown per seed, not as a mean ± CI
COUNT_KEYS = ("epochs", "num_parameters", "rec_steps")
COUNTS_NOTE = (
    "counts (epochs run, parameters, steps): each seed's in seed order, one when all agree; "
)


@dataclasses.dataclass
class Cell:
    """One (level, metric): values per seed and their summary."""

    values: dict[int, float]
    mean: float
    half_width: float  # 95% CI half-width (t distribution over seeds); nan with one seed
    # set on the cells compare_levels returns: paired t-test p and mean paired difference
    # (level - versus) over the seeds both completed
    p_value: float | None = None
    diff: float | None = None


def is_cost(col: str) -> bool:
    return any(m in col for m in COST_MARKERS)


def scalar_attrs(attrs: dict[str, Any]) -> dict[str, float]:
    """User attrs as scalars; lists (per-level SID figures) become ``key/i``."""
    out: dict[str, float] = {}
    attrs = {**(attrs.get("metrics") or {}), **attrs}
    for k, v in attrs.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
            out.update({f"{k}/{i}": float(x) for i, x in enumerate(v)})
    return out


def metric_columns(study: Study, rows: list[dict[str, float]]) -> list[str]:
    """The objective, then each secondary figure present (lists expanded per level)."""
    present = set().union(*rows) if rows else set()
    cols = [study.objective]
    for key in study.secondary:
        if key in present:
            cols.append(key)
        per_level = [c for c in present if c.startswith(f"{key}/") and c[len(key) + 1 :].isdigit()]
        cols += sorted(per_level, key=lambda c: int(c.rsplit("/", 1)[1]))
    return [c for c in dict.fromkeys(cols) if c in present or c == study.objective]


def summarize_trials(
    study: Study, trials: list[optuna.trial.FrozenTrial]
) -> tuple[list[str], dict[str, dict[str, Cell]], dict[str, int]]:
    """-> (metric columns, {level: {metric: Cell}}, counts by state)."""
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    per_level: dict[str, dict[int, dict[str, float]]] = {lv: {} for lv in study.labels}
    for t in trials:
        point = live_point(study, t)
        if t.state != TrialState.COMPLETE or point is None:
            continue
        row = scalar_attrs(t.user_attrs)
        row[study.objective] = float(t.value)
        per_level[point[0]][point[1]] = row
    rows = [r for lv in per_level.values() for r in lv.values()]
    cols = metric_columns(study, rows)
    table: dict[str, dict[str, Cell]] = {}
    for lv, by_seed in per_level.items():
        table[lv] = {}
        for col in cols:
            vals = {s: r[col] for s, r in by_seed.items() if col in r and math.isfinite(r[col])}
            mean, hw = mean_ci(list(vals.values()))
            table[lv][col] = Cell(vals, mean, hw)
    return cols, table, counts


Records = dict[str, dict[int, dict[str, Any]]]  # level -> seed -> the trial's stored metrics


def upstream_recorded(metrics: dict[str, Any]) -> bool:
    return bool(upstream(metrics))


def trial_records(study: Study, trials: list[optuna.trial.FrozenTrial]) -> Records:
    """Each complete trial's stored metrics (fingerprints, per-user ranks) by level and seed."""
    out: Records = {lv: {} for lv in study.labels}
    for t in trials:
        point = live_point(study, t)
        if t.state == TrialState.COMPLETE and point is not None:
            out[point[0]][point[1]] = t.user_attrs.get("metrics") or {}
    return out


def _fmt(x: float | None, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.{digits}f}"


def cell_text(c: Cell, col: str = "") -> str:
    if not c.values:
        return "—"
    if col in COUNT_KEYS:  # e.g. epochs run before early stopping: each seed's, in seed order
        counts = [f"{c.values[s]:.0f}" for s in sorted(c.values)]
        return counts[0] if len(set(counts)) == 1 else ", ".join(counts)
    if is_cost(col):  # skewed by shared cores and warm-up: a range, not a symmetric CI
        v = list(c.values.values())
        return f"{_fmt(float(np.median(v)), 2)} [{_fmt(min(v), 2)}, {_fmt(max(v), 2)}]"
    return _fmt(c.mean) if math.isnan(c.half_width) else f"{_fmt(c.mean)} ± {_fmt(c.half_width)}"


def plot_levels(
    study: Study, profile: str, cols: list[str], table: dict[str, dict[str, Cell]], path: Path
) -> Path:
    """Error-bar plot of the objective and the key secondary figures (:data:`PLOT_KEYS`), one
    panel each, dots = seeds: quality figures as mean ± 95% CI, cost figures (throughput, time,
    memory) as median with a [min, max] bar, as the tables give them (a symmetric t interval
    over skewed timings would reach below zero)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in cols if c in PLOT_KEYS or c == study.objective]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False)
    x = np.arange(len(study.labels))
    for ax, col in zip(axes[0], shown, strict=True):
        if is_cost(col):
            seeds = [list(table[lv][col].values.values()) for lv in study.labels]
            means = [float(np.median(v)) if v else math.nan for v in seeds]
            errs = np.array(
                [
                    [m - min(v), max(v) - m] if v else [0.0, 0.0]
                    for m, v in zip(means, seeds, strict=True)
                ]
            ).T
        else:
            means = [table[lv][col].mean for lv in study.labels]
            errs = [
                0.0 if math.isnan(table[lv][col].half_width) else table[lv][col].half_width
                for lv in study.labels
            ]
        colors = ["tab:orange" if lv == study.default else "tab:blue" for lv in study.labels]
        ax.bar(x, means, yerr=errs, color=colors, alpha=0.6, capsize=3)
        for i, lv in enumerate(study.labels):
            vals = list(table[lv][col].values.values())
            ax.scatter([i] * len(vals), vals, s=8, color="k", zorder=3)
        ax.set_xticks(x, study.labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(col, fontsize=8)
    fig.suptitle(
        f"{study.name} ({profile}): mean ± 95% CI over seeds (cost: median [min, max]); "
        "orange = default",
        fontsize=9,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def is_pipeline_check(ostudy: optuna.Study) -> bool:
    """Synthetic data (the smoke profile): exercises the machinery, answers nothing."""
    return ostudy.user_attrs.get("dataset") == "synthetic"


@dataclasses.dataclass
class Comparison:
    """One level vs another (the default, or a study contrast's) on one metric: the paired
    cell (its ``diff`` and raw ``p_value``), the diff's 95% CI half-width and the Holm-adjusted
    p (None = undefined)."""

    level: str
    metric: str
    cell: Cell
    ci: float
    holm_p: float | None
    versus: str = ""
    # smallest true difference the paired test had 80% power to detect (None: undefined)
    mde: float | None = None
    # (2.5%, 97.5%) of the seed x test-user bootstrap; None when a trial stored no ranks
    seed_user: tuple[float, float] | None = None
    # seeds left out: their upstream inputs differ ({seed: [input, ...]})
    broken: dict[int, list[str]] = dataclasses.field(default_factory=dict)


def broken_seeds(records: Records, level: str, versus: str) -> dict[int, list[str]]:
    """Seeds at which the two levels read different upstream inputs (not comparable)."""
    a, b = records.get(level, {}), records.get(versus, {})
    out = {}
    for seed in sorted(a.keys() & b.keys()):
        differ = pairing_break(a[seed], b[seed])
        if differ:
            out[seed] = differ
    return out


def user_level_ci(
    records: Records, level: str, versus: str, metric: str, seeds: list[int]
) -> tuple[float, float] | None:
    """Seed x test-user bootstrap CI of ``level - versus`` on ``metric``, when every seed of
    both trials stored per-user ranks of the same test users."""
    diffs = {}
    for seed in seeds:
        a = per_user(records.get(level, {}).get(seed, {}), metric)
        b = per_user(records.get(versus, {}).get(seed, {}), metric)
        if a is None or b is None or a.shape != b.shape:
            return None
        diffs[seed] = a - b
    if not diffs:
        return None
    _, lo, hi = seed_user_ci(diffs)
    return lo, hi


def compare_levels(
    study: Study,
    cols: list[str],
    table: dict[str, dict[str, Cell]],
    records: Records | None = None,
) -> list[Comparison]:
    """Paired tests of the objective and headline test metrics, every level vs the default and
    then the study's contrasts, Holm-corrected over every test returned. With the trials'
    ``records``, seeds whose upstream inputs differ are left out of a pair, and each row gets
    the seed x user CI where per-user ranks were stored."""
    records = records or {}
    headline = [c for c in cols if c.endswith(HEADLINE)]  # also a model's prefixed keys
    tested = list(dict.fromkeys((study.objective, *headline)))
    pairs = [(lv, study.default) for lv in study.labels if lv != study.default]
    pairs += list(study.contrasts)
    rows = []
    for lv, versus in pairs:
        measured = table[versus][study.objective].values or versus == study.default
        if table[lv][study.objective].values and measured:
            broken = broken_seeds(records, lv, versus)
            for col in tested:
                cell = table[lv][col]
                keep = {s: v for s, v in cell.values.items() if s not in broken}
                control = {s: v for s, v in table[versus][col].values.items() if s not in broken}
                diff, p = paired_test(keep, control)
                cell = dataclasses.replace(cell, values=keep, diff=diff, p_value=p)
                rows.append((lv, versus, col, cell, control, broken))
    adjusted = holm([r[3].p_value for r in rows])
    out = []
    for (lv, versus, col, c, control, broken), adj in zip(rows, adjusted, strict=True):
        shared = sorted(c.values.keys() & control.keys())
        d = [c.values[s] - control[s] for s in shared]
        sd = float(np.std(d, ddof=1)) if len(d) > 1 else math.nan
        mde = min_detectable_effect(sd, len(d))
        su = user_level_ci(records, lv, versus, col, shared)
        out.append(Comparison(lv, col, c, diff_ci(c.values, control), adj, versus, mde, su, broken))
    return out


def seed_user_text(cmp: Comparison) -> str:
    if cmp.seed_user is None:
        return "not recorded"
    return f"[{_fmt(cmp.seed_user[0])}, {_fmt(cmp.seed_user[1])}]"


def significance_lines(
    study: Study,
    cols: list[str],
    table: dict[str, dict[str, Cell]],
    records: Records | None = None,
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
        f"adjusted p < {ALPHA}). p is undefined when every seed's difference is equal. "
        "The mean diff's CI is over seeds only; the seed × user CI also resamples the test users "
        "(two-way bootstrap of the per-user differences; `not recorded` where a trial stored no "
        "per-user ranks). MDE: the smallest true difference this test detects with 80% power, "
        "given the seeds' spread, shown where the difference is not significant.",
        "",
        *md_table(
            ["level", "metric", "mean diff (95% CI, seeds)", "seed × user 95% CI", "p"]
            + ["Holm p", "significant", "MDE"]
        ),
    ]
    for cmp in comparisons:
        c, ci, adj = cmp.cell, cmp.ci, cmp.holm_p
        diff = _fmt(c.diff) if math.isnan(ci) else f"{_fmt(c.diff)} ± {_fmt(ci)}"
        sig = "n/a" if adj is None else ("yes" if adj < ALPHA else "no")
        p = "undefined" if c.p_value is None else _fmt(c.p_value, 3)
        mde = "—" if sig == "yes" else _fmt(cmp.mde)
        name = cmp.level if cmp.versus == study.default else f"{cmp.level} − {cmp.versus}"
        lines.append(row([name, cmp.metric, diff, seed_user_text(cmp), p, _fmt(adj, 3), sig, mde]))
    missing = [lv for lv in study.labels if not table[lv][study.objective].values]
    lines += [
        f"| {lv} | (no completed trial) | | | | | | |" for lv in missing if lv != study.default
    ]
    broken = {(c.level, c.versus): c.broken for c in comparisons if c.broken}
    for (lv, versus), seeds in broken.items():
        lines.append(
            f"\nNot paired: `{lv}` and `{versus}` read different upstream inputs at "
            + "; ".join(f"seed {s} ({', '.join(k)})" for s, k in seeds.items())
            + ", so those seeds are left out of their tests."
        )
    if records is not None and not any(
        upstream_recorded(m) for lv in records.values() for m in lv.values()
    ):
        lines.append(
            "\nUpstream fingerprints: not recorded (trials run before stages recorded the "
            "sha256 of their inputs), so equal inputs across levels could not be checked."
        )
    return lines


def profile_section(
    study: Study,
    profile: str,
    ostudy: optuna.Study,
    out: Path,
    storage_for: Callable[[str], str] | None = None,
) -> list[str]:
    """One ``## Profile`` section; ``storage_for(study name)`` finds the storage of the study
    :attr:`Study.reference` names (default: its journal beside this study's folder)."""
    trials = ostudy.get_trials(deepcopy=False)
    cols, table, counts = summarize_trials(study, trials)
    seeds = ostudy.user_attrs.get("seeds", [])
    check = is_pipeline_check(ostudy)
    overrides = ostudy.user_attrs.get("profile_overrides") or {}
    title = " — pipeline check on synthetic data, not a finding" if check else ""
    lines = [
        f"{SECTION_PREFIX}{profile}`{title}",
        "",
        f"Dataset `{ostudy.user_attrs.get('dataset', '?')}`; Optuna study `{ostudy.study_name}`; "
        f"seeds {seeds}; trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".",
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
        + (", ".join(f"`{k}={v}`" for k, v in overrides.items()) or "none")
        + ".",
        "",
    ]
    lines += md_table(
        ["level", *cols],
        [
            [f"**{lv}** (default)" if lv == study.default else lv]
            + [cell_text(table[lv][c], c) for c in cols]
            for lv in study.labels
        ],
    )
    lines += [
        "",
        "Quality cells: mean ± 95% CI (Student t) over seeds; "
        + (COUNTS_NOTE if any(c in COUNT_KEYS for c in cols) else "")
        + "cost cells (throughput, seconds, memory): median [min, max] over seeds.",
    ]
    if check:
        lines += ["", "No significance test: a synthetic smoke run checks the pipeline only."]
    else:
        records = trial_records(study, trials)
        lines += significance_lines(study, cols, table, records) + claim_lines(study, table)
        lines += note_lines(study, cols, table)
        where = storage_for or (lambda name: study_journal(out.parent, name))
        lines += reference_lines(study, profile, table, where)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    done = {live_point(study, t) for t in complete}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    open_ = [t for t in failed if (trial_level(t), trial_seed(t)) not in done]
    if len(failed) > len(open_):
        lines += [
            "",
            f"{len(failed) - len(open_)} failed or interrupted attempt(s) were retried "
            "and completed in a later launch.",
        ]
    if open_:
        lines += ["", "Failed trials (grid points without a complete trial):", ""]
        lines += [
            f"- #{t.number} {trial_level(t)} seed {trial_seed(t)}: "
            f"{t.user_attrs.get('error', STOPPED)}"
            for t in open_[:10]
        ]
    stale = [t for t in complete if is_stale(study, t)]
    if stale:
        lines += ["", STALE_NOTE, ""]
        lines += [
            f"- #{t.number} {trial_level(t)} seed {trial_seed(t)} ran {_spec_text(t)}"
            for t in stale[:10]
        ]
    lines += provenance_lines(ostudy.study_name, trials, out.parent)
    if any(table[lv][cols[0]].values for lv in study.labels):
        png = plot_levels(study, profile, cols, table, out / f"{profile}.png")
        lines += ["", f"![{study.name} {profile}]({png.name})"]
    return lines + [""]


def _spec_text(trial: optuna.trial.FrozenTrial) -> str:
    """The overrides a trial ran with (its ``level_spec``), as ```key=value``` items."""
    spec = trial.user_attrs["level_spec"]
    return ", ".join(f"`{k}={v}`" for part in ("fixed", "level") for k, v in spec[part].items())


def _profile_key(profile: str) -> tuple[int, str]:
    return (PROFILE_ORDER.index(profile) if profile in PROFILE_ORDER else 9, profile)


def report_sections(report: Path) -> dict[str, str]:
    """``## Profile `<name>` `` sections of an existing study report -> {profile: section text}."""
    if not report.exists():
        return {}
    sections: dict[str, str] = {}
    for chunk in report.read_text().split(SECTION_PREFIX)[1:]:
        name = chunk.split("`", 1)[0]
        sections[name] = SECTION_PREFIX + chunk
    return sections


def write_study_report(
    study: Study, storage: str, out_dir: Path, storage_for: Callable[[str], str] | None = None
) -> list[Path]:
    """``<out_dir>/<study>/report.md`` (+ one PNG per profile) from every profile of the study
    found in ``storage``; ``storage_for`` as in :func:`profile_section`. Returns the written
    paths (report first)."""
    out = out_dir / study.name
    names = set(optuna.get_all_study_names(read_storage(storage))) if exists(storage) else set()
    profiles = [n.removeprefix(f"{study.name}-") for n in names if n.startswith(f"{study.name}-")]
    profiles.sort(key=_profile_key)
    lines = [
        f"# Study `{study.name}`: {study.factor}",
        "",
        f"Factor keys: {', '.join(f'`{k}`' for k in study.keys)}; levels: "
        + ", ".join(f"`{lv}`" for lv in study.labels)
        + f" (default `{study.default}`).",
        f"Each trial re-runs {', '.join(study.run)}"
        + (
            f" and reuses {', '.join(study.reuse)} (built once per seed at the defaults)"
            if study.reuse
            else ""
        )
        + f". Objective `{study.objective}` "
        f"({study.direction}); cells are mean ± 95% CI (Student t) over seeds.",
        "",
    ]
    if study.fixed:
        pinned = ", ".join(f"`{k}={v}`" for k, v in study.fixed.items())
        lines[-1:-1] = [f"Every level (and the reused stages) runs with {pinned}."]
    report = out / "report.md"
    # profiles run against another storage (another machine, a deleted journal) keep the
    # section their run wrote
    kept = {p: text for p, text in report_sections(report).items() if p not in profiles}
    written: list[Path] = []
    for profile in sorted([*profiles, *kept], key=_profile_key):
        if profile in kept:
            lines += kept[profile].rstrip("\n").split("\n") + [""]
            continue
        ostudy = optuna.load_study(
            study_name=f"{study.name}-{profile}", storage=read_storage(storage)
        )
        lines += profile_section(study, profile, ostudy, out, storage_for)
        if (out / f"{profile}.png").exists():
            written.append(out / f"{profile}.png")
    write_text(report, "\n".join(lines))
    return [report, *written]
