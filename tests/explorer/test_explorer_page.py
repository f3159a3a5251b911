"""The explorer page: self-contained, holds the maps the model computes, sized as planned."""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from attnconv.analysis import attention_layers, load_test_images, record_attention
from attnconv.analysis.explorer import (
    build_explorer,
    collect_explorer_data,
    estimate_page,
    explorer_html,
    positional_logits,
)
from attnconv.cli import main
from attnconv.models import create_model
from attnconv.train.model_io import load_model

DATA_BLOCK = re.compile(r'<script id="attnconv-data" type="application/json">(.*?)</script>',
                        re.S)


def page_data(path: Path) -> dict:
    """The JSON embedded in a page."""
    match = DATA_BLOCK.search(path.read_text("utf-8"))
    assert match is not None
    return json.loads(match.group(1))


def decode_view(view: dict, slot: int, heads: int) -> np.ndarray:
    """A stored view of one image (or the shared map), as the page decodes it: (heads, N, N)."""
    keys, k = view["keys"], view["k"]
    values = np.frombuffer(base64.b64decode(view["values"][slot]), np.uint8)
    scales = np.frombuffer(base64.b64decode(view["scales"][slot]), "<f4").astype(np.float64)
    probs = values.reshape(heads * keys, k) / 255.0 * scales[:, None]
    if view["format"] == "dense":
        return probs.reshape(heads, keys, keys)
    dtype = np.uint8 if view["index_bytes"] == 1 else np.dtype("<u2")
    index = np.frombuffer(base64.b64decode(view["indices"][slot]), dtype).reshape(-1, k)
    out = np.zeros((heads * keys, keys))
    np.put_along_axis(out, index.astype(np.int64), probs, axis=-1)
    return out.reshape(heads, keys, keys)


def assert_close(shown: np.ndarray, expected: torch.Tensor) -> None:
    """Within half a uint8 step of each query row's maximum."""
    exp = expected.double().numpy()
    bound = exp.max(axis=-1, keepdims=True) / 510 + 1e-7
    assert np.all(np.abs(shown - exp) <= bound), float(np.abs(shown - exp).max())


