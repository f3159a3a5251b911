"""Build the explorer page of a model: its attention on test images in one HTML file.

:func:`collect_explorer_data` runs the model on the images and keeps the input every
:class:`~attnconv.layers.SelfAttention2d` actually receives (:func:`attnconv.analysis.record.
record_inputs`); from it each layer's maps are computed with the layer's own methods:

* positional-only layer: ``positional_attention(layer, grid)``, stored once for all images;
* content layer, ``full`` view: ``layer.attention(x)``, the probabilities its forward uses;
* content layer, ``positional`` view: the softmax of the positional term of its logits alone
  (:func:`positional_logits`); per image when the encoding depends on the query (the paper's
  learned + content model), once otherwise; absent without a positional encoding.

:func:`explorer_html` puts the data into the template (``template.html``: inline CSS and
JavaScript, no network) and :func:`build_explorer` does it all for a checkpoint or run directory.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from attnconv.analysis.explorer.encode import (
    EncodedMaps,
    MapGroup,
    StoragePlan,
    b64,
    plan_storage,
    quantise,
    quantise_dense,
)
from attnconv.analysis.record import (
    attention_layers,
    display_layout,
    eval_mode,
    positional_attention,
    record_inputs,
    token_stride,
)
from attnconv.atomic import atomic_write_text
from attnconv.layers import SelfAttention2d
from attnconv.layers.attention import softmax_attention

TEMPLATE = "template.html"
DATA_MARK = "__ATTNCONV_EXPLORER_DATA__"
TITLE_MARK = "__ATTNCONV_EXPLORER_TITLE__"
DEFAULT_IMAGES = 20
DEFAULT_MAX_MB = 20.0
FORMAT_VERSION = 1


def template_text() -> str:
    """The page template shipped with the package (HTML with inline CSS and JavaScript)."""
    return resources.files("attnconv.analysis.explorer").joinpath(TEMPLATE).read_text("utf-8")


# --------------------------------------------------------------------------------------------
# Which maps each layer has
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerInfo:
    """What the explorer stores for one attention layer.

    Attributes:
        index: position among the model's attention layers (model order).
        name: module name in the model.
        heads: number of heads.
        grid: token grid ``(H, W)`` the layer attends over.
        encoding: positional encoding name (``quadratic``, ``learned``, ...).
        content: the layer has content attention (maps depend on the image).
        positional: ``"shared"`` (one positional map for all images), ``"per-image"`` (the
            positional term depends on the query, hence on the image) or None (no encoding).
    """

    index: int
    name: str
    heads: int
    grid: tuple[int, int]
    encoding: str
    content: bool
    positional: str | None

    def groups(self) -> list[MapGroup]:
        """The stored map groups: the full view of a content layer, then the positional one."""
        n = self.grid[0] * self.grid[1]
        out = []
        if self.content:
            out.append(MapGroup(self.heads, n, n, shared=False))
        if self.positional is not None:
            out.append(MapGroup(self.heads, n, n, shared=self.positional == "shared"))
        return out


def positional_kind(layer: SelfAttention2d) -> str | None:
    """``"shared"``, ``"per-image"`` or None: how the layer's positional view depends on images."""
    if layer.encoding is None:
        return None
    if layer.content and layer.encoding.query_dependent:
        return "per-image"
    return "shared"


def positional_logits(layer: SelfAttention2d, x: Tensor) -> Tensor:
    """The positional term of the layer's attention logits alone, ``(B', heads, H, W, H, W)``.

    The same term, in the same units, as inside :meth:`SelfAttention2d.logits`: a query-dependent
    learned encoding ``(q_row . r_row + q_col . r_col) / sqrt(qk_dim)`` (``B' = B``), any other
    encoding its fixed logits (``B' = 1``). Its softmax is the "positional-only" view of a
    content layer: where the head would look without the content term ``q . k``.

    Raises:
        ValueError: the layer has no positional encoding.
    """
    return layer.positional_logits(x)  # the layer's own (SelfAttention2d.positional_logits)


