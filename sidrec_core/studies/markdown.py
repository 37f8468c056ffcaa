"""The one markdown table writer of the reports and the index."""

from __future__ import annotations

from collections.abc import Iterable


def row(cells: Iterable[object]) -> str:
    """``| a | b |`` (an empty cell is ``|  |``)."""
    return "|" + "".join(f" {c} |" for c in cells)


def table(header: Iterable[str], rows: Iterable[Iterable[object]] = ()) -> list[str]:
    """The header line, its rule, one line per row."""
    header = list(header)
    return [row(header), "|" + "---|" * len(header), *map(row, rows)]
