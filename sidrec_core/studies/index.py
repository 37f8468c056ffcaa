"""``experiments/README.md``: the findings of every study run on real data (best level, its
effect on test NDCG@10 against the default with a 95% CI and Holm-corrected p, cost), where they
meet the published findings the studies name, the study registry with links to every report,
and every other results file with its provenance.

Findings come from the studies' Optuna storage (regenerated, never hand-edited); a study with
only smoke sections has no finding.
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import numpy as np
import optuna

from sidrec_core.io import write_text
from sidrec_core.studies.literature import claim_reading
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.report import (
    ALPHA,
    PROFILE_ORDER,
    _fmt,
    compare_levels,
    is_pipeline_check,
    report_sections,
    summarize_trials,
)
from sidrec_core.studies.shared import is_shared
from sidrec_core.studies.storage import exists, read_storage, study_journal
from sidrec_core.studies.study import Study

KEY = "test/ndcg@10"
# results made outside the study machinery: how each was made (the commit is git's)
RESULTS_FILES: dict[str, str] = {
    "pipeline_report.md": "`dvc repro` (the `report` stage over `metrics/*.json`), profile full",
    "sasrec_beauty.md": "hand-run `python bench/train_sasrec.py --set ...` per row (commands "
    "at its top), Beauty",
    "sasrec_bce.md": "hand-run `python bench/train_sasrec.py --set ...` per row (commands at "
    "its top), Beauty",
    "sid_quality.md": "`OMP_NUM_THREADS=1 python bench/sid_quality.py --epochs 50`, Beauty",
    "perf/sid_perf.json": "`python bench/perf/sid_perf.py --threads 2`",
    "perf/sasrec_perf.json": "`python bench/perf/sasrec_perf.py`",
    "perf/sasrec_sequence_perf.json": "`python bench/perf/sasrec_perf.py --losses ce --set "
    "sasrec.train_rows=sequence --set sasrec.train.batch_size=128`",
    "perf/beam_perf.json": "`python bench/perf/beam_perf.py`",
    "perf/lm_head_perf.json": "`python bench/perf/lm_head_perf.py`",
    "perf/grpo_perf.json": "`OMP_NUM_THREADS=1 python bench/perf/grpo_perf.py --steps 12`",
    "perf/sidlm_decoding.md": "`python bench/perf/sidlm_decoding.py --max-users 1000`, Beauty",
}


def last_commit(path: Path) -> str:
    """The commit that last changed ``path`` (``uncommitted`` when git does not know it)."""
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%h %cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "uncommitted"


def spent_seconds(trial: optuna.trial.FrozenTrial) -> float:
    """CPU seconds this study spent on a trial: its stages' wall time minus what came from the
    cache or another study's trial (trials stored before that was recorded: all of it)."""
    metrics = trial.user_attrs.get("metrics") or {}
    return float(metrics.get("spent_seconds", trial.user_attrs["wall_seconds"]))


def finding_row(study: Study, profile: str, ostudy: optuna.Study) -> str | None:
    """One findings-table row for a real-data section, None when it has no complete trial."""
    trials = ostudy.get_trials(deepcopy=False)
    cols, table, _ = summarize_trials(study, trials)
    key = next((c for c in cols if c.endswith(KEY)), KEY)  # e.g. mostpop/test/ndcg@10
    if key not in cols or not table[study.default][key].values:
        return None
    levels = [lv for lv in study.labels if table[lv][key].values]
    # a tie goes to the default: a level must beat it to be named best
    best = max(levels, key=lambda lv: (table[lv][key].mean, lv == study.default))
    done = [
        t
        for t in trials
        if t.state == optuna.trial.TrialState.COMPLETE and "wall_seconds" in t.user_attrs
    ]
    walls = [spent_seconds(t) for t in done]
    shared = sum(map(is_shared, done))
    cost = f"{sum(walls) / 3600:.1f} CPU-h in {len(walls)} trials" if walls else "—"
    cost += f" ({shared} taken from other studies)" if shared else ""
    seeds = len(set(table[best][key].values) & set(table[study.default][key].values))
    only_default = levels == [study.default]
    if only_default:
        effect = f"only the default measured so far ({_fmt(table[best][key].mean)}, {seeds} seeds)"
    elif best == study.default:
        tied = [lv for lv in levels if lv != best and table[lv][key].mean == table[best][key].mean]
        best_or_tied = f"tied with {', '.join(tied)}" if tied else "is best"
        effect = f"default {best_or_tied} ({_fmt(table[best][key].mean)}, {seeds} seeds)"
    else:
        cmp = next(
            c
            for c in compare_levels(study, cols, table)
            if c.level == best and c.versus == study.default and c.metric == key
        )
        c, ci = cmp.cell, cmp.ci
        diff = _fmt(c.diff) if math.isnan(ci) else f"{_fmt(c.diff)} ± {_fmt(ci)}"
        p = "undefined" if cmp.holm_p is None else _fmt(cmp.holm_p, 3)
        sig = " (significant)" if cmp.holm_p is not None and cmp.holm_p < ALPHA else ""
        effect = f"{diff}; Holm p {p}{sig}; {seeds} seeds"
    grid = len(study.labels) * len(ostudy.user_attrs.get("seeds") or [])
    if len(walls) < grid:
        effect += f" (partial: {len(walls)} of {grid} trials)"
    wall_best = [table[best][c].values for c in cols if c == "wall_seconds"]
    per_trial = f"; {np.median(list(wall_best[0].values())):.0f} s a trial" if wall_best else ""
    best_cell = "—" if only_default else f"`{best}`"
    return (
        f"| [`{study.name}`]({study.name}/report.md) | {profile} | {study.factor} | {best_cell} | "
        f"{effect} | {cost}{per_trial} |"
    )


