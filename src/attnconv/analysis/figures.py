"""The paper's figures (PAPER section 5) as a library: each function writes PNG + PDF files.

* :func:`plot_gaussian_heads` -- quadratic encodings: every head's centre relative to the query
  pixel with its 50% and 90% probability-mass contours, on the token lattice (paper fig. 4; all
  layers in one figure and one file per layer).
* :func:`plot_head_trajectories` -- the head centres over training, from ``heads.jsonl`` (paper
  fig. 3).
* :func:`plot_positional_attention` -- positional-only attention of one query pixel (the centre
  by default), one panel per (layer, head): the learned-encoding figure.
* :func:`plot_content_attention` -- attention of a query pixel for one image and averaged over
  N images, overlaid on the image: the content figure.
* :func:`plot_training_curves` -- validation accuracy and loss against epochs for one or
  several runs (paper fig. 2).
* :func:`plot_conversion_error` -- Theorem 1's converter: error against the Gaussian width alpha.
* :func:`figures_for_run` -- the figures that apply to one checkpoint (``attnconv figures``).

Every function takes the output directory ``out`` and returns the paths it wrote. Figures are
drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot, no global backend, no
window). Offsets and centres are in tokens of the attention grid, rows downwards as in an image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from attnconv.analysis.record import (
    attention_layers,
    display_layout,
    eval_mode,
    load_test_images,
    positional_attention,
    record_attention,
    token_grid,
)
from attnconv.atomic import atomic_savefig
from attnconv.layers import SelfAttention2d

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MASSES = (0.5, 0.9)  # probability mass inside the drawn contours
DPI = 150


# --------------------------------------------------------------------------------------------
# Shared drawing helpers
# --------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg via savefig

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Figure, out: str | Path, stem: str) -> list[Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    atomic_savefig(fig, paths[0], dpi=DPI)
    atomic_savefig(fig, paths[1])
    return paths


def head_colors(heads: int) -> list[Any]:
    """One distinct colour per head (tab10, tab20, then an evenly sampled colormap)."""
    from matplotlib import colormaps

    if heads <= 10:
        return [colormaps["tab10"](i) for i in range(heads)]
    if heads <= 20:
        return [colormaps["tab20"](i) for i in range(heads)]
    return [colormaps["turbo"](i / max(heads - 1, 1)) for i in range(heads)]


def mass_radius(alpha: float, mass: float) -> float:
    """Radius holding ``mass`` of an isotropic Gaussian head with logits ``-alpha ||d - D||^2``.

    The density is ``N(D, sigma^2 I)`` with ``sigma^2 = 1 / (2 alpha)``; the mass within radius
    ``r`` is ``1 - exp(-r^2 / (2 sigma^2))``, so ``r = sqrt(-2 ln(1 - mass) sigma^2)``.
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return math.sqrt(-2.0 * math.log1p(-mass) / (2.0 * alpha))


@dataclass(frozen=True)
class MassEllipse:
    """The contour holding ``mass`` of a Gaussian head, in plot coordinates.

    Attributes:
        x, y: centre (column, row) in tokens.
        width, height: full axis lengths; ``width`` lies along ``angle``.
        angle: degrees from the column axis towards the row axis.
        degenerate: an axis was capped (``Sigma^-1`` singular or nearly so, or not finite).
    """

    x: float
    y: float
    width: float
    height: float
    angle: float
    degenerate: bool


