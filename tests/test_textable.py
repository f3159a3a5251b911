"""attnconv.textable: the Markdown and plain-text table renderers the commands share."""

from __future__ import annotations

import pytest

from attnconv.textable import format_cell, markdown_table, plain_table


def test_markdown_table_aligns_each_column_as_asked() -> None:
    lines = markdown_table(["name", "n"], [["a", "1"], ["bb", "22"]], ["left", "right"])
    assert lines == ["| name | n |", "|---|---:|", "| a | 1 |", "| bb | 22 |"]
    assert markdown_table(["x"], [], ["right"]) == ["| x |", "|---:|"]


@pytest.mark.parametrize(("rows", "align", "message"), [
    ([["a", "1"]], ["left"], "1 alignments for 2 columns"),
    ([["a"]], ["left", "right"], "row 0 has 1 cells for 2 columns"),
    ([["a", "1"]], ["left", "centre"], "unknown alignment ['centre']"),
])
def test_markdown_table_refuses_ragged_input(rows: list[list[str]], align: list[str],
                                             message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        markdown_table(["name", "n"], rows, align)  # type: ignore[arg-type]


def test_plain_table_pads_columns_to_the_widest_cell() -> None:
    text = plain_table([{"a": 1.23456, "long name": (1, 2)}, {"a": "xyz"}])
    assert text.splitlines() == ["a     long name", "----  ---------", "1.23  (1,2)", "xyz"]
    assert plain_table([]) == "(empty)"
    assert plain_table([{"a": 1, "b": 2}], ["b"]) == "b\n-\n2"


def test_format_cell_is_compact() -> None:
    assert [format_cell(v) for v in (0.000123456, (0.5, -1), 7, "s")] == \
        ["0.000123", "(0.5,-1)", "7", "s"]
