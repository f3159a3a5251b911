"""The report's extra tables: grid coverage at init and end, Theorem 1 on a trained CNN."""

from __future__ import annotations

import shutil
from pathlib import Path

from attnconv.analysis.converted import ROW_LABEL, check_run, write_check
from attnconv.analysis.metrics import coverage_over_training
from attnconv.analysis.report import write_report
from attnconv.analysis.sections import run_tables


def test_tables_of_a_quadratic_run(quadratic_run: Path) -> None:
    (table,) = run_tables(quadratic_run)  # no theorem1.json: coverage only
    expected = coverage_over_training(quadratic_run)
    assert [r["layer"] for r in table.rows] == ["0", "1"] and len(expected) == 2
    for row, cov in zip(table.rows, expected, strict=True):
        assert row["covered_init"] == f"{cov['init']['neighbours_covered']}/8"
        assert row["distinct_end"] == str(cov["end"]["distinct_centres"])
    assert set(table.rows[0]) == set(table.header)


def test_report_shows_theorem1_and_coverage(quadratic_run: Path, cnn_run: Path,
                                            tmp_path: Path) -> None:
    cnn = tmp_path / "cnn"
    shutil.copytree(cnn_run, cnn)
    check = check_run(cnn, images=8)
    write_check(cnn, check)
    assert run_tables(cnn)[0].rows[1]["identical"] == "yes (8/8)"
    report = write_report([quadratic_run, cnn], tmp_path / "report.html", images=2)
    page, markdown = report.html.read_text(), report.markdown.read_text()
    for text in (page, markdown):
        assert "Grid coverage of the Gaussian heads" in text
        assert "Theorem 1: the trained CNN as self-attention" in text
        assert f"{check.test_accuracy:.4f}" in text
    assert "cnn -&gt; attention (Theorem 1)" in page and ROW_LABEL in page.replace("&gt;", ">")
