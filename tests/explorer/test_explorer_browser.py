"""The explorer page in a real headless browser (Debian's chromium driven by selenium).

The page is loaded from file://, clicked and typed into like a person would; the heat map it
displays is compared with the maps the Python side computes (record_attention, and the softmax
of the positional term alone). Screenshots go to test-artifacts/ (gitignored).

The browser (the ``browser`` fixture of conftest.py) comes from scripts/install-test-browser.sh
(run by `make test`). Without it the tests skip locally and fail under CI=true.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attnconv.analysis import (
    attention_layers,
    load_test_images,
    positional_attention,
    record_attention,
)
from attnconv.analysis.explorer import (
    build_explorer,
    collect_explorer_data,
    estimate_page,
    explorer_html,
)
from attnconv.layers.attention import softmax_attention
from attnconv.train.model_io import load_model

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMAGES = 4


def open_page(driver: Any, path: Path) -> None:
    driver.get(path.resolve().as_uri())
    ready = driver.execute_script("return !!window.attnconvExplorer")
    errors = driver.execute_script("return window.__errors || []")
    assert ready, f"the page did not start (errors: {errors})"


def state(driver: Any) -> dict[str, Any]:
    return driver.execute_script("return window.attnconvExplorer.state()")


def heatmap(driver: Any, head: int | None = None) -> torch.Tensor:
    values = driver.execute_script("return window.attnconvExplorer.heatmap(arguments[0])", head)
    return torch.tensor(values, dtype=torch.float64)


def keys(driver: Any, *sequence: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def click_cell(driver: Any, row: int, col: int, *, element_id: str = "main") -> None:
    """Click the centre of token (row, col) of a canvas."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, element_id)
    gh, gw = state(driver)["grid"]
    width, height = canvas.size["width"], canvas.size["height"]
    x = (col + 0.5) * width / gw - width / 2  # offsets from the element's centre
    y = (row + 0.5) * height / gh - height / 2
    ActionChains(driver).move_to_element_with_offset(canvas, round(x), round(y)).click().perform()


