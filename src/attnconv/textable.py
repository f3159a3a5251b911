"""Text tables for the terminal and for Markdown files: one renderer for every command.

* :func:`markdown_table` -- a GitHub Markdown table (header, alignment row, one line per row)
  from cells that are already text; the caller formats and, where cells hold user text,
  escapes them (:func:`attnconv.analysis.report.md_text`).
* :func:`plain_table` -- an aligned plain-text table of dict rows, values formatted compactly by
  :func:`format_cell` (floats to 3 significant digits, tuples without spaces).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

__all__ = ["Align", "format_cell", "markdown_table", "plain_table"]

Align = Literal["left", "right"]
_RULE = {"left": "---", "right": "---:"}


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]],
                   align: Sequence[Align]) -> list[str]:
    """The lines of a Markdown table: ``| a | b |``, ``|---|---:|`` and one line per row.

    Raises:
        ValueError: ``align`` or a row does not have one entry per header cell, or an
            alignment is neither ``"left"`` nor ``"right"``.
    """
    if len(align) != len(header):
        raise ValueError(f"{len(align)} alignments for {len(header)} columns; give one per "
                         "column")
    unknown = sorted({a for a in align if a not in _RULE})
    if unknown:
        raise ValueError(f"unknown alignment {unknown}; use 'left' or 'right'")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(_RULE[a] for a in align) + "|"]
    for i, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def format_cell(value: Any) -> str:
    """Compact text for one table cell (short floats, tuples without spaces)."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, tuple):
        return "(" + ",".join(format_cell(v) for v in value) + ")"
    return str(value)


def plain_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table with one line per row and aligned columns (``(empty)`` for no rows).

    ``columns`` defaults to the keys of the first row; a row lacking a column shows it empty.
    """
    if not rows:
        return "(empty)"
    columns = list(columns or rows[0].keys())
    cells = [[format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)
