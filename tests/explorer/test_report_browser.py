"""A report of runs with hostile names, opened in the headless browser: no script runs.

Copies of the session's tiny sa-quadratic run sit in directories named ``javascript:alert(1)``,
``"><img src=x onerror=alert(1)>`` and a name with spaces and quotes (one run also calls itself
``</script><script>...`` in results.json); each holds an explorer page whose class and run names
carry markup too. The report and every explorer page it links are opened; every link is
followed: ``alert`` is trapped (conftest.DIALOG_TRAP), a sentinel global stays unset, and every
link lands on a file that exists.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pytest

from attnconv.analysis import load_test_images
from attnconv.analysis.explorer import collect_explorer_data, explorer_html
from attnconv.analysis.report import write_report
from attnconv.train.model_io import load_model

DIRECTORIES = ["javascript:alert(1)", '"><img src=x onerror=alert(1)>',
               "run with spaces \"double\" 'single' (1)"]
RUN_NAMES = {DIRECTORIES[2]: "</script><script>window.__pwned = 1</script>"}
CLASSES = ["<img src=x onerror=\"window.__pwned = 2\">", "</script><script>alert(3)</script>",
           *[f"class {i}" for i in range(2, 10)]]


def file_of(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(url2pathname(parsed.path))


def assert_clean(driver: Any) -> None:
    """No dialog was asked for and no injected code set the sentinel."""
    assert driver.execute_script("return window.__dialogs") == []
    assert driver.execute_script("return window.__pwned") is None


@pytest.fixture(scope="module")
def hostile_report(quadratic_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    model, meta = load_model(quadratic_run)
    images, raw = load_test_images(meta, 2)
    data = collect_explorer_data(model, images, raw, [0, 1], CLASSES,
                                 info={"run": RUN_NAMES[DIRECTORIES[2]]})
    explorer = explorer_html(data, title=DIRECTORIES[1])
    runs = []
    for name in DIRECTORIES:
        run = shutil.copytree(quadratic_run, root / name,
                              ignore=shutil.ignore_patterns("explorer.html"))
        results = json.loads((run / "results.json").read_text("utf-8"))
        results["name"] = RUN_NAMES.get(name, name)
        (run / "results.json").write_text(json.dumps(results), "utf-8")
        (run / "explorer.html").write_text(explorer, "utf-8")  # linked from the run directory
        runs.append(run)
    # Beside the report: the links are the bare directory names, "javascript:alert(1)/..."
    return write_report(runs, root / "report.html", images=1).html


def test_markdown_links_resolve(hostile_report: Path) -> None:
    md = hostile_report.with_suffix(".md").read_text("utf-8")
    targets = re.findall(r"(?<!\\)\]\((\./[A-Za-z0-9%._~/-]+)\)", md)
    assert sum("explorer.html" in t for t in targets) == len(DIRECTORIES)
    for target in targets:
        assert (hostile_report.parent / unquote(target)).is_file(), target


def test_hostile_names_run_no_script(browser: Any, hostile_report: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(hostile_report.resolve().as_uri())
    assert_clean(browser)
    text = browser.find_element(By.TAG_NAME, "body").text
    for name in (*DIRECTORIES[:2], RUN_NAMES[DIRECTORIES[2]]):
        assert name in text  # the names are shown, as text
    links = browser.execute_script(
        "return [...document.querySelectorAll('a')].map(a => [a.getAttribute('href'), a.href])")
    assert len(links) == 1 + 2 * len(DIRECTORIES)  # markdown; explorer list and each section
    for raw, url in links:
        assert raw.startswith("./"), raw
        assert file_of(url).is_file(), url
    explorers = {file_of(url) for _, url in links if url.endswith("/explorer.html")}
    assert explorers == {(hostile_report.parent / d / "explorer.html").resolve()
                         for d in DIRECTORIES}

    for index in range(len(links)):  # follow every explorer link by clicking it
        browser.get(hostile_report.resolve().as_uri())
        link = browser.find_elements(By.TAG_NAME, "a")[index]
        if not link.get_attribute("href").endswith("/explorer.html"):
            continue
        link.click()
        assert file_of(browser.current_url) in explorers
        assert browser.execute_script("return !!window.attnconvExplorer")
        assert_clean(browser)
        info = browser.find_element(By.ID, "imageinfo").text
        assert CLASSES[0] in info  # true class of image 0, shown as text
        assert RUN_NAMES[DIRECTORIES[2]] in browser.find_element(By.ID, "facts").text
        assert browser.title == DIRECTORIES[1]
    assert_clean(browser)
