"""``experiments/README.md``: every real-data study's finding, the published findings the studies
test, the committed trials' provenance, the study registry and every other results file.

A finding is read as a referee would: the best level is chosen on the validation objective (a tie
goes to the default), never on the test figure it is then compared on; it is named best only when
its Holm-corrected paired difference from the default is significant and in its favour.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
from pathlib import Path

import numpy as np
import optuna

from sidrec_core.io import write_text
from sidrec_core.stages.report import PUBLISHED, PUBLISHED_UNSEEN
from sidrec_core.studies import markdown as md
from sidrec_core.studies.defaults import current_labels, departures, profile_of
from sidrec_core.studies.literature import claim_reading, metric_text
from sidrec_core.studies.notes import headline_metric, seeds_are_copies, study_notes
from sidrec_core.studies.provenance import SIDECAR, count_lines, read_backfill
from sidrec_core.studies.provenance import counts as provenance_counts
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.replicate import (
    REFERENCE,
    REPLICATE,
    direction_cell,
    first_part,
    latest_sections,
    level_effects,
    real_sections,
    reference_section,
)
from sidrec_core.studies.report import (
    Records,
    Table,
    compare_levels,
    profile_key,
    report_sections,
    summarize_trials,
    trial_records,
)
from sidrec_core.studies.rerun import RERUN_OF, counting
from sidrec_core.studies.seeds import (
    CHEAP_MINUTES,
    CHEAP_SEEDS,
    COST_TABLE,
    DEFAULT_SEEDS,
    seeds_held,
    shortfall_text,
)
from sidrec_core.studies.storage import sections, study_journal
from sidrec_core.studies.study import Study, is_shared, live_point
from sidrec_core.studies.trial_resume import RESUMED_SECONDS

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
    "perf/rpg_decoding.json": "`OMP_NUM_THREADS=1 python bench/perf/rpg_decoding.py "
    "--max-users 1000 --sidlm-width 20`, Beauty (the committed RPG and SID LM defaults)",
    "perf/sasrec_valid_cost.json": "`python bench/perf/sasrec_valid_cost.py --checkpoint "
    "models/sasrec/model.pt`, Beauty (the committed SASRec default)",
    COST_TABLE: "`python bench/trial_costs.py` (median trial minutes per study, from the storage)",
    SIDECAR: "`python bench/backfill_provenance.py` (from git and the storage)",
    "sasrec_ss_recipe.md": "hand-run `python bench/train_sasrec.py --set ...` and `dvc repro "
    "train_sasrec` (commands in it), Beauty",
    "sidlm_recipe_probe.md": "hand-run `python bench/train_sidlm.py` / `eval_sidlm.py --set ...` "
    "(commands in it), Beauty",
    "measured.md": "the figures code comments used to quote, each with the file that records it",
    "rpg_probe.md": "hand-run `python bench/train_rpg.py --set ...` and `dvc repro report` "
    "(commands in it), Beauty",
    "tune/grpo/against_start_beauty.md": "`python bench/grpo_against_start.py --profile beauty` "
    "(the GRPO and SID LM searches' retrains, from their storage)",
}


def last_commit(path: Path) -> str:
    """``<hash> <date>`` of the commit that last changed ``path`` (``uncommitted`` if none)."""
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
    """CPU seconds the study spent on a trial (one thread): the time from its start to its end,
    which counts the upstream stages DVC ran for it, or the recorded seconds of the stages DVC
    ran where larger (a trial taken from another study keeps those, not a duration of its own;
    all of its stages for trials stored before that was recorded), plus the training of earlier
    attempts it resumed (:mod:`~.trial_resume`)."""
    metrics = trial.user_attrs.get("metrics") or {}
    stages = float(metrics.get("spent_seconds", trial.user_attrs["wall_seconds"]))
    took = max(stages, (trial.datetime_complete - trial.datetime_start).total_seconds())
    return took + float(metrics.get(RESUMED_SECONDS) or 0.0)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One real-data section: ``best`` (on the validation ``objective``) against the default on
    the test ``metric``: ``diff`` ± ``ci`` over ``seeds``, Holm p (None: no test or undefined),
    the MDE, the seed x user CI (None: not recorded), ``copies`` (every seed repeats one run),
    ``tied`` levels and the ``broken`` seeds left out for different upstream inputs."""

    metric: str
    objective: str
    best: str
    levels: tuple[str, ...]
    default_value: float
    seeds: int
    diff: float | None = None
    ci: float = math.nan
    holm_p: float | None = None
    copies: bool = False
    tied: tuple[str, ...] = ()
    mde: float | None = None
    seed_user: tuple[float, float] | None = None
    broken: tuple[int, ...] = ()

    @property
    def significant(self) -> bool:
        return self.holm_p is not None and self.holm_p < md.ALPHA