def mass_ellipse(center: Sequence[float], inv_covariance: Any, mass: float,
                 cap: float = 1e3) -> MassEllipse:
    """Contour of ``mass`` for the head ``-1/2 (d - D)^T Sigma^-1 (d - D)`` (``D = center``).

    The Mahalanobis radius ``rho`` holding ``mass`` of a 2D Gaussian is
    ``rho^2 = -2 ln(1 - mass)``; along an eigenvector of ``Sigma^-1`` with eigenvalue ``lam``
    the semi-axis is ``rho / sqrt(lam)``. Semi-axes are capped at ``cap`` tokens (a singular or
    nearly singular ``Sigma^-1``: an infinitely wide head), which marks the head degenerate.
    """
    if not 0.0 < mass < 1.0:
        raise ValueError(f"mass must be in (0, 1), got {mass}")
    row, col = float(center[0]), float(center[1])
    m = np.asarray(inv_covariance, dtype=np.float64).reshape(2, 2)
    if not np.all(np.isfinite(m)):
        return MassEllipse(col, row, 2 * cap, 2 * cap, 0.0, True)
    lam, vec = np.linalg.eigh((m + m.T) / 2)  # ascending; vec[:, i] = (row, col)
    rho2 = -2.0 * math.log1p(-mass)
    semi = [math.sqrt(rho2 / v) if v > rho2 / cap**2 else cap for v in lam]
    degenerate = any(v <= rho2 / cap**2 for v in lam)
    angle = math.degrees(math.atan2(vec[0, 0], vec[1, 0]))  # first axis in (x=col, y=row)
    return MassEllipse(col, row, 2 * semi[0], 2 * semi[1], angle, degenerate)


def _draw_lattice(ax: Axes, extent: int) -> None:
    """Token cells around the query pixel (offset (0, 0), shaded), rows downwards."""
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator, MultipleLocator

    ax.add_patch(Rectangle((-0.5, -0.5), 1, 1, facecolor="0.75", edgecolor="black",
                           linewidth=1.2, zorder=1))
    ax.set_xlim(-extent - 0.5, extent + 0.5)
    ax.set_ylim(extent + 0.5, -extent - 0.5)  # row offsets grow downwards, as in an image
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(nbins=9, integer=True))
        axis.set_minor_locator(MultipleLocator(1.0, offset=0.5))  # the cell boundaries
    ax.tick_params(which="minor", length=0)
    ax.grid(True, which="minor", color="0.88", linewidth=0.6)
    ax.set_axisbelow(True)
    ax.set_aspect("equal")
    ax.set_xlabel("column offset (tokens)")
    ax.set_ylabel("row offset (tokens)")


def _draw_gaussians(ax: Axes, centers: np.ndarray, inv_covariance: np.ndarray,
                    colors: Sequence[Any], extent: int, *, centre_marker: bool = True) -> int:
    """Each head's centre and its mass contours; returns the number of degenerate heads."""
    from matplotlib.patches import Ellipse

    degenerate = 0
    for head, color in enumerate(colors):
        bad = False
        for mass, style in zip(MASSES, ("-", "--"), strict=True):
            e = mass_ellipse(centers[head], inv_covariance[head], mass, cap=4.0 * extent + 4.0)
            bad = bad or e.degenerate
            ax.add_patch(Ellipse((e.x, e.y), e.width, e.height, angle=e.angle, fill=False,
                                 edgecolor=color, linestyle=style, linewidth=1.3, zorder=2))
        degenerate += bad
        if centre_marker:
            ax.plot(centers[head, 1], centers[head, 0], "o", color=color, markersize=6,
                    markeredgecolor="black", markeredgewidth=0.5, zorder=3)
    return degenerate


def _extent(points: np.ndarray, grid: tuple[int, int] | None, minimum: int = 3) -> int:
    """Half-width of the plotted window: covers the points (and 1 token more), at least 3."""
    finite = points[np.isfinite(points)]
    reach = math.ceil(float(np.abs(finite).max()) + 1.0) if finite.size else minimum
    if grid is not None:
        reach = min(reach, max(grid) - 1)
    return max(minimum, reach)


def _style_legend(ax_or_fig: Any, colors: Sequence[Any], *, extra: Sequence[Any] = (),
                  **kwargs: Any) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=c, marker="o", linestyle="", markeredgecolor="black",
                      markeredgewidth=0.5, label=f"head {h}") for h, c in enumerate(colors)]
    handles += [Line2D([], [], color="0.3", linestyle="-", label=f"{MASSES[0]:.0%} mass"),
                Line2D([], [], color="0.3", linestyle="--", label=f"{MASSES[1]:.0%} mass"),
                Patch(facecolor="0.75", edgecolor="black", label="query pixel"), *extra]
    ax_or_fig.legend(handles=handles, **kwargs)


def _check_layer(layer: int | None, count: int, what: str) -> None:
    if layer is not None and not 0 <= layer < count:
        raise ValueError(f"--layer {layer} is out of range: the model has {count} {what} "
                         f"(0 to {count - 1})")


