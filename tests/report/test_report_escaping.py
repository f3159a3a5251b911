"""Names from the file system or results.json cannot inject markup into the report.

Run names, run directories, explorer file names and captions come from users: in the HTML they
are escaped text and ``./``-prefixed percent-encoded links; in the Markdown they are
backslash-escaped text, code spans and the same links. The pages are rendered from synthetic
run summaries (no training), then parsed.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

from attnconv.analysis.report import (
    RunSection,
    RunSummary,
    _html,
    _markdown,
    md_code,
    md_text,
    relative_link,
)

HOSTILE = ["javascript:alert(1)", '"><img src=x onerror=alert(1)>',
           "run \"double\" 'single' & spaces", "[x](javascript:alert(1)) `code` <b>|</b>",
           "</script><script>window.__pwned=1</script>", "line\n<script>alert(2)</script>",
           "see www.example.com or a@b.org", "data:text/html,<script>alert(3)</script>"]
SAFE_LINK = re.compile(r"\./[A-Za-z0-9%._~/-]*")


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def summary(path: Path, name: str) -> RunSummary:
    return RunSummary(path=path, name=name, model="sa-quadratic", label="quadratic",
                      dataset=name, image_shape=(1, 28, 28), params=1234, macs=10**6,
                      attention_macs=10**5, paper_flops=2 * 10**6, attention_layers=2,
                      test_accuracy=0.5, best_val_accuracy=0.6, best_epoch=2)


@pytest.fixture
def pages(tmp_path: Path) -> tuple[Path, str, str, list[RunSection]]:
    """Report HTML and Markdown for runs whose directories and names are the hostile strings."""
    root = tmp_path / "out"
    root.mkdir()
    sections = []
    for i, name in enumerate(HOSTILE):
        folder = tmp_path / "runs" / name.replace("/", "%")  # a directory name cannot hold "/"
        folder.mkdir(parents=True)
        explorer = folder / f"explorer {name.replace('/', '%')}.html"
        explorer.write_text("explorer", "utf-8")
        figure = root / "report-figures" / f"f{i}" / f"{name.replace('/', '%')}.png"
        figure.parent.mkdir(parents=True)
        figure.write_bytes(b"\x89PNG\r\n\x1a\n")
        sections.append(RunSection(summary(folder, name), figures=[figure], explorer=explorer,
                                   slug=f"run-{i}"))
    md_file = root / 'report "x" <y>.md'
    md_file.write_text("markdown", "utf-8")
    page = _html(HOSTILE[1], sections, None, root, md_file)
    md = _markdown(HOSTILE[3], sections, None, root)
    return root, page, md, sections


def test_html_escapes_names_and_links_stay_relative(pages: tuple) -> None:
    root, page, _, sections = pages
    parser = Tags()
    parser.feed(page)
    names = {tag for tag, _ in parser.tags}
    assert "script" not in names and names <= {"html", "head", "meta", "title", "style", "body",
                                               "h1", "h2", "h3", "p", "a", "ul", "li", "code",
                                               "table", "thead", "tbody", "tr", "th", "td",
                                               "figure", "img", "figcaption", "details",
                                               "summary"}
    for tag, attrs in parser.tags:
        assert not any(key.startswith("on") for key in attrs), (tag, attrs)
        if tag == "img":
            assert (attrs["src"] or "").startswith("data:image/png;base64,")
    hrefs = [attrs["href"] or "" for tag, attrs in parser.tags if tag == "a"]
    assert len(hrefs) == 1 + 2 * len(sections)  # markdown, explorer list, each run's section
    for href in hrefs:
        assert SAFE_LINK.fullmatch(href), href
        assert (root / unquote(href)).is_file(), href
    text = "".join(parser.text)
    for name in HOSTILE:
        if "\n" not in name:
            assert name in text  # shown as the text it is
    assert 'report "x" <y>.md' in text
    ids = [attrs["id"] for _, attrs in parser.tags if "id" in attrs]
    assert ids == [f"run-run-{i}" for i in range(len(sections))]


def test_markdown_escapes_names_and_links_stay_relative(pages: tuple) -> None:
    root, _, md, sections = pages
    code = re.compile(r"(?<!`)(`+) .*? \1(?!`)")  # the code spans of md_code
    assert "<" not in code.sub("", md.replace("\\<", ""))  # "<" only escaped or in code
    targets = re.findall(r"(?<!\\)\]\(([^)]*)\)", code.sub("", md))  # an unescaped "]("
    assert len(targets) == 2 * len(sections)  # each run's explorer and figure
    for target in targets:
        assert SAFE_LINK.fullmatch(target), target
        assert (root / unquote(target)).is_file(), target
    for section in sections:
        name = section.summary.name
        assert f"## {md_text(name)}: sa-quadratic" in md
        assert f"Run directory: {md_code(str(section.summary.path))};" in md
        assert f"| {md_text(name)} | sa-quadratic (quadratic) |" in md
    # Every line of the file is a line of the document: no name brought its own newline.
    assert len(md.splitlines()) == len(_markdown("t", [], None, root).splitlines()) + sum(
        len(_markdown("t", [s], None, root).splitlines())
        - len(_markdown("t", [], None, root).splitlines()) for s in sections)


@pytest.mark.parametrize("text", HOSTILE)
def test_md_text_leaves_no_markup(text: str) -> None:
    escaped = md_text(text)
    assert "\n" not in escaped and "\r" not in escaped
    # Each special character is preceded by a backslash; dropping the escapes gives the text.
    assert re.sub(r"\\(.)", r"\1", escaped) == text.replace("\n", "\ufffd")
    assert not re.search(r"(?<!\\)[<>\[\]`|*_:@]", escaped)
    assert not re.search(r"(?i)www\.", escaped)


def test_md_code_fence_is_longer_than_its_backticks() -> None:
    for text in ("plain", "a`b", "a``b`", "```"):
        span = md_code(text)
        fence = re.match(r"`+", span).group(0)
        assert span == f"{fence} {text} {fence}"
        assert len(fence) > max((len(r) for r in re.findall(r"`+", text)), default=0)
    assert md_code("a\nb") == "` a\ufffdb `"


def test_relative_link(tmp_path: Path) -> None:
    target = tmp_path / "javascript:alert(1)" / "a b\"'<>().html"
    assert relative_link(target, tmp_path) == (
        "./javascript%3Aalert%281%29/a%20b%22%27%3C%3E%28%29.html")
    assert relative_link(target, tmp_path / "out") == (
        "./../javascript%3Aalert%281%29/a%20b%22%27%3C%3E%28%29.html")
    assert relative_link(tmp_path / "r.md", tmp_path) == "./r.md"