def real_sections(out_dir: Path, study: Study) -> list[tuple[str, optuna.Study]]:
    """(profile, Optuna study) of every real-data section in the study's storage."""
    url = study_journal(out_dir, study.name)
    if not exists(url):
        return []
    out = []
    for name in optuna.get_all_study_names(read_storage(url)):
        if name.startswith(f"{study.name}-"):
            ostudy = optuna.load_study(study_name=name, storage=read_storage(url))
            if not is_pipeline_check(ostudy):
                out.append((name.removeprefix(f"{study.name}-"), ostudy))
    return out


def literature(out_dir: Path) -> list[str]:
    """Every published finding a study tests, with this project's reading of it."""
    lines = [
        "## Literature",
        "",
        "Each published finding a study names, against its real-data paired difference "
        "(95% CI over seeds; details in the study's report).",
        "",
        "| finding | source | study | profile | measured | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for s in STUDIES.values():
        sections = real_sections(out_dir, s) if s.claims else []
        for claim in s.claims:
            link = f"[`{s.name}`]({s.name}/report.md)"
            if not sections:
                lines.append(f"| {claim.finding} | {claim.source} | {link} | — | — | not run |")
            for profile, ostudy in sections:
                _, table, _ = summarize_trials(s, ostudy.get_trials(deepcopy=False))
                measured, reading = claim_reading(claim, table)
                lines.append(
                    f"| {claim.finding} | {claim.source} | {link} | {profile} | {measured} | "
                    f"{reading} |"
                )
    return lines + [""]


def findings(out_dir: Path) -> list[str]:
    rows = []
    for s in STUDIES.values():
        for profile, ostudy in real_sections(out_dir, s):
            row = finding_row(s, profile, ostudy)
            if row:
                rows.append(row)
    lines = [
        "## Findings (real data)",
        "",
        f"Best level by mean test NDCG@10 and its paired difference from the default over seeds "
        f"(95% CI), Holm-corrected within its study's report (significant at p < {ALPHA}).",
        "",
        "| study | profile | factor | best level | effect on test NDCG@10 vs default | cost |",
        "|---|---|---|---|---|---|",
    ]
    if not rows:
        lines.append("| (no study has run on real data yet) | | | | | |")
    return lines + rows + [""]


def write_index(out_dir: Path) -> Path:
    """``<out_dir>/README.md``: findings, the study registry, other results files."""
    lines = [
        "# Experiments",
        "",
        "Generated by `python bench/ablate.py` from the studies' storage "
        "(`experiments/<study>/optuna.jsonl`); do not edit by hand.",
        "",
        *findings(out_dir),
        *literature(out_dir),
        "## Studies",
        "",
        "Each study varies one factor with everything else at the defaults, over >= 3 seeds; "
        "reports give mean ± 95% CI over seeds and, on real data, Holm-corrected paired t-tests "
        "(over seeds) against the default. Smoke sections are pipeline checks on synthetic data.",
        "",
        "| study | group | factor | levels (default) | profiles run | report |",
        "|---|---|---|---|---|---|",
    ]
    for s in STUDIES.values():
        sections = report_sections(out_dir / s.name / "report.md")
        ran = [p for p in PROFILE_ORDER if p in sections]
        has_report = (out_dir / s.name / "report.md").exists()
        report = f"[report]({s.name}/report.md)" if has_report else "—"
        lines.append(
            f"| `{s.name}` | {s.group} | {s.factor} | {', '.join(s.labels)} "
            f"(`{s.default}`) | {', '.join(ran) or '—'} | {report} |"
        )
    lines += [
        "",
        "## Other results files",
        "",
        "| file | how it was made | last commit |",
        "|---|---|---|",
    ]
    for name, how in RESULTS_FILES.items():
        if (out_dir / name).exists():
            lines.append(f"| [`{name}`]({name}) | {how} | {last_commit(out_dir / name)} |")
    for report in sorted((out_dir / "tune").rglob("report_*.md")):
        rel = report.relative_to(out_dir)
        lines.append(f"| [`{rel}`]({rel}) | `python bench/tune.py` | {last_commit(report)} |")
    path = out_dir / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