def _grid_axes(fig: Figure, panels: int, columns: int = 3) -> list[Axes]:
    cols = min(columns, panels)
    rows = -(-panels // cols)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return list(axes[:panels])


# --------------------------------------------------------------------------------------------
# Quadratic encodings: centres and contours (paper fig. 4), trajectories (paper fig. 3)
# --------------------------------------------------------------------------------------------
def _quadratic_layers(model: nn.Module) -> list[tuple[int, SelfAttention2d]]:
    return [(i, layer) for i, (_, layer) in enumerate(attention_layers(model))
            if layer.encoding_name.startswith("quadratic")]


def plot_gaussian_heads(model: nn.Module, out: str | Path, *, layer: int | None = None,
                        grid: tuple[int, int] | None = None,
                        stem: str = "gaussian_heads") -> list[Path]:
    """Centres and 50%/90% mass contours of every quadratic head, relative to the query pixel.

    Args:
        model: a model (or a converted conv, or a bare layer) with quadratic attention layers.
        out: output directory.
        layer: only this layer (index among the model's attention layers, model order);
            default: one figure with all layers (``{stem}_all``) and one file per layer
            (``{stem}_layer{L}``).
        grid: token grid, bounds the plotted window (default: the model's, when known).

    Degenerate heads (singular or huge ``Sigma``) get capped contours and are counted in the
    panel title.
    """
    layers = _quadratic_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no quadratic attention layer; Gaussian "
                         f"heads exist only with encoding 'quadratic' or 'quadratic-full'")
    count = len(attention_layers(model))
    _check_layer(layer, count, "attention layers")
    if layer is not None and layer not in {i for i, _ in layers}:
        raise ValueError(f"attention layer {layer} is not quadratic")
    grid = grid or token_grid(model)
    params = {i: l.gaussian_parameters() for i, l in layers}
    data = {i: (g.centers.double().cpu().numpy(), g.inv_covariance.double().cpu().numpy())
            for i, g in params.items()}

    def panel(ax: Axes, index: int) -> None:
        centers, inv_cov = data[index]
        colors = head_colors(len(centers))
        # The window shows every centre and (up to 3 tokens of) its 90% contour.
        ellipses = [mass_ellipse(c, m, MASSES[1]) for c, m in zip(centers, inv_cov, strict=True)]
        reach = np.array([np.abs(c).max() + min(max(e.width, e.height) / 2, 3.0)
                          for c, e in zip(centers, ellipses, strict=True)])
        extent = _extent(reach, grid)
        _draw_lattice(ax, extent)
        bad = _draw_gaussians(ax, centers, inv_cov, colors, extent)
        note = f", {bad} degenerate" if bad else ""
        ax.set_title(f"layer {index}: {len(centers)} heads{note}")

    paths: list[Path] = []
    chosen = [i for i, _ in layers] if layer is None else [layer]
    if layer is None:
        fig = _figure(4.2 * min(3, len(chosen)) + 1.6, 4.2 * -(-len(chosen) // 3) + 0.6)
        for ax, index in zip(_grid_axes(fig, len(chosen)), chosen, strict=True):
            panel(ax, index)
        heads = max(len(data[i][0]) for i in chosen)
        _style_legend(fig, head_colors(heads), loc="outside right center")
        fig.suptitle("Gaussian attention heads: centre and 50% / 90% probability mass "
                     "around the query pixel")
        paths += _save(fig, out, f"{stem}_all")
    for index in chosen:
        fig = _figure(6.4, 4.8)
        ax = fig.subplots()
        panel(ax, index)
        _style_legend(ax, head_colors(len(data[index][0])), loc="center left",
                      bbox_to_anchor=(1.02, 0.5), fontsize="small")
        paths += _save(fig, out, f"{stem}_layer{index}")
    return paths


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_file(run_dir: str | Path, name: str, what: str) -> Path:
    path = Path(run_dir)
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; {what} needs a run directory written by "
                                f"'attnconv train' (it holds {name})")
    return path


def plot_head_trajectories(run_dir: str | Path, out: str | Path, *, layer: int | None = None,
                           stem: str = "head_trajectories") -> list[Path]:
    """Each head's centre over training, epoch 0 (initialisation) to the last, per layer.

    Args:
        run_dir: a run directory (or its ``heads.jsonl``) of a quadratic model.
        out: output directory.
        layer: only this layer (index among the quadratic layers of ``heads.jsonl``); default:
            all layers in one figure (``{stem}_all``) and one file per layer.

    The start is an open circle, the end a filled one with the final 50%/90% mass contours.
    """
    rows = read_jsonl(_run_file(run_dir, "heads.jsonl", "the trajectory figure"))
    if not rows or not rows[0].get("layers"):
        raise ValueError(f"{run_dir} recorded no Gaussian heads (not a quadratic model?)")
    rows.sort(key=lambda r: r["epoch"])
    count = len(rows[0]["layers"])
    _check_layer(layer, count, "quadratic layers in heads.jsonl")
    first, last = rows[0]["epoch"], rows[-1]["epoch"]

    def panel(ax: Axes, index: int) -> int:
        path = np.array([r["layers"][index]["centers"] for r in rows], dtype=np.float64)
        # path: (epochs, heads, 2) as (row, col)
        final = rows[-1]["layers"][index]
        inv_cov = np.array(final["inv_covariance"], dtype=np.float64)  # (heads, 2, 2)
        colors = head_colors(path.shape[1])
        extent = _extent(path, None)
        _draw_lattice(ax, extent)
        _draw_gaussians(ax, path[-1], inv_cov, colors, extent, centre_marker=False)
        for head, color in enumerate(colors):
            ax.plot(path[:, head, 1], path[:, head, 0], "-", color=color, linewidth=1.2,
                    alpha=0.9, zorder=3)
            ax.plot(path[-1, head, 1], path[-1, head, 0], "o", color=color, markersize=6,
                    markeredgecolor="black", markeredgewidth=0.5, zorder=4)
            ax.plot(path[0, head, 1], path[0, head, 0], "o", markerfacecolor="none",
                    markeredgecolor=color, markeredgewidth=1.5, markersize=10, zorder=5)
        ax.set_title(f"layer {index}: epochs {first} to {last}")
        return path.shape[1]

    from matplotlib.lines import Line2D

    marks = [Line2D([], [], marker="o", linestyle="", markerfacecolor="none",
                    markeredgecolor="0.3", markeredgewidth=1.5, markersize=10,
                    label=f"epoch {first} (start)"),
             Line2D([], [], marker="o", linestyle="", color="0.3", markeredgecolor="black",
                    label=f"epoch {last} (end)")]
    paths: list[Path] = []
    chosen = list(range(count)) if layer is None else [layer]
    if layer is None:
        fig = _figure(4.2 * min(3, count) + 1.8, 4.2 * -(-count // 3) + 0.6)
        heads = [panel(ax, i) for ax, i in zip(_grid_axes(fig, count), chosen, strict=True)]
        _style_legend(fig, head_colors(max(heads)), extra=marks, loc="outside right center")
        fig.suptitle("Gaussian head centres during training (contours: final 50% / 90% mass)")
        paths += _save(fig, out, f"{stem}_all")
    for index in chosen:
        fig = _figure(6.6, 4.8)
        ax = fig.subplots()
        heads_in_layer = panel(ax, index)
        _style_legend(ax, head_colors(heads_in_layer), extra=marks, loc="center left",
                      bbox_to_anchor=(1.02, 0.5), fontsize="small")
        paths += _save(fig, out, f"{stem}_layer{index}")
    return paths


# --------------------------------------------------------------------------------------------
# Attention maps of a query pixel: positional-only and content
# --------------------------------------------------------------------------------------------
def _check_query(query: tuple[int, int], grid: tuple[int, int]) -> None:
    if not (0 <= query[0] < grid[0] and 0 <= query[1] < grid[1]):
        raise ValueError(f"query pixel {tuple(query)} is outside the {grid[0]}x{grid[1]} token "
                         f"grid (rows 0-{grid[0] - 1}, columns 0-{grid[1] - 1})")


def _mark_cell(ax: Axes, row: float, col: float, size: float = 1.0, color: str = "red") -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((col - 0.5, row - 0.5), size, size, fill=False, edgecolor=color,
                           linewidth=1.5))


def plot_positional_attention(model: nn.Module, out: str | Path, *,
                              grid: tuple[int, int] | None = None,
                              query: tuple[int, int] | None = None, layer: int | None = None,
                              stem: str = "positional_attention") -> list[Path]:
    """Attention of one query pixel for every positional-only (layer, head), one panel each.

    Args:
        model: any module with positional-only ``SelfAttention2d`` layers (quadratic or
            learned encodings); content layers are skipped.
        out: output directory.
        grid: token grid ``(H, W)`` (default: the model's training grid).
        query: query pixel ``(row, col)`` in tokens (default: the centre, ``(H // 2, W // 2)``).
        layer: only this layer (index among the attention layers, model order).

    Every panel has its own colour scale (its maximum is in the title); the query is boxed red.
    """
    layers = [(i, l) for i, (_, l) in enumerate(attention_layers(model)) if l.positional_only]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no positional-only attention layer; use "
                         f"plot_content_attention for content attention")
    _check_layer(layer, len(attention_layers(model)), "attention layers")
    if layer is not None:
        layers = [(i, l) for i, l in layers if i == layer]
        if not layers:
            raise ValueError(f"attention layer {layer} uses content attention")
    grid = grid or token_grid(model)
    if grid is None:
        raise ValueError(f"pass grid=(H, W): the token grid of {type(model).__name__} is unknown")
    query = query or (grid[0] // 2, grid[1] // 2)
    _check_query(query, grid)
    heads = max(l.heads for _, l in layers)
    fig = _figure(1.9 * heads + 0.8, 2.0 * len(layers) + 0.8)
    axes = fig.subplots(len(layers), heads, squeeze=False)
    for row, (index, attn_layer) in enumerate(layers):
        maps = positional_attention(attn_layer, grid)[:, query[0], query[1]]  # (heads, H, W)
        maps = maps.double().cpu().numpy()
        for head in range(heads):
            ax = axes[row, head]
            ax.set_xticks([])
            ax.set_yticks([])
            if head >= attn_layer.heads:
                ax.set_visible(False)
                continue
            ax.imshow(maps[head], cmap="viridis", vmin=0.0, vmax=max(maps[head].max(), 1e-12),
                      interpolation="nearest")
            _mark_cell(ax, *query)
            ax.set_title(f"head {head} (max {maps[head].max():.2f})", fontsize="small")
            if head == 0:
                ax.set_ylabel(f"layer {index}")
    fig.suptitle(f"Positional attention of query pixel {tuple(query)} (red box) on the "
                 f"{grid[0]}x{grid[1]} token grid")
    return _save(fig, out, stem if layer is None else f"{stem}_layer{layer}")


def _display_images(display: Tensor | None, images: Tensor) -> np.ndarray:
    """Images ``(N, H, W, 1 or 3)`` in [0, 1] for display.

    Without ``display`` the model inputs are rescaled per image; other than 1 or 3 channels
    are shown as their mean.
    """
    if display is None:
        x = images.detach().double().cpu()
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (high - low).clamp_min(1e-12)
    else:
        x = display.detach().cpu().double()
        x = x / 255.0 if display.dtype == torch.uint8 else x
    return display_layout(x).clamp(0, 1).numpy()  # (N, H, W, C)


def _query_attention(model: nn.Module, images: Tensor, chosen: list[int],
                     query: tuple[int, int] | None, batch_size: int
                     ) -> tuple[dict[int, np.ndarray], dict[int, tuple[int, int]]]:
    """Attention rows of the query pixel for each chosen layer, and each layer's token grid.

    Returns ``{layer: (N, heads, h, w)}`` (float64) and ``{layer: (h, w)}``; the query defaults
    to the centre of each layer's grid.
    """
    rows: dict[int, list[Tensor]] = {i: [] for i in chosen}
    grid: dict[int, tuple[int, int]] = {}
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            maps = record_attention(model, images[start:start + batch_size],
                                    batch_size=batch_size)
            for index in chosen:
                attn = maps[index]  # (B, heads, h, w, h, w)
                grid[index] = (int(attn.shape[-2]), int(attn.shape[-1]))
                q = query or (grid[index][0] // 2, grid[index][1] // 2)
                _check_query(q, grid[index])
                rows[index].append(attn[:, :, q[0], q[1]].double())  # (B, heads, h, w)
    return {i: torch.cat(r).numpy() for i, r in rows.items()}, grid


def _draw_content_attention(background: np.ndarray, maps: dict[int, np.ndarray],
                            chosen: list[int], grid: dict[int, tuple[int, int]],
                            query: tuple[int, int] | None, title: str, out: str | Path,
                            name: str) -> list[Path]:
    """One content figure: per chosen layer a row of the image and each head's attention map.

    ``maps`` holds ``(heads, h, w)`` per layer; the query token is outlined in cyan.
    """
    from matplotlib.patches import Rectangle

    heads = max(m.shape[0] for m in maps.values())
    fig = _figure(1.9 * (heads + 1) + 0.6, 2.0 * len(chosen) + 0.8)
    axes = fig.subplots(len(chosen), heads + 1, squeeze=False)
    height, width = background.shape[:2]
    gray = background.shape[2] == 1
    bg = background[..., 0] if gray else background
    for row, index in enumerate(chosen):
        h, w = grid[index]
        q = query or (h // 2, w // 2)
        cell = (height / h, width / w)  # pixels per token
        for col in range(heads + 1):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col > maps[index].shape[0]:
                ax.set_visible(False)
                continue
            ax.imshow(bg, cmap="gray" if gray else None, vmin=0, vmax=1,
                      interpolation="nearest")
            if col > 0:
                m = maps[index][col - 1]
                ax.imshow(m, cmap="inferno", alpha=0.65, vmin=0.0,
                          vmax=max(float(m.max()), 1e-12), interpolation="nearest",
                          extent=(-0.5, width - 0.5, height - 0.5, -0.5))
                ax.set_title(f"head {col - 1} (max {m.max():.2f})", fontsize="small")
            else:
                ax.set_title("image, query", fontsize="small")
                ax.set_ylabel(f"layer {index}")
            ax.add_patch(Rectangle((q[1] * cell[1] - 0.5, q[0] * cell[0] - 0.5), cell[1],
                                   cell[0], fill=False, edgecolor="cyan", linewidth=1.5))
    fig.suptitle(title)
    return _save(fig, out, name)


def plot_content_attention(model: nn.Module, images: Tensor, out: str | Path, *,
                           query: tuple[int, int] | None = None, image_index: int = 0,
                           display: Tensor | None = None, layer: int | None = None,
                           batch_size: int = 50, stem: str = "content_attention") -> list[Path]:
    """Attention of a query pixel, per layer and head, overlaid on the image (content figure).

    Args:
        model: a model taking ``images``; its attention runs on its actual input, in eval mode.
        images: normalised model input ``(N, C, H, W)``.
        out: output directory.
        query: query pixel ``(row, col)`` in tokens of the attention grid (default: centre).
        image_index: the image of the single-image figure (``{stem}_image{i}``).
        display: the same images for display, uint8 or in [0, 1] (default: ``images``
            rescaled per image).
        layer: only this layer (index among the attention layers, model order).
        batch_size: images per forward pass.

    Writes the attention for image ``image_index`` and the attention averaged over all ``N``
    images (``{stem}_mean{N}``, drawn over the mean image). The token grid is stretched over
    the image: token ``(i, j)`` covers pixels ``[i r, (i + 1) r) x [j r, (j + 1) r)``.
    """
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, C, H, W) batch, got "
                         f"{tuple(images.shape)}")
    if not 0 <= image_index < len(images):
        raise ValueError(f"image_index {image_index} is out of range for {len(images)} images")
    named = attention_layers(model)
    _check_layer(layer, len(named), "attention layers")
    chosen = list(range(len(named))) if layer is None else [layer]
    per_layer, grid = _query_attention(model, images, chosen, query, batch_size)
    shown = _display_images(display, images)  # (N, H, W, C)
    n = len(images)
    first_grid = grid[chosen[0]]
    q_text = str(tuple(query) if query else (first_grid[0] // 2, first_grid[1] // 2))
    paths = _draw_content_attention(
        shown[image_index], {i: m[image_index] for i, m in per_layer.items()}, chosen, grid,
        query, f"Attention of query pixel {q_text} (cyan box) for image {image_index}", out,
        f"{stem}_image{image_index}")
    paths += _draw_content_attention(
        shown.mean(axis=0), {i: m.mean(axis=0) for i, m in per_layer.items()}, chosen, grid,
        query, f"Attention of query pixel {q_text} (cyan box) averaged over {n} images "
        f"(background: mean image)", out, f"{stem}_mean{n}")
    return paths


# --------------------------------------------------------------------------------------------
# Training curves (paper fig. 2) and the converter's error against alpha
# --------------------------------------------------------------------------------------------
def _run_label(run_dir: Path) -> str:
    label = run_dir.name
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        model = (yaml.safe_load(config.read_text()) or {}).get("model")
        label = f"{label} ({model})" if model else label
    results = run_dir / "results.json"
    if results.is_file():
        test = json.loads(results.read_text()).get("test_accuracy")
        label = f"{label}, test {test:.3f}" if isinstance(test, float) else label
    return label


def plot_training_curves(run_dirs: Sequence[str | Path] | str | Path, out: str | Path, *,
                         stem: str = "training_curves") -> list[Path]:
    """Validation accuracy and loss against epochs for one or several runs, on one plot.

    Args:
        run_dirs: run directories written by ``attnconv train`` (each has ``metrics.jsonl``).
        out: output directory.

    Solid lines are validation, dashed lines (same colour) training metrics.
    """
    dirs = [Path(run_dirs)] if isinstance(run_dirs, str | Path) else [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("pass at least one run directory")
    fig = _figure(11.0, 4.4)
    acc_ax, loss_ax = fig.subplots(1, 2)
    colors = head_colors(len(dirs))
    for run_dir, color in zip(dirs, colors, strict=True):
        metrics = read_jsonl(_run_file(run_dir, "metrics.jsonl", "the training-curve figure"))
        if not metrics:
            raise ValueError(f"{run_dir / 'metrics.jsonl'} is empty (no finished epoch yet)")
        epochs = [m["epoch"] for m in metrics]
        label = _run_label(run_dir)
        acc_ax.plot(epochs, [m["val_accuracy"] for m in metrics], "-", color=color, label=label,
                    marker="o" if len(epochs) < 30 else None, markersize=3)
        acc_ax.plot(epochs, [m["train_accuracy"] for m in metrics], "--", color=color,
                    alpha=0.6)
        loss_ax.plot(epochs, [m["val_loss"] for m in metrics], "-", color=color, label=label,
                     marker="o" if len(epochs) < 30 else None, markersize=3)
        loss_ax.plot(epochs, [m["train_loss"] for m in metrics], "--", color=color, alpha=0.6)
    acc_ax.set_title("accuracy (solid: validation, dashed: training)")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy")
    loss_ax.set_title("loss (solid: validation, dashed: training)")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy loss")
    from matplotlib.ticker import MaxNLocator

    for ax in (acc_ax, loss_ax):
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.legend(fontsize="small", loc="lower right")
    return _save(fig, out, stem)


def conversion_error_curve(alphas: Sequence[float] | None = None, *, seed: int = 0,
                           dtype: torch.dtype = torch.float64) -> list[dict[str, float]]:
    """Errors of the attention version of a random 3x3 conv for each width ``alpha``.

    A seeded ``Conv2d(3, 4, 3, padding=1)`` on a seeded ``(1, 3, 12, 12)`` input, through
    :func:`attnconv.theorem.verify.alpha_error_curve` (the curve of ``attnconv verify``); the
    exact width of ``dtype`` comes last.
    """
    from attnconv.theorem.verify import alpha_error_curve

    alphas = list(np.geomspace(0.05, 100.0, 15)) if alphas is None else list(alphas)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, 12, 12, generator=generator, dtype=torch.float64).to(dtype)
    return alpha_error_curve(x, alphas, seed)


def plot_conversion_error(out: str | Path, *, alphas: Sequence[float] | None = None,
                          seed: int = 0, stem: str = "conversion_error") -> list[Path]:
    """Theorem 1's converter: max relative error against the Gaussian width ``alpha``.

    One curve per dtype (float32, float64) for a random 3x3 conv; the star is the dtype's
    exact width (bitwise one-hot softmax); the dotted line is ``exp(-alpha)``, the relative
    weight of the nearest off-target pixel (Lemma 2). Exact zeros sit on the plot's floor.
    """
    from attnconv.theorem import exact_alpha

    fig = _figure(7.0, 4.6)
    ax = fig.subplots()
    floor = 1e-20
    for dtype, color in ((torch.float32, "tab:blue"), (torch.float64, "tab:orange")):
        rows = conversion_error_curve(alphas, seed=seed, dtype=dtype)
        name = str(dtype).replace("torch.", "")
        xs = [r["alpha"] for r in rows[:-1]]
        ys = [max(r["max_rel_error"], floor) for r in rows[:-1]]
        ax.loglog(xs, ys, "o-", color=color, markersize=3, label=f"{name}")
        ax.loglog([rows[-1]["alpha"]], [max(rows[-1]["max_rel_error"], floor)], "*",
                  color=color, markersize=12, markeredgecolor="black",
                  label=f"{name}, exact alpha = {exact_alpha(dtype):.1f}")
    grid = np.geomspace(0.05, -math.log(floor), 200)
    ax.loglog(grid, np.exp(-grid), ":", color="0.4", label="exp(-alpha) (Lemma 2)")
    ax.set_ylim(floor / 3, 10.0)
    ax.set_xlabel("alpha (Gaussian width of every head)")
    ax.set_ylabel("max |attention - conv| / max |conv|")
    ax.set_title("Converted 3x3 convolution: error against alpha")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    return _save(fig, out, stem)


# --------------------------------------------------------------------------------------------
# Everything that applies to one run
# --------------------------------------------------------------------------------------------
def run_directory(path: str | Path) -> Path | None:
    """The run directory of a run directory or of a checkpoint inside its ``checkpoints/``."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def figures_for_run(path: str | Path, out: str | Path, *, layer: int | None = None,
                    query: tuple[int, int] | None = None, images: int = 100,
                    image_index: int = 0, data_dir: str | None = None) -> list[Path]:
    """The figures that apply to a trained model; returns the paths written.

    Quadratic encodings: centres and contours, and head trajectories when the run directory
    has ``heads.jsonl``. Positional-only layers: the attention of the query pixel (centre by
    default). Content attention: the query's attention on ``image_index`` and averaged over
    the first ``images`` test images of the checkpoint's dataset. Training curves when the run
    directory has ``metrics.jsonl`` (the only figure for a model without attention, e.g. the
    ResNet baseline).
    """
    from attnconv.train.model_io import load_model

    model, meta = load_model(path)
    run_dir = run_directory(path)
    layers = [layer_ for _, layer_ in attention_layers(model)]
    paths: list[Path] = []
    if not layers:  # a CNN baseline: only its training curves
        if run_dir is None or not (run_dir / "metrics.jsonl").is_file():
            raise ValueError(f"{path} holds a {meta.get('model')} model without attention "
                             f"layers and no metrics.jsonl: no figure applies")
        return plot_training_curves([run_dir], out)
    _check_layer(layer, len(layers), "attention layers")
    if any(l.encoding_name.startswith("quadratic") for l in layers):
        paths += plot_gaussian_heads(model, out, layer=layer)
        if run_dir is not None and (run_dir / "heads.jsonl").is_file():
            paths += plot_head_trajectories(run_dir, out, layer=layer)
    if any(l.positional_only for l in layers) and (
            layer is None or layers[layer].positional_only):
        paths += plot_positional_attention(model, out, query=query, layer=layer)
    if any(l.content for l in layers) and (layer is None or layers[layer].content):
        normalised, raw = load_test_images(meta, images, data_dir)
        paths += plot_content_attention(model, normalised, out, query=query,
                                        image_index=min(image_index, len(raw) - 1),
                                        display=raw, layer=layer)
    if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        paths += plot_training_curves([run_dir], out)
    return paths
