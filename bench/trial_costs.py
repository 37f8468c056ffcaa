"""Trial costs: ``python bench/trial_costs.py`` writes ``experiments/trial_costs.md``, the median
trial minutes per study (the ``wall_seconds`` of its complete trials on the reference dataset,
on today's defaults) behind the seed counts ``studies.yaml`` declares; the rule is
:mod:`sidrec_core.studies.seeds`. A study's seed count is one design for every dataset, so a
replication elsewhere has the reference's seeds and its trials there do not move the count.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from sidrec_core.io import write_text
from sidrec_core.studies.elsewhere import real_trials
from sidrec_core.studies.pipeline import PROJECT_ROOT
from sidrec_core.studies.registry import STUDIES
from sidrec_core.studies.replicate import REFERENCE
from sidrec_core.studies.runner import EXPERIMENTS_DIR
from sidrec_core.studies.seeds import (
    CHEAP_MINUTES,
    CHEAP_SEEDS,
    COST_TABLE,
    DEFAULT_SEEDS,
    seeds_for_minutes,
)
from sidrec_core.studies.storage import study_journal


@dataclasses.dataclass(frozen=True)
class Cost:
    """One study's measured trial cost: ``minutes`` (median) over ``trials`` trials on the
    reference dataset, their range, and where the figure comes from (``basis``: its own trials
    or named studies running the same stages)."""

    study: str
    trials: int
    minutes: float | None
    low: float | None
    high: float | None
    basis: str

    @property
    def seeds(self) -> int | None:
        return None if self.minutes is None else seeds_for_minutes(self.minutes)


def measure_costs(out_dir: Path, metrics_dir: Path = PROJECT_ROOT / "metrics") -> list[Cost]:
    """Every registered study's :class:`Cost`, from its trials on :data:`REFERENCE` in the
    storages under ``out_dir`` (and the pipeline's ``metrics_dir`` for a study no trial of
    which, nor of a peer's, ran there)."""
    walls = {
        n: [w for data, _, w in real_trials(study_journal(out_dir, n), s) if data == REFERENCE]
        for n, s in STUDIES.items()
    }
    costs = []
    for name, study in STUDIES.items():
        own = walls[name]
        if own:
            m = np.array(own) / 60.0
            costs.append(Cost(name, len(own), float(np.median(m)), m.min(), m.max(), "measured"))
            continue
        alike = [n for n, s in STUDIES.items() if s.run == study.run and walls[n]]
        if not alike:
            costs.append(pipeline_cost(name, study.run, metrics_dir))
            continue
        medians = [float(np.median(walls[n])) / 60.0 for n in alike]
        # the dearest of them, so that a study is never given more seeds than its peers' cost
        # allows; its range is the spread of their medians
        basis = f"not measured; same stages as {', '.join(f'`{n}`' for n in alike)} (range: theirs)"
        costs.append(Cost(name, 0, max(medians), min(medians), max(medians), basis))
    return costs


def pipeline_cost(name: str, run: tuple[str, ...], metrics_dir: Path) -> Cost:
    """A study no trial of which ran, nor of any study running its stages: the committed
    pipeline run of those stages at the defaults (``metrics/<stage>.json``'s ``wall_seconds``)."""
    files = [metrics_dir / f"{stage}.json" for stage in run]
    if not all(f.exists() for f in files):
        return Cost(name, 0, None, None, None, "not measured")
    minutes = sum(float(json.loads(f.read_text())["wall_seconds"]) for f in files) / 60.0
    named = " + ".join(f"`metrics/{f.name}`" for f in files)
    return Cost(
        name, 0, minutes, minutes, minutes, f"no trial yet; the pipeline's default run ({named})"
    )


def _minutes(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def cost_table(costs: list[Cost], command: str) -> str:
    """``experiments/trial_costs.md``: the measured basis of every declared seed count."""
    lines = [
        "# Trial cost per study: the basis of the seeds the registry declares",
        "",
        f"Made by `{command}` from the studies' storage (`experiments/<study>/optuna.jsonl`). A "
        f"trial's cost is its `wall_seconds` (trials on {REFERENCE} only: the count is one "
        "design for every dataset, so a replication has the reference's seeds and its own "
        "trials, dearer on a larger dataset, do not change it; and on today's defaults only: a "
        "trial on earlier ones may have trained another model): the stages it re-runs, on one "
        "thread, so its wall minutes bound its CPU-minutes from above; the upstream stages a new "
        "seed needs are built once per seed and not counted. Rule (issue 33, item 4c): a study "
        f"whose median trial costs at most {CHEAP_MINUTES:.0f} CPU-minutes runs {CHEAP_SEEDS} "
        f"seeds, any other {DEFAULT_SEEDS}. A study with no {REFERENCE} trial takes the dearest "
        "median of the studies that run the same stages, and without one the pipeline's own run "
        "of its stages at the defaults. `studies.yaml` declares each count; a test checks it "
        "against this table.",
        "",
        f"| study | {REFERENCE} trials | median trial minutes | [min, max] | seeds | basis |",
        "|---|---|---|---|---|---|",
    ]
    for c in costs:
        spread = "—" if c.low is None else f"[{_minutes(c.low)}, {_minutes(c.high)}]"
        lines.append(
            f"| `{c.study}` | {c.trials} | {_minutes(c.minutes)} | {spread} | "
            f"{c.seeds or '—'} | {c.basis} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``bench/trial_costs.py [--out experiments]``: write ``<out>/trial_costs.md``."""
    p = argparse.ArgumentParser(description="write experiments/trial_costs.md from the storages")
    p.add_argument("--out", default=str(EXPERIMENTS_DIR), help="the studies' root folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    command = shlex.join(["python", "bench/trial_costs.py", *(argv or sys.argv[1:])])
    write_text(out / COST_TABLE, cost_table(measure_costs(out), command))
    print(out / COST_TABLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