def describe_layers(model: nn.Module, probe: Tensor) -> list[LayerInfo]:
    """The :class:`LayerInfo` of every attention layer; ``probe`` (one image) sizes the grids."""
    named = attention_layers(model)
    if not named:
        raise ValueError(f"{type(model).__name__} holds no SelfAttention2d layer: there is no "
                         f"attention to explore")
    with torch.no_grad(), eval_mode(model):
        _, inputs = record_inputs(model, probe[:1].to(next(model.parameters()).device),
                                  "the explorer")
    return [LayerInfo(i, name, layer.heads, (int(x.shape[1]), int(x.shape[2])),
                      layer.encoding_name, layer.content, positional_kind(layer))
            for i, ((name, layer), x) in enumerate(zip(named, inputs, strict=True))]


# --------------------------------------------------------------------------------------------
# The page's data
# --------------------------------------------------------------------------------------------
def _rows(maps: Tensor) -> Tensor:
    """``(B, heads, H, W, H, W)`` -> ``(B, heads, H W, H W)`` query rows."""
    b, heads, h, w = maps.shape[:4]
    return maps.reshape(b, heads, h * w, h * w)


def _stored(encoded: list[EncodedMaps], shared: bool) -> dict[str, Any]:
    """One view of one layer as page data: one base64 string per image (or one if shared)."""
    first = encoded[0]
    out: dict[str, Any] = {
        "shared": shared, "format": first.format, "keys": first.keys,
        "k": first.values.shape[-1], "index_bytes": 0 if first.indices is None
        else first.indices.dtype.itemsize,
        "values": [b64(e.values) for e in encoded], "scales": [b64(e.scales) for e in encoded],
    }
    if first.indices is not None:
        out["indices"] = [b64(e.indices) for e in encoded if e.indices is not None]
        out["mass_kept"] = float(np.mean([e.mass_kept.mean() for e in encoded
                                          if e.mass_kept is not None]))
    return out


def display_images(raw: Tensor) -> np.ndarray:
    """uint8 ``(N, C, H, W)`` -> ``(N, H, W, 1 or 3)``; other channel counts show their mean."""
    if raw.dtype != torch.uint8:
        raise TypeError(f"display images must be uint8, got {raw.dtype}")
    x = display_layout(raw)  # (N, H, W, C); a channel mean is float64
    if x.dtype != torch.uint8:
        x = x.round().to(torch.uint8)
    return x.contiguous().numpy()


def colormap_lut(name: str = "inferno") -> np.ndarray:
    """256 RGB colours of a matplotlib colormap, ``uint8 (256, 3)``."""
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))  # (256, 4) in [0, 1]
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def _fixed_bytes(images: int, layers: Sequence[LayerInfo], classes: Sequence[str]) -> int:
    """Page bytes besides the arrays: the template and (an upper bound of) the metadata."""
    metadata = 2048 + 160 * images + 600 * len(layers) + 4 * len(json.dumps(list(classes)))
    return len(template_text().encode("utf-8")) + metadata


def estimate_page(model: nn.Module, images: int, image_shape: Sequence[int], *,
                  num_classes: int = 10, max_mb: float | None = DEFAULT_MAX_MB) -> StoragePlan:
    """The storage plan and page size for ``images`` images of shape ``(C, H, W)``.

    Nothing is recorded: one forward pass on a zero image (the ``meta`` device works) sizes
    the token grids. ``plan.estimated_bytes`` is the page size, ``plan.k`` the keys kept per
    query of the per-image maps (None: all).
    """
    channels, height, width = (int(v) for v in image_shape)
    device = next(model.parameters()).device
    layers = describe_layers(model, torch.zeros(1, channels, height, width, device=device))
    shown = (1 if channels not in (1, 3) else channels) * height * width
    return plan_storage([g for l in layers for g in l.groups()], images, shown,
                        max_bytes=None if max_mb is None else int(max_mb * 1e6),
                        fixed_bytes=_fixed_bytes(images, layers, [str(i) for i in
                                                                  range(num_classes)]))