def read_finding(
    study: Study, cols: list[str], table: Table, records: Records | None = None
) -> Finding | None:
    """The section's finding (None when the default has no test figure), tested as the study's
    report tests it (:func:`~sidrec_core.studies.report.compare_levels`)."""
    key = headline_metric(cols)  # e.g. mostpop/test/ndcg@10
    if key not in cols or not table[study.default][key].values:
        return None
    obj = study.objective
    levels = [lv for lv in study.labels if table[lv][key].values]
    sign = 1.0 if study.direction == "maximize" else -1.0

    def rank(lv: str) -> tuple[float, bool]:
        value = table[lv][obj].mean if table[lv][obj].values else -sign * math.inf
        return sign * value, lv == study.default

    best = max(levels, key=rank)
    default = table[study.default][key]
    seeds = len(set(table[best][key].values) & set(default.values))
    tied = tuple(
        lv
        for lv in levels
        if lv != best and table[lv][obj].values and table[lv][obj].mean == table[best][obj].mean
    )
    copies = seeds_are_copies([table[lv][key] for lv in levels])
    finding = Finding(key, obj, best, tuple(levels), default.mean, seeds, copies=copies, tied=tied)
    if best == study.default:
        return finding
    cmp = next(
        c
        for c in compare_levels(study, cols, table, records)
        if c.level == best and c.versus == study.default and c.metric == key
    )
    return dataclasses.replace(
        finding,
        diff=cmp.cell.diff,
        ci=cmp.ci,
        holm_p=cmp.holm_p,
        seeds=len(set(cmp.cell.values) & set(default.values)),
        mde=cmp.mde,
        seed_user=cmp.seed_user,
        broken=tuple(sorted(cmp.broken)),
    )


def pipeline_default_value(out_dir: Path, study: Study, profile: str, metric: str) -> float | None:
    """The pipeline default's mean ``metric`` in ``profile``, measured by the study that
    :attr:`Study.pipeline_default` names (None when it has not)."""
    if study.pipeline_default is None:
        return None
    name, level = study.pipeline_default
    ostudy = dict(real_sections(study_journal(out_dir, name), STUDIES[name])).get(profile)
    if ostudy is None:
        return None
    cell = summarize_trials(STUDIES[name], ostudy.get_trials(deepcopy=False))[1][level].get(metric)
    return cell.mean if cell and cell.values else None


def best_cell(study: Study, f: Finding) -> str:
    """A level is named only when its difference is significant and in its favour."""
    if f.levels == (study.default,):
        return "—"
    if f.best == study.default:
        return f"default `{study.default}`"
    if f.copies or f.holm_p is None:
        return f"`{f.best}` (untested)"
    if not f.significant:
        return "n.s."
    better = (f.diff or 0.0) > 0 if study.direction == "maximize" else (f.diff or 0.0) < 0
    return f"`{f.best}`" if better else f"none (`{f.best}` is worse on test)"


def effect_text(study: Study, f: Finding) -> str:
    """The findings table's effect cell, plain about what was not found."""
    value = f"{md.fmt(f.default_value)}, {f.seeds} seeds"
    if f.levels == (study.default,):
        return f"only the default measured so far ({value})"
    if f.best == study.default:
        tied = f" (tied: {', '.join(f.tied)})" if f.tied else ""
        return f"no level above the default on `{f.objective}`{tied}; default {value}"
    if f.copies:
        head = f"`{f.best}` − default: {md.fmt(f.diff)}"
        return f"{head} at every seed: the seeds are copies, one measurement, no test"
    if f.seeds < 2:  # no paired test, so no Holm p
        return f"`{f.best}` − default: not tested (a paired test needs 2 seeds)"
    head = f"`{f.best}` − default: {md.pm(f.diff, f.ci)}"
    if f.holm_p is None:
        return f"{head}; p undefined (every seed's difference equal); {f.seeds} seeds"
    text = f"{head} (seeds); seed × user CI {md.interval(f.seed_user)}; "
    text += f"Holm p {md.fmt(f.holm_p, 3)}, "
    text += "significant" if f.significant else f"n.s. (MDE {md.fmt(f.mde)})"
    text += f"; {f.seeds} seeds"
    if f.broken:
        text += f" (seeds {list(f.broken)} left out: different upstream inputs)"
    return text


