"""What a study cannot answer, said where its numbers are read: the study's declared
:attr:`~sidrec_core.studies.study.Study.notes`, their figures filled from the section's storage,
and the caveats the numbers show by themselves (seeds that are copies of one run).

A note figure ``{level:metric}`` is the level's mean over seeds (the median for a cost figure,
as the report's tables give them); ``{*:metric}`` is the range of the levels' values; ``:%``
after the metric prints a percentage. A figure with no value yet reads ``n/a``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

from sidrec_core.metrics import HEADLINE
from sidrec_core.studies.study import NOTE_FIGURE, Study

if TYPE_CHECKING:
    from sidrec_core.studies.report import Cell


def level_value(cell: Cell | None, metric: str) -> float | None:
    """A level's figure for a note: the mean over seeds, the median for a cost figure."""
    from sidrec_core.studies.report import is_cost  # report imports this module

    if cell is None or not cell.values:
        return None
    if is_cost(metric):
        return float(np.median(list(cell.values.values())))
    return float(cell.mean)


def _text(value: float | None, metric: str, percent: bool) -> str:
    from sidrec_core.studies.report import is_cost

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


def seeds_are_copies(cells: list[Cell]) -> bool:
    """Whether every level measured gives the same value at each of its >= 2 seeds: a
    deterministic method whose seeds repeat one run (its CI is 0 and no test is possible)."""
    measured = [c for c in cells if c.values]
    return bool(measured) and all(
        len(c.values) >= 2 and len(set(c.values.values())) == 1 for c in measured
    )


def study_notes(study: Study, table: dict[str, dict[str, Cell]], metric: str) -> list[str]:
    """The caveats of one real-data section: seeds that are copies (on ``metric``), then the
    study's declared notes with their figures filled in."""
    out = []
    if seeds_are_copies([table[lv][metric] for lv in study.labels if metric in table[lv]]):
        out.append(
            f"Every seed gives the same `{metric}` at each level: the seeds are copies of one "
            "run, so each figure is one measurement and no test is possible."
        )
    return out + [fill_note(n, study, table) for n in study.notes]


def headline_metric(cols: list[str]) -> str:
    """The section's test NDCG@10 column (a model's prefixed key such as
    ``mostpop/test/ndcg@10`` where the study reports one)."""
    return next((c for c in cols if c.endswith(HEADLINE[0])), HEADLINE[0])


def note_lines(study: Study, cols: list[str], table: dict[str, dict[str, Cell]]) -> list[str]:
    """The report's "what this study cannot answer" paragraph for one real-data section."""
    notes = study_notes(study, table, headline_metric(cols))
    if not notes:
        return []
    return ["", "What this study cannot answer:", "", *(f"- {n}" for n in notes)]