@dataclass(frozen=True)
class ExplorerData:
    """Everything the page shows, as JSON-ready data (arrays base64-encoded)."""

    data: dict[str, Any]
    plan: StoragePlan
    layers: list[LayerInfo]

    @property
    def storage(self) -> str:
        """How the maps are stored, in words."""
        keys = max(l.grid[0] * l.grid[1] for l in self.layers)
        text = self.plan.describe(keys)
        mass = [v["mass_kept"] for layer in self.data["layers"]
                for v in layer["views"].values() if v is not None and "mass_kept" in v]
        if mass:
            text += (f"; on average the kept keys hold {min(mass):.1%} of a query's attention "
                     f"or more (lowest layer)")
        return text


def _check_explorer_inputs(images: Tensor, raw: Tensor, labels: Sequence[int],
                           batch_size: int) -> None:
    """Reject an empty or non-4-D batch, mismatched lengths and a batch size below 1."""
    n = len(images)
    if n < 1 or images.dim() != 4:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got "
                         f"{tuple(images.shape)}")
    if len(raw) != n or len(labels) != n:
        raise ValueError(f"got {n} images, {len(raw)} display images and {len(labels)} labels")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _record_maps(model: nn.Module, images: Tensor, layers: list[LayerInfo], modules: list[Any],
                 k: int, batch_size: int
                 ) -> tuple[list[list[EncodedMaps]], list[list[EncodedMaps]], Tensor]:
    """Run the model over ``images`` and encode every layer's maps, keeping ``k`` keys per row.

    Returns the ``full`` and ``positional`` encodings per layer (a shared positional map is one
    dense entry, computed once) and the logits ``(N, classes)`` on the CPU.
    """
    full: list[list[EncodedMaps]] = [[] for _ in layers]
    positional: list[list[EncodedMaps]] = [[] for _ in layers]
    outputs = []
    with torch.no_grad(), eval_mode(model):
        for layer, module in zip(layers, modules, strict=True):  # maps shared by every image
            if layer.positional != "shared":
                continue
            if module.positional_only:  # exactly what the layer computes (its fast path)
                probs = positional_attention(module, layer.grid)[None]  # (1, heads, H, W, H, W)
            else:  # content + a fixed positional term: the softmax of that term alone
                x = torch.zeros(1, *layer.grid, module.dim,
                                device=next(module.parameters()).device)
                probs = softmax_attention(positional_logits(module, x))
            positional[layer.index].append(quantise_dense(_rows(probs)[0]))
        device = next(model.parameters()).device
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(device)
            output, inputs = record_inputs(model, batch, "the explorer")
            outputs.append(output.float().cpu())
            for layer, module, x in zip(layers, modules, inputs, strict=True):
                if layer.content:
                    rows = _rows(module.attention(x))  # (B, heads, HW, HW)
                    full[layer.index] += [quantise(r, k) for r in rows]
                if layer.positional == "per-image":
                    rows = _rows(softmax_attention(positional_logits(module, x)))
                    positional[layer.index] += [quantise(r, k) for r in rows]
    return full, positional, torch.cat(outputs)


def _layer_entries(layers: list[LayerInfo], full: list[list[EncodedMaps]],
                   positional: list[list[EncodedMaps]]) -> list[dict[str, Any]]:
    """The page's ``layers`` list: each layer's facts and its stored ``full`` / ``positional``."""
    layer_data = []
    for layer in layers:
        views: dict[str, Any] = {"full": None, "positional": None}
        if layer.content:
            views["full"] = _stored(full[layer.index], shared=False)
        if layer.positional is not None:
            views["positional"] = _stored(positional[layer.index],
                                          shared=layer.positional == "shared")
        layer_data.append({"index": layer.index, "name": layer.name, "heads": layer.heads,
                           "grid": list(layer.grid), "encoding": layer.encoding,
                           "content": layer.content, "positional": layer.positional,
                           "views": views})
    return layer_data