def filled(study: Study, ostudy: optuna.Study, levels: list[str] | None = None) -> tuple[int, int]:
    """(grid points with a complete trial, grid points) of a section, or of its ``levels``: a
    trial a re-run replaced was paid for, but it fills no point."""
    complete = ostudy.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    done = [t for t in complete if "wall_seconds" in t.user_attrs]
    levels = study.labels if levels is None else levels
    counted = [lv for lv, _ in counting(study, done) if lv in levels]
    return len(counted), len(levels) * len(ostudy.user_attrs.get("seeds") or [])


def finding_row(
    study: Study,
    profile: str,
    ostudy: optuna.Study,
    out_dir: Path | None = None,
    earlier: optuna.Study | None = None,
) -> tuple[str, list[str]] | None:
    """(findings-table row, the section's notes); None when it has no complete trial.
    ``earlier``: the profile's section on the earlier defaults, for the direction column."""
    trials = ostudy.get_trials(deepcopy=False)
    cols, table = summarize_trials(study, trials)
    f = read_finding(study, cols, table, trial_records(study, trials))
    if f is None:
        return None
    complete = optuna.trial.TrialState.COMPLETE
    done = [t for t in trials if t.state == complete and "wall_seconds" in t.user_attrs]
    walls = [spent_seconds(t) for t in done]
    # a failed trial's end is when it was marked failed, possibly long after its worker died
    ended = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    failed = sum("error" in t.user_attrs for t in ended)  # the objective raised
    stopped = len(ended) - failed  # its worker was stopped mid-trial (see report.STOPPED)
    shared = sum(map(is_shared, done))
    counted, grid = filled(study, ostudy)
    replaced = sum(RERUN_OF in t.user_attrs for t in done)
    cost = f"{sum(walls) / 3600:.1f} CPU-h in {len(walls)} trials" if walls else "—"
    extras = [f"{shared} taken from other studies"] if shared else []
    extras += [f"{replaced} replaced by re-runs"] if replaced else []
    cost += f" ({', '.join(extras)})" if extras else ""
    unfinished = [f"{failed} failed"] if failed else []
    unfinished += [f"{stopped} stopped mid-trial"] if stopped else []
    cost += f", {' and '.join(unfinished)} (their time not counted)" if unfinished else ""
    effect = effect_text(study, f)
    if counted < grid:
        effect += f" (partial: {counted} of {grid} trials)"
    short = shortfall_text(seeds_held(trials, lambda t: live_point(study, t)), study.seeds)
    effect += f"; {short}" if short else ""
    moved = departures(study, ostudy)
    if moved:
        there = pipeline_default_value(out_dir, study, profile, f.metric) if out_dir else None
        ran = md.assignments(moved.items())
        effect += f"; not on the pipeline default: its trials ran with {ran}"
        if there is not None:
            name, level = study.pipeline_default or ("", "")
            effect += (
                f" (its default {md.fmt(f.default_value)} against the pipeline default "
                f"{md.fmt(there)}, `{name}` `{level}`)"
            )
    dataset = str(ostudy.user_attrs.get("dataset", "?"))
    notes = study_notes(study, table, f.metric, dataset)
    effect += "; see the notes below" if notes else ""
    if "wall_seconds" in cols:
        own = np.median(list(table[f.best]["wall_seconds"].values.values()))
        cost += f"; `{f.best}`'s own stages {own:.0f} s a trial"
    chosen = f"`{f.metric}` (best level chosen on `{f.objective}`)"
    link = f"[`{study.name}`]({study.name}/report.md)"
    cells = [link, dataset, profile, study.factor, chosen, best_cell(study, f), effect, cost]
    return md.row([*cells, direction_cell(study, earlier, ostudy)]), notes