def test_content_page_holds_the_recorded_maps(content_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "explorer.html"
    page = build_explorer(content_run, out, images=5)
    text = out.read_text("utf-8")
    assert page.path == out and page.bytes == len(text.encode("utf-8")) and page.images == 5
    # Self-contained: no external resource of any kind.
    assert not re.search(r"https?://|<link|\bsrc=|@import|fetch\(|XMLHttpRequest", text)
    data = page_data(out)
    model, meta = load_model(content_run)
    images, raw = load_test_images(meta, 5)
    maps = record_attention(model, images)  # (5, heads, 7, 7, 7, 7) per layer
    assert data["images"]["count"] == 5 and data["images"]["channels"] == 1
    pixels = np.frombuffer(base64.b64decode(data["images"]["pixels"]), np.uint8)
    assert np.array_equal(pixels.reshape(5, 28, 28), raw[:, 0].numpy())
    with torch.no_grad():
        assert data["images"]["predicted"] == model(images).argmax(-1).tolist()
    results = json.loads((content_run / "results.json").read_text())
    assert data["info"]["test_accuracy"] == results["test_accuracy"]
    assert data["info"]["token_stride"] == 4 and data["classes"][0] == "T-shirt/top"
    for layer, recorded in zip(data["layers"], maps, strict=True):
        assert layer["grid"] == [7, 7] and layer["content"] and layer["positional"] == "per-image"
        full, pos = layer["views"]["full"], layer["views"]["positional"]
        assert not full["shared"] and len(full["values"]) == 5 and full["format"] == "dense"
        assert not pos["shared"] and len(pos["values"]) == 5
        for i in (0, 4):
            assert_close(decode_view(full, i, 4), recorded[i].reshape(4, 49, 49))
    assert page.bytes <= estimate_page(model, 5, (1, 28, 28)).estimated_bytes < page.bytes + 12_000


def test_positional_only_maps_are_stored_once(quadratic_run: Path, tmp_path: Path) -> None:
    page = build_explorer(quadratic_run, tmp_path / "q.html", images=4)
    data = page_data(page.path)
    model, meta = load_model(quadratic_run)
    images, _ = load_test_images(meta, 1)
    maps = record_attention(model, images)
    for layer, recorded in zip(data["layers"], maps, strict=True):
        assert layer["views"]["full"] is None and not layer["content"]
        view = layer["views"]["positional"]
        assert view["shared"] and len(view["values"]) == 1  # one map for all 4 images
        assert_close(decode_view(view, 0, 4), recorded[0].reshape(4, 196, 196))
    assert page.plan.k is None and "every key" in page.storage


def test_positional_term_is_the_logits_without_content(content_run: Path) -> None:
    model, meta = load_model(content_run)
    images, _ = load_test_images(meta, 3)
    layer = attention_layers(model)[1][1]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(images)
        handle.remove()
        x = seen[0]  # (3, 7, 7, 16): the layer's actual input
        q, k = layer.queries_keys(x)
        content = torch.einsum("bnijd,bnkld->bnijkl", q, k) / math.sqrt(layer.qk_dim)
        torch.testing.assert_close(positional_logits(layer, x), layer.logits(x) - content,
                                   rtol=1e-5, atol=1e-5)


def test_size_limit_keeps_the_most_attended_keys(content_run: Path, tmp_path: Path) -> None:
    model, meta = load_model(content_run)
    images, raw = load_test_images(meta, 4)
    labels = [0, 1, 2, 3]
    dense = estimate_page(model, 4, (1, 28, 28), max_mb=None).estimated_bytes
    data = collect_explorer_data(model, images, raw, labels, [str(i) for i in range(10)],
                                 max_bytes=dense // 2)
    assert data.plan.k is not None and 1 <= data.plan.k < 49
    assert "most attended" in data.storage and "kept keys hold" in data.storage
    out = tmp_path / "small.html"
    out.write_text(explorer_html(data), "utf-8")
    assert out.stat().st_size <= dense // 2
    full = page_data(out)["layers"][0]["views"]["full"]
    assert full["format"] == "topk" and 0 < full["mass_kept"] <= 1
    recorded = record_attention(model, images)[0][2].reshape(4, 49, 49)
    shown = decode_view(full, 2, 4)
    top = recorded.topk(data.plan.k, dim=-1)
    assert_close(shown, torch.zeros_like(recorded).scatter(-1, top.indices, top.values))


def test_explore_command(content_run: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "page.html"
    assert main(["explore", str(content_run / "checkpoints" / "best.safetensors"),
                 "--images", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "3 test images, 2 attention layers" in printed
    assert page_data(out)["images"]["count"] == 3
    assert main(["explore", str(content_run), "--images", "0"]) == 1
    assert "--images must be >= 1" in capsys.readouterr().err


def test_model_without_attention_is_refused() -> None:
    model = create_model("resnet18", num_classes=10, in_chans=1, image_size=28, base_width=4)
    images = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="no SelfAttention2d"):
        collect_explorer_data(model, images, torch.zeros(2, 1, 28, 28, dtype=torch.uint8),
                              [0, 1], ["a", "b"])


HOSTILE_CLASSES = ["</script><script>window.__pwned=1</script>", '"><img src=x onerror=alert(1)>',
                   "<!-- x", "__ATTNCONV_EXPLORER_TITLE__", "javascript:alert(1)", "é ü \u2028"]


def test_names_stay_data(quadratic_run: Path) -> None:
    """Class and run names with markup reach the page as JSON text and come back unchanged."""
    model, meta = load_model(quadratic_run)
    images, raw = load_test_images(meta, 2)
    info = {"run": HOSTILE_CLASSES[0], "model": HOSTILE_CLASSES[1]}
    data = collect_explorer_data(model, images, raw, [0, 5], HOSTILE_CLASSES, info=info)
    page = explorer_html(data, title=HOSTILE_CLASSES[1] + " __ATTNCONV_EXPLORER_DATA__")
    match = DATA_BLOCK.search(page)
    assert match is not None
    block = match.group(1)
    assert "<" not in block  # nothing in the data can end its <script> element
    parsed = json.loads(block)
    assert parsed["classes"] == HOSTILE_CLASSES
    assert parsed["info"]["run"] == info["run"] and parsed["info"]["model"] == info["model"]
    assert len(re.findall(r"<script\b", page)) == 2  # the data and the page's own code
    head = page[:page.index("<script")]
    assert "<img" not in head and "&quot;&gt;&lt;img src=x" in head  # the title, escaped
    assert "__ATTNCONV_EXPLORER_DATA__" in head  # the title's text, not the data put there
