"""What a study cannot answer: its declared notes with figures filled from the section
(``{level:metric}`` the level's mean, median for a cost figure; ``{*:metric}`` the levels' range;
``:%`` a percentage; ``n/a`` when unmeasured, and a sentence whose every figure is unmeasured
left out), and seeds that are copies of one run."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from sidrec_core.metrics import HEADLINE
from sidrec_core.studies.markdown import is_cost
from sidrec_core.studies.study import NOTE_FIGURE, Study

if TYPE_CHECKING:
    from sidrec_core.studies.report import Cell


def level_value(cell: Cell | None, metric: str) -> float | None:
    """The mean over seeds, the median for a cost figure."""
    if cell is None or not cell.values:
        return None
    if is_cost(metric):
        return float(np.median(list(cell.values.values())))
    return float(cell.mean)


def _text(value: float | None, metric: str, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if percent:
        return f"{100 * value:.0f}%"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if is_cost(metric) else f"{value:.4f}"


def fill_note(note: str, study: Study, table: dict[str, dict[str, Cell]]) -> str:
    """``note`` with every figure placeholder replaced by its value in ``table``."""

    def figure(match: re.Match[str]) -> str:
        level, metric, percent = match.group(1), match.group(2), bool(match.group(3))
        if level != "*":
            return _text(level_value(table[level].get(metric), metric), metric, percent)
        values = [level_value(table[lv].get(metric), metric) for lv in study.labels]
        known = [v for v in values if v is not None]
        if not known:
            return "n/a"
        return f"{_text(min(known), metric, percent)} to {_text(max(known), metric, percent)}"

    return NOTE_FIGURE.sub(figure, note)


SENTENCE_END = re.compile(r"(?<=[.;])\s+(?=[A-Z])")


def measured_note(note: str, study: Study, table: dict[str, dict[str, Cell]]) -> str:
    """``note`` filled in, without the sentences whose figures are all unmeasured (an
    ``etegrec`` section with no alternating trial yet says nothing about re-assignment, rather
    than "n/a of items")."""
    kept = []
    for part in SENTENCE_END.split(note):
        figures = [fill_note(m.group(0), study, table) for m in NOTE_FIGURE.finditer(part)]
        if not figures or any(f != "n/a" for f in figures):
            kept.append(fill_note(part, study, table))
    return " ".join(kept)


def seeds_are_copies(cells: list[Cell]) -> bool:
    """Every level measured gives one value at all its >= 2 seeds: the seeds repeat one run."""
    measured = [c for c in cells if c.values]
    return bool(measured) and all(
        len(c.values) >= 2 and len(set(c.values.values())) == 1 for c in measured
    )


def study_notes(
    study: Study, table: dict[str, dict[str, Cell]], metric: str, dataset: str
) -> list[str]:
    """Seeds that are copies (on ``metric``), then the study's notes about ``dataset``, figures
    filled in."""
    out = []
    if seeds_are_copies([table[lv][metric] for lv in study.labels if metric in table[lv]]):
        out.append(
            f"Every seed gives the same `{metric}` at each level: the seeds are copies of one "
            "run, so each figure is one measurement and no test is possible."
        )
    notes = (measured_note(n.text, study, table) for n in study.notes if n.about(dataset))
    return out + [n for n in notes if n]


def headline_metric(cols: list[str]) -> str:
    """The test NDCG@10 column (a model's prefixed key such as ``mostpop/test/ndcg@10``)."""
    return next((c for c in cols if c.endswith(HEADLINE[0])), HEADLINE[0])


def note_lines(
    study: Study, cols: list[str], table: dict[str, dict[str, Cell]], dataset: str
) -> list[str]:
    notes = study_notes(study, table, headline_metric(cols), dataset)
    if not notes:
        return []
    return ["", "What this study cannot answer:", "", *(f"- {n}" for n in notes)]