def literature(out_dir: Path) -> list[str]:
    """Every published finding a study tests, with this project's reading of it."""
    lines = [
        "## Literature",
        "",
        "Each published finding a study names, against its real-data paired difference on the "
        "metric the finding is about (95% CI over seeds, then each seed's difference; details in "
        "the study's report).",
        "",
        *md.table(["finding", "source", "study", "profile", "metric", "measured", "verdict"]),
    ]
    for s in STUDIES.values():
        found = real_sections(study_journal(out_dir, s.name), s) if s.claims else []
        link = f"[`{s.name}`]({s.name}/report.md)"
        for claim in s.claims:
            if not found:
                cells = [claim.finding, claim.source, link, "—", metric_text(claim, None)]
                lines.append(md.row([*cells, "—", "not run"]))
            for profile, ostudy in found:
                _, table = summarize_trials(s, ostudy.get_trials(deepcopy=False))
                cells = [claim.finding, claim.source, link, profile]
                cells += [metric_text(claim, table[claim.level]), *claim_reading(claim, table)]
                lines.append(md.row(cells))
    return lines + [""]


def provenance(out_dir: Path) -> list[str]:
    """How many complete trials of every study recorded each provenance field, had it derived
    in the sidecar, or have it not recorded."""
    found = [
        (ostudy.study_name, ostudy.get_trials(deepcopy=False))
        for s in STUDIES.values()
        for _, ostudy in sections(study_journal(out_dir, s.name), s.name)
    ]
    if not found:
        return []
    total = provenance_counts(found, read_backfill(out_dir))
    lead = (
        f"Over the {sum(total['commit'])} complete trials of every study and profile: what each "
        f"recorded itself, what [`{SIDECAR}`]({SIDECAR}) derives from git for it, and what is "
        "not recorded (never reconstructed). Each report gives its sections' counts."
    )
    return ["## Provenance of the committed trials", "", *count_lines(total, lead), ""]


def findings(out_dir: Path) -> list[str]:
    rows, notes = [], []
    for s in STUDIES.values():
        found_sections = real_sections(study_journal(out_dir, s.name), s)
        current = current_labels(label for label, _ in found_sections)
        earliest = dict(reversed([(profile_of(lb), o) for lb, o in found_sections]))
        for profile, ostudy in found_sections:
            first = earliest[profile_of(profile)]
            compare = current[profile_of(profile)] == profile and first is not ostudy
            found = finding_row(s, profile, ostudy, out_dir, first if compare else None)
            if found:
                rows.append(found[0])
                link = f"[`{s.name}`]({s.name}/report.md) ({profile})"
                notes += [f"- {link}: {n}" for n in found[1]]
    lines = [
        "## Findings (real data)",
        "",
        "Per study, the level with the best validation objective (named in the row; a tie goes "
        "to the default) and its paired difference from the default on the row's test metric "
        "(95% CI over seeds, then the seed × test-user bootstrap CI where per-user ranks were "
        "stored), Holm-corrected within its study's report. A level is named best only when "
        f'that difference is significant (Holm p < {md.ALPHA}) and in its favour; "n.s." marks '
        "one that is not, with the minimum detectable effect (MDE: 80% power at the seeds' "
        "spread). A row whose trials ran off the pipeline default (the study's fixed overrides, "
        "or values params.yaml has changed since) says so, with the pipeline default's figure "
        "where another "
        "study measured it. A profile whose defaults changed since a study first ran has a row "
        "per defaults (`<profile>@<sha>` the later); the later row's last column says, per "
        "level significant on either, whether its effect kept its direction (yes / no where "
        "significant on both, else unresolved: earlier → now). The cost is the CPU-hours (one "
        "thread) the section's complete trials took, upstream stages DVC ran for them included "
        "and what it restored from its run-cache not (a trial a re-run replaced included: it "
        "was paid for), then the median seconds of the best level's own stages; trials that "
        "raised (failed) or whose worker was stopped mid-trial are counted, not timed (the epochs "
        "such a trial finished count in the trial that resumed its training).",
        "",
        *md.table(
            ["study", "dataset", "profile", "factor", "metric", "best level", "effect vs default"]
            + ["cost", "same direction as on earlier defaults"]
        ),
        *(rows or ["| (no study has run on real data yet) | | | | | | | | |"]),
        "",
    ]
    return lines + (["### What the findings cannot answer", "", *notes, ""] if notes else [])


