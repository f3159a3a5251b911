"""The report's HTML and Markdown are two templates over one view: they show the same things."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

from attnconv.analysis.report import TEMPLATES, RunSection, RunSummary, _html, _markdown
from attnconv.analysis.sections import RunTable


class Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _section(root: Path, name: str, accuracy: float) -> RunSection:
    summary = RunSummary(path=root / name, name=name, model="sa-learned", label="learned",
                         dataset="embedded", image_shape=(1, 28, 28), params=4321, macs=10**7,
                         attention_macs=10**6, paper_flops=3 * 10**6, attention_layers=2,
                         test_accuracy=accuracy)
    figure = root / f"{name}-fig.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    table = RunTable(title=f"{name} coverage", note="per layer", header={"k": "key", "v": "val"},
                     rows=[{"k": f"{name}-cell", "v": "0.25"}])
    return RunSection(summary, figures=[figure], slug=name, tables=[table])


def test_html_and_markdown_show_the_same_runs_tables_and_figures(tmp_path: Path) -> None:
    sections = [_section(tmp_path, "alpha", 0.61), _section(tmp_path, "beta", 0.72)]
    md = _markdown("two runs", sections, None, tmp_path)
    parser = Text()
    parser.feed(_html("two runs", sections, None, tmp_path, tmp_path / "r.md"))
    text = "".join(parser.text)
    for shown in ("2 runs", "alpha", "beta", "alpha-cell", "beta coverage", "0.6100", "0.7200",
                  "4,321", "sa-learned", "alpha-fig.png", "beta-fig.png"):
        assert shown in text, shown
        assert shown.replace("-fig", "") in md.replace("-fig", "").replace("\\", ""), shown
    # Same order of runs in both.
    assert text.index("alpha-cell") < text.index("beta-cell")
    assert md.index("alpha-cell") < md.index("beta-cell")
    assert len(re.findall(r"^## ", md, re.M)) == 3  # comparison + one per run


def test_the_templates_ship_with_the_package() -> None:
    assert {p.name for p in TEMPLATES.glob("*.j2")} == {"report.html.j2", "report.md.j2"}
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text("utf-8")
    assert '"analysis/templates/*.j2"' in pyproject