def collect_explorer_data(model: nn.Module, images: Tensor, raw: Tensor, labels: Sequence[int],
                          classes: Sequence[str], *, info: dict[str, Any] | None = None,
                          indices: Sequence[int] | None = None, batch_size: int = 10,
                          max_bytes: int | None = int(DEFAULT_MAX_MB * 1e6)) -> ExplorerData:
    """Record the attention of ``model`` on ``images`` and encode it for the page.

    Args:
        model: a classifier built from :class:`SelfAttention2d` layers (eval mode is used).
        images: normalised model inputs ``(N, C, H, W)``.
        raw: the same images as uint8 ``(N, C, H, W)``, for display.
        labels: true class of each image.
        classes: class names.
        info: model facts shown in the page header (name, dataset, accuracy...).
        indices: index of each image in its test set (default ``0..N-1``).
        batch_size: images per forward pass.
        max_bytes: size limit of the page; per-image maps keep fewer keys to stay under it
            (see :func:`~attnconv.analysis.explorer.encode.plan_storage`). None: no limit.
    """
    _check_explorer_inputs(images, raw, labels, batch_size)
    n = len(images)
    indices = list(range(n)) if indices is None else [int(i) for i in indices]
    shown = display_images(raw)  # (N, H, W, C')
    layers = describe_layers(model, images)
    modules = [layer for _, layer in attention_layers(model)]
    plan = plan_storage([g for l in layers for g in l.groups()], n, int(shown[0].size),
                        max_bytes=max_bytes, fixed_bytes=_fixed_bytes(n, layers, classes))
    full, positional, logits = _record_maps(model, images, layers, modules, plan.k, batch_size)
    probs = logits.softmax(dim=-1)  # (N, classes)
    confidence, predicted = probs.max(dim=-1)
    height, width, channels = shown.shape[1:]
    data = {
        "version": FORMAT_VERSION,
        "info": {**(info or {}), "token_stride": token_stride(model)},
        "storage": {"k": plan.k, "dense_bytes": plan.dense_bytes},
        "classes": [str(c) for c in classes],
        "images": {"count": n, "height": int(height), "width": int(width),
                   "channels": int(channels), "pixels": b64(shown),
                   "labels": [int(v) for v in labels], "indices": indices,
                   "predicted": [int(v) for v in predicted], "confidence":
                       [round(float(v), 4) for v in confidence]},
        "colormap": b64(colormap_lut()),
        "layers": _layer_entries(layers, full, positional),
    }
    result = ExplorerData(data, plan, layers)
    data["storage"]["text"] = result.storage
    return result