def assert_shown(shown: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within the page's quantisation: half a uint8 step of the map's maximum."""
    expected = expected.double().flatten()
    bound = float(expected.max()) / 510 + 1e-6
    assert shown.shape == expected.shape
    assert float((shown - expected).abs().max()) <= bound, (shown, expected)


def screenshot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    return path


def test_content_model_in_the_browser(browser: Any, content_run: Path, tmp_path: Path,
                                      layer_inputs: Callable) -> None:
    page = build_explorer(content_run, tmp_path / "explorer.html", images=IMAGES)
    model, meta = load_model(content_run)
    images, _ = load_test_images(meta, IMAGES)
    full = record_attention(model, images)  # per layer (N, heads, 7, 7, 7, 7)
    inputs = layer_inputs(model, images)
    open_page(browser, page.path)
    s = state(browser)
    assert (s["image"], s["layer"], s["head"], s["view"]) == (0, 0, 0, "full")
    assert s["grid"] == [7, 7] and s["query"] == [3, 3] and not s["pinned"]

    # Keyboard: next layer, two images on, next head.
    keys(browser, "l", "i", "i", "h")
    s = state(browser)
    assert (s["layer"], s["image"], s["head"]) == (1, 2, 1)

    # Mouse: click a pixel; the displayed map is the recorded one for that query.
    click_cell(browser, 2, 5)
    s = state(browser)
    assert s["query"] == [2, 5] and s["pinned"]
    assert_shown(heatmap(browser), full[1][2, 1, 2, 5])

    # Arrow keys move the query pixel.
    from selenium.webdriver.common.keys import Keys

    keys(browser, Keys.ARROW_RIGHT, Keys.ARROW_DOWN)
    assert state(browser)["query"] == [3, 6]
    assert_shown(heatmap(browser), full[1][2, 1, 3, 6])
    keys(browser, Keys.ARROW_RIGHT)  # at the border: stays
    assert state(browser)["query"] == [3, 6]

    # Positional term only: softmax of the query-dependent positional logits alone.
    layer = attention_layers(model)[1][1]
    with torch.no_grad():
        q, _ = layer.queries_keys(inputs[1])
        logits = layer.encoding.logits(7, 7, query=q) / math.sqrt(layer.qk_dim)
    positional = softmax_attention(logits)  # (N, heads, 7, 7, 7, 7)
    keys(browser, "v")
    assert state(browser)["view"] == "positional"
    assert_shown(heatmap(browser), positional[2, 1, 3, 6])
    assert not torch.allclose(positional[2, 1, 3, 6], full[1][2, 1, 3, 6], atol=1e-3)

    # All heads as a grid: every head's map, and a click on a panel picks head and query.
    keys(browser, "a")
    assert state(browser)["allHeads"]
    for head in range(4):
        assert_shown(heatmap(browser, head), positional[2, head, 3, 6])
    browser.execute_script("document.querySelectorAll('#grid canvas')[3].id = 'panel3'")
    click_cell(browser, 0, 1, element_id="panel3")
    s = state(browser)
    assert (s["head"], s["query"]) == (3, [0, 1])
    screenshot(browser, "explorer-content-grid.png")

    # Back to one head, full attention, image 0 (I goes back, wrapping around).
    keys(browser, "a", "v", "I", "I")
    s = state(browser)
    assert (s["allHeads"], s["view"], s["image"]) == (False, "full", 0)
    assert_shown(heatmap(browser), full[1][0, 3, 0, 1])
    screenshot(browser, "explorer-content.png")


def test_positional_model_in_the_browser(browser: Any, quadratic_run: Path,
                                         tmp_path: Path) -> None:
    page = build_explorer(quadratic_run, tmp_path / "explorer.html", images=IMAGES)
    model, _ = load_model(quadratic_run)
    layers = [layer for _, layer in attention_layers(model)]
    expected = [positional_attention(layer, (14, 14)) for layer in layers]  # (heads, 14, ...)
    open_page(browser, page.path)
    s = state(browser)
    assert s["view"] == "positional" and s["grid"] == [14, 14] and s["query"] == [7, 7]
    # Only one view exists: the "full" radio is disabled, v changes nothing shown.
    assert browser.execute_script(
        "return document.querySelector('input[value=full]').disabled")
    keys(browser, "v")
    assert state(browser)["view"] == "positional"
    assert_shown(heatmap(browser), expected[0][0, 7, 7])

    # Hover (no click) moves the query while it is not pinned.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "main")
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(
        canvas, round(-size["width"] / 2 + 2.5 * size["width"] / 14),
        round(-size["height"] / 2 + 11.5 * size["height"] / 14)).perform()
    s = state(browser)
    assert s["query"] == [11, 2] and not s["pinned"]
    assert_shown(heatmap(browser), expected[0][0, 11, 2])

    # The same map for every image; other layer and head by keyboard.
    keys(browser, "i", "l", "H")
    s = state(browser)
    assert (s["image"], s["layer"], s["head"]) == (1, 1, 3)
    assert_shown(heatmap(browser), expected[1][3, 11, 2])
    click_cell(browser, 4, 9)
    assert_shown(heatmap(browser), expected[1][3, 4, 9])
    screenshot(browser, "explorer-quadratic.png")


def test_top_k_page_in_the_browser(browser: Any, content_run: Path, tmp_path: Path) -> None:
    model, meta = load_model(content_run)
    images, raw = load_test_images(meta, 2)
    dense = estimate_page(model, 2, (1, 28, 28), max_mb=None).estimated_bytes
    data = collect_explorer_data(model, images, raw, [0, 1], meta["classes"],
                                 max_bytes=dense // 2)
    k = data.plan.k
    assert k is not None and k < 49
    path = tmp_path / "topk.html"
    path.write_text(explorer_html(data), "utf-8")
    open_page(browser, path)
    browser.execute_script("window.attnconvExplorer.set({image: 1, head: 2, query: [4, 1]})")
    recorded = record_attention(model, images)[0][1, 2, 4, 1].flatten()  # (49,)
    top = recorded.topk(k)
    kept = torch.zeros_like(recorded).scatter(0, top.indices, top.values)
    shown = heatmap(browser)
    assert_shown(shown, kept)
    assert int((shown > 0).sum()) <= k
    assert "most attended" in browser.find_element("id", "storage").text