def replication(out_dir: Path) -> list[str]:
    """Each study a second dataset is owed (a level significant on the reference dataset's
    latest section, or named by :data:`REPLICATE`) against its latest section on every other
    dataset: how far that ran, and per level significant on either, whether the effect held."""
    rows = []
    for s in STUDIES.values():
        latest = latest_sections(study_journal(out_dir, s.name), s)
        ref = reference_section(latest)
        effects = level_effects(s, ref) if ref is not None else {}
        significant = [f"`{lv}` {d:+.4f}" for lv, (d, sig) in effects.items() if sig]
        if not significant and s.name not in REPLICATE:
            continue
        why = f"significant: {', '.join(significant)}" if significant else REPLICATE[s.name]
        link = f"[`{s.name}`]({s.name}/report.md)"
        others = [o for o in latest if o.user_attrs.get("dataset") != REFERENCE]
        if not others:
            rows.append(md.row([link, why, "—", "no section yet", "—"]))
        lead = first_part(s, [lv for lv, (_, sig) in effects.items() if sig])
        for o in others:
            counted, grid = filled(s, o)
            ran = f"{counted} of {grid} trials"
            if len(lead) > 1 and len(lead) < len(s.labels):
                ran += " (the default and those levels: {} of {})".format(*filled(s, o, lead))
            held = direction_cell(s, ref, o) if ref is not None else "—"
            section = f"{o.user_attrs.get('dataset')} (`{o.study_name}`)"
            rows.append(md.row([link, why, section, ran, held]))
    return [
        "## Replication on a second dataset",
        "",
        f"A study is owed a second dataset when a level's effect is significant on {REFERENCE} "
        "(its latest section, Holm-corrected within the study; the level − default difference "
        "on the headline test metric shown, better or worse) or the round-2 issue names it "
        "(issue 38, item 3). Per level significant on either dataset: yes / no where it is "
        f"significant on both in the same / the opposite direction, else unresolved ({REFERENCE} "
        "→ the other dataset); an unfinished section is read as it stands.",
        "",
        *md.table(["study", f"why ({REFERENCE})", "other dataset", "ran", "effect held"]),
        *(rows or ["| (no study owes one) | | | | |"]),
        "",
    ]


TIGER_T2 = "TIGER paper (Rajput et al., NeurIPS 2023), Table 2"
RPG_PAPER = "Hou et al., KDD 2025 (arXiv:2506.05781), main results table"
RPG_RELEASED = "RPG (authors' code and released text embeddings, re-run by a user)"
RPG_OWN = "RPG (authors' code, a user's own text embeddings, the README's Sports command)"
# Sports and Outdoors in the P5/TIGER version (35,598 users, leave-one-out, every item ranked) that
# ``--profile sports`` runs: that table's Sports columns (its SASRec row quotes P5's baselines).
# Beauty's rows live with the pipeline report (``stages/report.py``), which prints them too.
PUBLISHED_SPORTS: dict[str, tuple[str, dict[str, float]]] = {
    "SASRec (one-negative BCE)": (
        f"{TIGER_T2}, Sports and Outdoors",
        {"hr@5": 0.0233, "ndcg@5": 0.0154, "hr@10": 0.0350, "ndcg@10": 0.0192},
    ),
    "TIGER": (
        f"{TIGER_T2}, Sports and Outdoors",
        {"hr@5": 0.0264, "ndcg@5": 0.0181, "hr@10": 0.0400, "ndcg@10": 0.0225},
    ),
    # RPG's item text goes through OpenAI's text-embedding-3-large; issue #9 matched the paper
    # only with the authors' released embeddings, issue #3 fell short with its own
    "RPG (paper)": (
        f"{RPG_PAPER}, as quoted in facebookresearch/RPG_KDD2025 issue #9 (its 'RPG (Paper)' "
        "column, whose TIGER column is TIGER's Table 2)",
        {"hr@5": 0.0314, "ndcg@5": 0.0216, "hr@10": 0.0463, "ndcg@10": 0.0263},
    ),
    RPG_RELEASED: (
        "facebookresearch/RPG_KDD2025 issue #9 (2025-12-10, full sorting)",
        {"hr@5": 0.0305, "ndcg@5": 0.0214, "hr@10": 0.0448, "ndcg@10": 0.0260},
    ),
    RPG_OWN: (
        "facebookresearch/RPG_KDD2025 issue #3 (2025-07-01 Sports_and_Outdoors test results)",
        {"hr@5": 0.0233, "ndcg@5": 0.0161, "hr@10": 0.0337, "ndcg@10": 0.0194},
    ),
}
# The eSASRec benchmark's Sports (its ``s3_sports``: 35,598 users, 18,357 items, 296,337
# interactions, as here) ranks with the user's history removed, like its Beauty rows.
TB_SPORTS = "blondered/transformer_benchmark, `README.md`, 'Amazon datasets' table (Sports)"
PUBLISHED_SPORTS_UNSEEN: dict[str, tuple[str, dict[str, float]]] = {
    "SASRec + sampled softmax (grid-searched on validation)": (
        TB_SPORTS,
        {"hr@10": 0.0569, "ndcg@10": 0.0314},
    ),
    "eSASRec (LiGR blocks + sampled softmax; arXiv 2508.06450)": (
        TB_SPORTS,
        {"hr@10": 0.0560, "ndcg@10": 0.0323},
    ),
}