def explorer_html(data: ExplorerData | dict[str, Any], title: str = "attention explorer") -> str:
    """The self-contained page: the template with ``data`` embedded as JSON.

    Names in the data (classes, run, layers) reach the page as JSON text: every ``<`` is written
    ``\\u003c``, so no ``</script>`` or ``<!--`` can end the data element, and the page shows
    them with ``textContent`` (never parsed as HTML). The title is HTML-escaped. Both marks are
    replaced in one pass, so a name holding a mark's text is not substituted again.
    """
    payload = data.data if isinstance(data, ExplorerData) else data
    text = json.dumps(payload, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    text = text.replace("<", "\\u003c")  # never closes the <script> element it sits in
    page = template_text()
    if DATA_MARK not in page or TITLE_MARK not in page:
        raise RuntimeError(f"the explorer template lacks {DATA_MARK} or {TITLE_MARK}")
    values = {DATA_MARK: text, TITLE_MARK: html.escape(title)}
    return re.sub(f"{re.escape(DATA_MARK)}|{re.escape(TITLE_MARK)}",
                  lambda match: values[match.group(0)], page)


# --------------------------------------------------------------------------------------------
# From a checkpoint
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplorerPage:
    """A written explorer page.

    Attributes:
        path: the HTML file.
        bytes: its size.
        images: test images it holds.
        layers: attention layers it holds.
        storage: how the maps are stored, in words.
        plan: the storage plan (``plan.k`` None: every key kept).
    """

    path: Path
    bytes: int
    images: int
    layers: int
    storage: str
    plan: StoragePlan


def load_explorer_images(meta: dict[str, Any], count: int, data_dir: str | None = None,
                ) -> tuple[Tensor, Tensor, list[int], list[str]]:
    """The first ``count`` test images of a checkpoint's dataset.

    Returns:
        ``(normalised float32 (N, C, H, W), raw uint8 (N, C, H, W), labels, class names)``.
    """
    from attnconv.data import load_dataset, normalize

    if count < 1:
        raise ValueError(f"the number of images must be >= 1, got {count}")
    data_dir = data_dir or (meta.get("config") or {}).get("data_dir")
    arrays = load_dataset(meta["dataset"], "test", data_dir)
    raw = torch.from_numpy(arrays.images[:count]).permute(0, 3, 1, 2).contiguous()
    labels = [int(v) for v in arrays.labels[:count]]
    return normalize(raw, meta["mean"], meta["std"]), raw, labels, list(arrays.classes)


def _run_info(path: Path, meta: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    from attnconv.analysis.figures import run_directory
    from attnconv.flops import count_parameters

    info: dict[str, Any] = {"model": meta.get("model"), "dataset": meta.get("dataset"),
                            "image_size": meta.get("image_size"),
                            "params": count_parameters(model), "source": path.name}
    run_dir = run_directory(path)
    results = None if run_dir is None else run_dir / "results.json"
    if results is not None and results.is_file():
        try:
            found = json.loads(results.read_text("utf-8"))
        except (OSError, ValueError):
            found = {}
        if isinstance(found, dict):
            info["run"] = found.get("name", run_dir.name if run_dir else None)
            for key in ("test_accuracy", "epochs"):
                if isinstance(found.get(key), int | float):
                    info[key] = found[key]
    return info


def build_explorer(checkpoint: str | Path, out: str | Path, *, images: int = DEFAULT_IMAGES,
                   data_dir: str | None = None, max_mb: float | None = DEFAULT_MAX_MB,
                   batch_size: int = 10) -> ExplorerPage:
    """Write the explorer page of a checkpoint (or a run directory's best checkpoint).

    Args:
        checkpoint: a ``.safetensors`` checkpoint or a run directory.
        out: the HTML file to write.
        images: how many test images (the first ones of the checkpoint's test set).
        data_dir: where the dataset files are (default: the run's ``data_dir``).
        max_mb: page size limit in MB (1e6 bytes); None for no limit.
        batch_size: images per forward pass.
    """
    from attnconv.train.model_io import load_model

    if max_mb is not None and max_mb <= 0:
        raise ValueError(f"the size limit must be positive, got {max_mb} MB")
    path = Path(checkpoint)
    model, meta = load_model(path)
    normalised, raw, labels, classes = load_explorer_images(meta, images, data_dir)
    classes = list(meta.get("classes") or classes)
    data = collect_explorer_data(
        model, normalised, raw, labels, classes, info=_run_info(path, meta, model),
        batch_size=batch_size, max_bytes=None if max_mb is None else int(max_mb * 1e6))
    title = f"attention explorer: {meta.get('model')} on {meta.get('dataset')}"
    text = explorer_html(data, title)
    out = Path(out)
    atomic_write_text(out, text)
    return ExplorerPage(out, out.stat().st_size, len(raw), len(data.layers), data.storage,
                        data.plan)
