"""attnconv report: the runs' real numbers in the table, figures embedded, links that work."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import yaml

from attnconv.analysis.explorer import build_explorer
from attnconv.analysis.report import write_report
from attnconv.cli import main
from attnconv.errors import ConfigError
from attnconv.flops import format_count, model_cost

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EMBEDDED = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
MD_LINK = re.compile(r"\]\(([^)]+)\)")


def results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def model_args(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["model_args"]


def table_rows(text: str) -> dict[str, str]:
    """Markdown comparison rows by run name."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return {line.split("|")[1].strip(): line for line in rows}


def test_report_of_two_runs(report_runs: dict[str, Path], tmp_path: Path) -> None:
    sa, cnn = report_runs["sa"], report_runs["cnn"]
    out = tmp_path / "out" / "report.html"
    report = write_report([sa, cnn], out, images=4, explorer=True, explorer_images=3)
    assert report.html == out and report.markdown == out.with_suffix(".md")
    page, md = out.read_text("utf-8"), report.markdown.read_text("utf-8")

    # The comparison holds each run's own numbers: results.json and the MAC count at 1x28x28.
    rows = table_rows(md)
    for run, model in ((sa, "sa-quadratic"), (cnn, "resnet18")):
        res = results(run)
        cost = model_cost(model, num_classes=10, in_chans=1, image_size=28, **model_args(run))
        assert cost.params == res["params"]
        row = rows[res["name"]]
        for cell in (f"{res['test_accuracy']:.4f}", f"{res['params']:,}", format_count(cost.macs),
                     format_count(cost.paper_convention_flops), "embedded, 1x28x28",
                     f"{res['best_val_accuracy']:.4f} ({res['best_epoch']})"):
            assert cell in row, (cell, row)
            assert cell in page
    assert "0.938" in rows["quadratic"]  # the paper's Table 1 accuracy beside ours

    # Figures: embedded as base64 PNG in the HTML, linked as files from the Markdown.
    embedded = EMBEDDED.findall(page)
    assert len(embedded) >= 5  # curves, heads (all + 2 layers), trajectories, positional...
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in embedded)
    assert not re.search(r'src="(?!data:)', page)  # nothing loaded from elsewhere
    links = MD_LINK.findall(md)
    assert "./report-figures/training_curves.png" in links
    assert "./report-figures/quadratic/gaussian_heads_all.png" in links
    for link in links:
        assert (out.parent / link).is_file(), link

    # Locality table of the SA run, explorer page written and linked (relative links).
    assert "Locality per layer" in page and "mean distance (tokens)" in md
    assert report.explorers == {"quadratic": out.parent / "explorer-quadratic.html"}
    assert (out.parent / "explorer-quadratic.html").stat().st_size > 10_000
    assert 'href="./explorer-quadratic.html"' in page and "](./explorer-quadratic.html)" in md
    assert 'href="./report.md"' in page


def test_report_command(report_runs: dict[str, Path], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    sa = report_runs["sa"]
    build_explorer(sa, sa / "explorer.html", images=2)  # an explorer made earlier is linked
    out = tmp_path / "cli" / "summary.html"
    assert main(["report", str(sa), "--out", str(out), "--images", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"report: {out}"
    assert (tmp_path / "cli" / "summary.md").is_file()
    assert (tmp_path / "cli" / "summary-figures" / "quadratic").is_dir()
    link = Path(re.findall(r'href="([^"]*explorer\.html)"', out.read_text())[0])
    assert (out.parent / link).resolve() == (sa / "explorer.html").resolve()
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 1
    assert "is not a run directory" in capsys.readouterr().err


def test_unfinished_run_and_bad_name(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match=r"has no results\.json"):
        write_report([tmp_path / "run"], tmp_path / "r.html")
    with pytest.raises(ValueError, match="HTML file"):
        write_report([tmp_path / "run"], tmp_path / "r.md")