def published() -> list[str]:
    """The published rows per dataset, with protocol and source: Beauty's are those the pipeline
    report compares with; the Sports rows, those a Sports section reads against."""
    rpg_released, rpg_own = (PUBLISHED_SPORTS[k][1]["ndcg@10"] for k in (RPG_RELEASED, RPG_OWN))
    rows = [
        [dataset, name, protocol, f"{figs['hr@10']:.4f}", f"{figs['ndcg@10']:.4f}", src]
        for dataset, rows, protocol in (
            ("beauty", PUBLISHED, "all items ranked"),
            ("beauty", PUBLISHED_UNSEEN, "history removed"),
            ("sports", PUBLISHED_SPORTS, "all items ranked"),
            ("sports", PUBLISHED_SPORTS_UNSEEN, "history removed"),
        )
        for name, (src, figs) in rows.items()
    ]
    return [
        "## Published figures",
        "",
        "On the users this repository's datasets hold (Beauty 22,363, Sports 35,598; "
        "leave-one-out): Beauty's are the rows `experiments/pipeline_report.md` sets beside this "
        "pipeline's. HR@10 is Recall@10 with one target. RPG's rows embed item text with "
        "OpenAI's text-embedding-3-large (3,072-d) where this pipeline uses all-MiniLM-L6-v2 "
        f"(384-d); on Sports the authors' code gave NDCG@10 {rpg_released:.4f} with their "
        f"released embeddings and {rpg_own:.4f} with a user's own "
        "(facebookresearch/RPG_KDD2025 issues #9 and #3).",
        "",
        *md.table(["dataset", "model", "protocol", "HR@10", "NDCG@10", "source"], rows),
        "",
    ]


def write_index(out_dir: Path) -> Path:
    """``<out_dir>/README.md``: findings, the study registry, other results files."""
    lines = [
        "# Experiments",
        "",
        "Generated by `python bench/ablate.py` from the studies' storage "
        "(`experiments/<study>/optuna.jsonl`); do not edit by hand.",
        "",
        *findings(out_dir),
        *replication(out_dir),
        *literature(out_dir),
        *published(),
        *provenance(out_dir),
        "## Studies",
        "",
        "Each study varies one factor with everything else at the defaults (or at the study's "
        "fixed overrides, named in its findings row), over the seeds the registry declares for "
        f"it ({CHEAP_SEEDS} where a trial costs at most {CHEAP_MINUTES:.0f} CPU-minutes, else "
        f"{DEFAULT_SEEDS}: [{COST_TABLE}]({COST_TABLE})); "
        "reports give mean ± 95% CI over seeds and, on real data, Holm-corrected paired t-tests "
        "(over seeds) against the default. Smoke sections are pipeline checks on synthetic data.",
        "",
        *md.table(
            ["study", "group", "factor", "levels (default)", "seeds declared"]
            + ["profiles run", "report"]
        ),
    ]
    for s in STUDIES.values():
        ran = sorted(report_sections(out_dir / s.name / "report.md"), key=profile_key)
        report = (
            f"[report]({s.name}/report.md)" if (out_dir / s.name / "report.md").exists() else "—"
        )
        levels = f"{', '.join(s.labels)} (`{s.default}`)"
        cells = [f"`{s.name}`", s.group, s.factor, levels, s.seeds, ", ".join(ran) or "—", report]
        lines.append(md.row(cells))
    files = [(out_dir / n, how) for n, how in RESULTS_FILES.items() if (out_dir / n).exists()]
    files += [
        (p, "`python bench/tune.py`") for p in sorted((out_dir / "tune").rglob("report_*.md"))
    ]
    rows = [
        [f"[`{p.relative_to(out_dir)}`]({p.relative_to(out_dir)})", how, last_commit(p)]
        for p, how in files
    ]
    lines += [
        "",
        "## Other results files",
        "",
        *md.table(["file", "how it was made", "last commit"], rows),
    ]
    path = out_dir / "README.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
