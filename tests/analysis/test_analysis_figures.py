"""Figure functions write non-empty PNG + PDF files that plot the right data; the commands run
end to end.

Each figure is captured when it is saved (:class:`FigureLog`) and its artists are compared
with the quantities computed here, independently of the figure code: head centres and widths
from the encodings' parameters, attention from the formulas of the layers, curves from the
run's files, conversion errors from the convolution.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse, Rectangle
from torch import nn

from attnconv.analysis import figures
from attnconv.cli import main
from attnconv.layers import SelfAttention2d
from attnconv.layers.learned import LearnedRelativeEncoding
from attnconv.layers.quadratic import QuadraticEncoding
from attnconv.models import create_model
from attnconv.theorem import conv_to_attention, exact_alpha
from attnconv.train.model_io import load_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_files(paths: list[Path], *stems: str) -> None:
    """Every stem has a PNG and a PDF, both non-empty and of the right format."""
    names = {p.name for p in paths}
    for stem in stems:
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, (stem, sorted(names))
    for path in paths:
        data = path.read_bytes()
        assert len(data) > 1000, path
        assert data.startswith(PNG_MAGIC if path.suffix == ".png" else b"%PDF"), path


def test_mass_contours() -> None:
    # Isotropic head, alpha = 1/2: sigma = 1, r50 = sqrt(2 ln 2), r90 = sqrt(2 ln 10).
    assert figures.mass_radius(0.5, 0.5) == pytest.approx(math.sqrt(2 * math.log(2)))
    assert figures.mass_radius(0.5, 0.9) == pytest.approx(math.sqrt(2 * math.log(10)))
    e = figures.mass_ellipse((1.0, -2.0), np.eye(2) * 2 * 0.5, 0.9)  # Sigma^-1 = 2 alpha I
    assert (e.x, e.y) == (-2.0, 1.0) and not e.degenerate
    assert e.width == pytest.approx(2 * figures.mass_radius(0.5, 0.9))
    assert e.height == pytest.approx(e.width)
    # Sigma^-1 = diag(4, 1) in (row, col): narrow along rows, wide along columns.
    e = figures.mass_ellipse((0, 0), np.diag([4.0, 1.0]), 0.5)
    rho = math.sqrt(2 * math.log(2))
    assert {round(e.width, 9), round(e.height, 9)} == {round(2 * rho, 9), round(rho, 9)}
    # The wide axis (width: smallest eigenvalue first) lies along the columns (x axis).
    assert e.width == pytest.approx(2 * rho) and abs(math.sin(math.radians(e.angle))) < 1e-9
    singular = figures.mass_ellipse((0, 0), np.zeros((2, 2)), 0.5, cap=10)
    assert singular.degenerate and singular.width == 20
    assert figures.mass_ellipse((0, 0), np.full((2, 2), np.nan), 0.5).degenerate


class FigureLog:
    """The matplotlib Figures saved while the fixture :func:`figure_log` is active."""

    def __init__(self) -> None:
        self.saved: list[tuple[Figure, str]] = []  # (figure, format) in the order of saving

    def drawn(self, paths: list[Path], *stems: str) -> dict[str, Figure]:
        """``{stem: figure}`` of the files a figure function returned (:func:`check_files`).

        Pairs the saves since the last call with ``paths`` in order (the function saves each
        file as it lists it; the formats must agree); each stem's PNG and PDF are one figure.
        """
        check_files(paths, *stems)
        saved, self.saved = self.saved, []
        assert [fmt for _, fmt in saved] == [p.suffix.lstrip(".") for p in paths]
        by_name = {path.name: fig for (fig, _), path in zip(saved, paths, strict=True)}
        for stem in stems:
            assert by_name[f"{stem}.png"] is by_name[f"{stem}.pdf"], stem
        return {stem: by_name[f"{stem}.png"] for stem in stems}


@pytest.fixture
def figure_log(monkeypatch: pytest.MonkeyPatch) -> FigureLog:
    """Keeps every Figure as it is saved (``Figure.savefig`` wrapped), before it is dropped."""
    log = FigureLog()
    savefig = Figure.savefig

    def recording(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> Any:
        fmt = kwargs.get("format") or Path(str(fname)).suffix.lstrip(".")
        log.saved.append((self, fmt))
        return savefig(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return log


def image_data(ax: Axes, index: int = 0) -> np.ndarray:
    """The array of the ``index``-th image drawn on ``ax``."""
    return np.asarray(ax.get_images()[index].get_array(), dtype=np.float64)


def quadratic_heads(model: nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(centres (heads, 2) as (row, col), alpha (heads,))`` of every QuadraticEncoding in
    model order, read from its parameters ``centers`` and ``log_alpha``."""
    return [(enc.centers.detach().double().numpy(), enc.log_alpha.detach().double().exp().numpy())
            for enc in model.modules() if isinstance(enc, QuadraticEncoding)]


def check_gaussian_panel(ax: Axes, centres: np.ndarray, alpha: np.ndarray, *,
                         markers: bool = True) -> None:
    """Head ``h``: 50% and 90% mass circles of radius ``mass_radius(alpha_h, mass)`` centred
    on ``(col, row) = centres[h]`` and (with ``markers``) a dot there, in the head's colour."""
    ellipses = [p for p in ax.patches if isinstance(p, Ellipse)]
    assert len(ellipses) == len(figures.MASSES) * len(centres)
    k = len(figures.MASSES)  # contours per head, drawn head by head
    pairs = [ellipses[i:i + k] for i in range(0, len(ellipses), k)]
    for (row, col), a, pair in zip(centres, alpha, pairs, strict=True):
        for mass, e in zip(figures.MASSES, pair, strict=True):
            np.testing.assert_allclose(e.get_center(), (col, row), rtol=0, atol=1e-12)
            radius = figures.mass_radius(float(a), mass)
            assert e.get_width() == pytest.approx(2 * radius, rel=1e-6)  # float32 widths
            assert e.get_height() == pytest.approx(2 * radius, rel=1e-6)
    if markers:
        dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
        xy = [(line.get_xdata()[0], line.get_ydata()[0]) for line in dots]
        np.testing.assert_allclose(xy, centres[:, ::-1], rtol=0, atol=1e-12)
        for dot, pair in zip(dots, pairs, strict=True):
            assert pair[0].get_edgecolor() == pytest.approx(to_rgba(dot.get_color()))
    (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()
    assert top < bottom  # rows grow downwards, as in an image
    assert left < centres[:, 1].min() and centres[:, 1].max() < right
    assert top < centres[:, 0].min() and centres[:, 0].max() < bottom


def softmax_map(logits: np.ndarray) -> np.ndarray:
    """Softmax over all entries of a key map ``(..., H, W)``."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    flat = np.exp(flat - flat.max(axis=-1, keepdims=True))
    return (flat / flat.sum(axis=-1, keepdims=True)).reshape(logits.shape)


def quadratic_map(centres: np.ndarray, alpha: np.ndarray, grid: tuple[int, int],
                  query: tuple[int, int]) -> np.ndarray:
    """Lemma 2: ``softmax_k(-alpha_h ||k - q - Delta_h||^2)`` over the grid, ``(heads, H, W)``."""
    rows = np.arange(grid[0])[None, :, None] - query[0] - centres[:, 0, None, None]
    cols = np.arange(grid[1])[None, None, :] - query[1] - centres[:, 1, None, None]
    return softmax_map(-alpha[:, None, None] * (rows**2 + cols**2))


def check_query_box(ax: Axes, row: float, col: float, size: tuple[float, float] = (1, 1)) -> None:
    """The query cell is boxed: a rectangle with its corner at ``(col - 0.5, row - 0.5)``."""
    boxes = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert len(boxes) == 1
    assert boxes[0].get_xy() == pytest.approx((col - 0.5, row - 0.5))
    assert (boxes[0].get_width(), boxes[0].get_height()) == pytest.approx((size[1], size[0]))
def test_quadratic_figures(quadratic_run: Path, tmp_path: Path, figure_log: FigureLog) -> None:
    model, _ = load_model(quadratic_run)
    heads = quadratic_heads(model)
    assert len(heads) == 2 and not np.allclose(heads[0][0], heads[1][0])  # layers differ
    drawn = figure_log.drawn(figures.plot_gaussian_heads(model, tmp_path),
                             "gaussian_heads_all", "gaussian_heads_layer0", "gaussian_heads_layer1")
    panels = drawn["gaussian_heads_all"].axes
    assert len(panels) == 2
    for index, (ax, (centres, alpha)) in enumerate(zip(panels, heads, strict=True)):
        assert ax.get_title().startswith(f"layer {index}:")
        check_gaussian_panel(ax, centres, alpha)
        (single,) = drawn[f"gaussian_heads_layer{index}"].axes
        check_gaussian_panel(single, centres, alpha)

    drawn = figure_log.drawn(figures.plot_head_trajectories(quadratic_run, tmp_path, layer=1),
                             "head_trajectories_layer1")
    check_trajectories(drawn["head_trajectories_layer1"], quadratic_run, layer=1)

    query = (2, 3)
    drawn = figure_log.drawn(figures.plot_positional_attention(model, tmp_path, query=query),
                             "positional_attention")
    grid = model.config.grid_size
    expected = [quadratic_map(centres, alpha, grid, query) for centres, alpha in heads]
    assert not np.allclose(expected[0], expected[0].transpose(0, 2, 1), atol=1e-3)
    axes = drawn["positional_attention"].axes
    assert len(axes) == 2 * 4  # rows: layers, columns: heads
    for ax, maps in zip(axes, [m for layer in expected for m in layer], strict=True):
        np.testing.assert_allclose(image_data(ax), maps, rtol=1e-4, atol=1e-6)
        check_query_box(ax, *query)

    drawn = figure_log.drawn(figures.plot_training_curves([quadratic_run], tmp_path),
                             "training_curves")
    check_training_curves(drawn["training_curves"], quadratic_run)


def check_trajectories(fig: Figure, run: Path, layer: int) -> None:
    """One line per head through its centres of every epoch in heads.jsonl (that layer), an
    open circle at the start, a dot and the mass circles of the final widths at the end."""
    logged = sorted((json.loads(line) for line in (run / "heads.jsonl").read_text().splitlines()),
                    key=lambda r: r["epoch"])
    path = np.array([r["layers"][layer]["centers"] for r in logged])  # (epochs, heads, 2)
    other = np.array([r["layers"][1 - layer]["centers"] for r in logged])
    assert len(path) == 3 and not np.allclose(path, other)  # the other layer would show
    assert np.abs(path[-1] - path[0]).max() > 1e-5  # they moved: the line has a length
    (ax,) = fig.axes
    lines = [line for line in ax.get_lines() if line.get_marker() in ("None", "", None)]
    assert len(lines) == path.shape[1]
    for head, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), path[:, head, 1])
        np.testing.assert_array_equal(line.get_ydata(), path[:, head, 0])
    marks = [line for line in ax.get_lines() if line.get_marker() == "o"]
    starts = [m for m in marks if m.get_markerfacecolor() == "none"]
    ends = [m for m in marks if m.get_markerfacecolor() != "none"]
    for points, centres in ((starts, path[0]), (ends, path[-1])):
        xy = [(m.get_xdata()[0], m.get_ydata()[0]) for m in points]
        np.testing.assert_array_equal(xy, centres[:, ::-1])
    check_gaussian_panel(ax, path[-1], np.array(logged[-1]["layers"][layer]["alpha"]),
                         markers=False)


def check_training_curves(fig: Figure, run: Path) -> None:
    """Accuracy and loss panels: solid validation and dashed training lines = metrics.jsonl."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [m["epoch"] for m in metrics]
    assert epochs == [1, 2]
    test = json.loads((run / "results.json").read_text())["test_accuracy"]
    acc_ax, loss_ax = fig.axes
    for ax, key in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        val, train = ax.get_lines()
        assert (val.get_linestyle(), train.get_linestyle()) == ("-", "--")
        for line, split in ((val, "val"), (train, "train")):
            np.testing.assert_array_equal(line.get_xdata(), epochs)
            np.testing.assert_array_equal(line.get_ydata(), [m[f"{split}_{key}"] for m in metrics])
        assert f"test {test:.3f}" in val.get_label()
    assert [m["val_loss"] for m in metrics] != [m["train_loss"] for m in metrics]


def content_maps(model: nn.Module, inputs: list[torch.Tensor],
                 query: tuple[int, int]) -> list[np.ndarray]:
    """Attention of ``query`` in each layer, ``(N, heads, H, W)``, from the relative-encoding
    formula: ``softmax_kl((q . k_kl + q_row . r_row[k - i] + q_col . r_col[l - j]) / sqrt(d))``.
    """
    layers = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    maps = []
    with torch.no_grad():
        for layer, x in zip(layers, inputs, strict=True):
            enc = layer.encoding
            assert isinstance(enc, LearnedRelativeEncoding) and 2 * enc.dim == layer.qk_dim
            q, k = (t.double() for t in layer.queries_keys(x))  # (N, heads, H, W, d)
            height, width = k.shape[2:4]
            qv = q[:, :, query[0], query[1]]  # (N, heads, d)
            rows = enc.row_embeddings.double()[torch.arange(height) - query[0]
                                               + enc.max_height - 1]  # (H, dim)
            cols = enc.col_embeddings.double()[torch.arange(width) - query[1]
                                               + enc.max_width - 1]  # (W, dim)
            logits = (torch.einsum("nhd,nhkld->nhkl", qv, k)
                      + torch.einsum("nhd,kd->nhk", qv[..., :enc.dim], rows)[..., :, None]
                      + torch.einsum("nhd,ld->nhl", qv[..., enc.dim:], cols)[..., None, :])
            maps.append(softmax_map((logits / math.sqrt(layer.qk_dim)).numpy()))
    return maps


def check_content_figure(fig: Figure, background: np.ndarray, maps: list[np.ndarray],
                         query: tuple[int, int]) -> None:
    """Rows: layers; column 0 the image, column 1 + h the image under head h's map stretched
    over it; the query's token boxed in every panel."""
    heads = maps[0].shape[0]
    axes = fig.axes
    assert len(axes) == len(maps) * (heads + 1)
    height, width = background.shape
    for index, layer_maps in enumerate(maps):
        row = axes[index * (heads + 1):(index + 1) * (heads + 1)]
        cell = (height / layer_maps.shape[1], width / layer_maps.shape[2])
        for col, ax in enumerate(row):
            np.testing.assert_allclose(image_data(ax, 0), background, rtol=0, atol=1e-12)
            check_query_box(ax, query[0] * cell[0], query[1] * cell[1], size=cell)
            if col == 0:
                assert len(ax.get_images()) == 1
                continue
            np.testing.assert_allclose(image_data(ax, 1), layer_maps[col - 1], rtol=1e-4,
                                       atol=1e-6)
            assert ax.get_images()[1].get_extent() == pytest.approx(
                (-0.5, width - 0.5, height - 0.5, -0.5))


def learned_positional_map(layer: SelfAttention2d, grid: tuple[int, int],
                           query: tuple[int, int]) -> np.ndarray:
    """``softmax_kl(a_h . r_row[k - i] + b_h . r_col[l - j])``, ``(heads, H, W)``."""
    enc = layer.encoding
    assert isinstance(enc, LearnedRelativeEncoding) and not enc.query_dependent
    with torch.no_grad():
        rows = enc.row_embeddings.double()[torch.arange(grid[0]) - query[0] + enc.max_height - 1]
        cols = enc.col_embeddings.double()[torch.arange(grid[1]) - query[1] + enc.max_width - 1]
        row = enc.row_score.double() @ rows.T  # (heads, H)
        col = enc.col_score.double() @ cols.T  # (heads, W)
    return softmax_map((row[:, :, None] + col[:, None, :]).numpy())


def test_content_and_learned_figures(content_run: Path, tmp_path: Path, figure_log: FigureLog,
                                     layer_inputs: Any) -> None:
    model, meta = load_model(content_run)
    images, raw = figures.load_test_images(meta, 6)
    assert images.shape == raw.shape == (6, 1, 28, 28) and raw.dtype == torch.uint8
    query = (1, 2)
    paths = figures.plot_content_attention(model, images, tmp_path, query=query,
                                           image_index=3, display=raw, batch_size=4)
    drawn = figure_log.drawn(paths, "content_attention_image3", "content_attention_mean6")
    model.eval()
    maps = content_maps(model, layer_inputs(model, images), query)
    assert [m.shape for m in maps] == [(6, 4, 7, 7)] * 2
    assert not np.allclose(maps[0][3], maps[0][2], atol=1e-3)  # another image would show
    assert not np.allclose(maps[0][3], maps[0][3].transpose(0, 2, 1), atol=1e-3)
    shown = raw[:, 0].double().numpy() / 255.0
    check_content_figure(drawn["content_attention_image3"], shown[3],
                         [m[3] for m in maps], query)
    check_content_figure(drawn["content_attention_mean6"], shown.mean(axis=0),
                         [m.mean(axis=0) for m in maps], query)

    torch.manual_seed(0)
    learned = create_model("sa-learned", in_chans=1, image_size=16, hidden_size=16,
                           num_layers=2, heads=3, ffn_size=16)
    drawn = figure_log.drawn(figures.plot_positional_attention(learned, tmp_path, layer=1),
                             "positional_attention_layer1")
    grid = learned.config.grid_size
    centre = (grid[0] // 2, grid[1] // 2)
    layers = [m for m in learned.modules() if isinstance(m, SelfAttention2d)]
    expected = learned_positional_map(layers[1], grid, centre)
    assert not np.allclose(expected, learned_positional_map(layers[0], grid, centre), atol=1e-3)
    axes = drawn["positional_attention_layer1"].axes
    assert len(axes) == 3
    for ax, head_map in zip(axes, expected, strict=True):
        np.testing.assert_allclose(image_data(ax), head_map, rtol=1e-4, atol=1e-6)
        check_query_box(ax, *centre)
    with pytest.raises(ValueError, match="no positional-only"):
        figures.plot_positional_attention(model, tmp_path)
    with pytest.raises(ValueError, match="no quadratic"):
        figures.plot_gaussian_heads(model, tmp_path)


def test_converted_convolution_figures(tmp_path: Path, figure_log: FigureLog) -> None:
    """A converted 3x3 conv: one head per kernel offset, centred on it, exactly one-hot."""
    torch.manual_seed(0)
    module = conv_to_attention(nn.Conv2d(2, 3, 3, padding=1))
    wrapped = nn.Sequential(module)
    ((centres, alpha),) = quadratic_heads(wrapped)
    offsets = {(float(i), float(j)) for i in (-1, 0, 1) for j in (-1, 0, 1)}
    assert {tuple(c) for c in centres.tolist()} == offsets and len(centres) == 9
    drawn = figure_log.drawn(figures.plot_gaussian_heads(wrapped, tmp_path, layer=0,
                                                         grid=(8, 8)), "gaussian_heads_layer0")
    (ax,) = drawn["gaussian_heads_layer0"].axes
    check_gaussian_panel(ax, centres, alpha)
    drawn = figure_log.drawn(figures.plot_positional_attention(wrapped, tmp_path, grid=(8, 8)),
                             "positional_attention")
    axes = drawn["positional_attention"].axes
    assert len(axes) == 9
    for ax, (row, col) in zip(axes, centres, strict=True):
        one_hot = np.zeros((8, 8))
        one_hot[4 + int(row), 4 + int(col)] = 1.0  # the default query: the centre (4, 4)
        np.testing.assert_array_equal(image_data(ax), one_hot)
        check_query_box(ax, 4, 4)


def test_conversion_error_figure(tmp_path: Path, figure_log: FigureLog) -> None:
    rows = figures.conversion_error_curve([1.0, 10.0])
    assert rows[0]["max_rel_error"] > rows[1]["max_rel_error"] > rows[2]["max_rel_error"]
    drawn = figure_log.drawn(figures.plot_conversion_error(tmp_path, alphas=[1.0, 10.0]),
                             "conversion_error")
    (ax,) = drawn["conversion_error"].axes
    lines = ax.get_lines()
    assert len(lines) == 5  # per dtype a curve and the exact width's star; exp(-alpha)
    floor = ax.get_ylim()[0]
    for dtype, (curve, star) in zip((torch.float32, torch.float64),
                                    (lines[0:2], lines[2:4]), strict=True):
        # The seeded 3x3 conv and input of conversion_error_curve, converted here.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            conv = nn.Conv2d(3, 4, 3, padding=1).to(dtype)
        x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64).to(dtype)
        alphas = [1.0, 10.0, exact_alpha(dtype)]
        errors = []
        with torch.no_grad():
            reference = conv(x).double()
            for alpha in alphas:
                y = conv_to_attention(conv, alpha=alpha)(x).double()
                errors.append(((y - reference).abs().max() / reference.abs().max()).item())
        assert errors[0] > 0.1 > errors[1] > 0  # soft widths: Lemma 2's approximation
        np.testing.assert_array_equal(curve.get_xdata(), alphas[:2])
        np.testing.assert_allclose(curve.get_ydata(), errors[:2], rtol=1e-5)
        assert list(star.get_xdata()) == [alphas[2]]
        if errors[2] > 0:
            np.testing.assert_allclose(star.get_ydata(), errors[2:], rtol=1e-5)
        else:  # an exact zero sits on the floor of the log axis
            assert floor < star.get_ydata()[0] <= 1e-15
    lemma = lines[4]
    np.testing.assert_allclose(lemma.get_ydata(), np.exp(-np.asarray(lemma.get_xdata())))


def test_locality_command(quadratic_run: Path, content_run: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["locality", str(quadratic_run), "--out", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert "conv-like" in out and "per layer" in out
    report = json.loads((tmp_path / "q" / "locality.json").read_text())
    assert report["images"] == 0 and report["token_stride"] == 2 and len(report["rows"]) == 8
    with (tmp_path / "q" / "locality.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["alpha"] and rows[0]["encoding"] == "quadratic"

    ckpt = content_run / "checkpoints" / "best.safetensors"
    assert main(["locality", str(ckpt), "--images", "5", "--out", str(tmp_path / "c")]) == 0
    report = json.loads((tmp_path / "c" / "locality.json").read_text())
    assert report["images"] == 5 and report["rows"][0]["alpha"] is None


def test_figures_command(quadratic_run: Path, content_run: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "figs"
    assert main(["figures", str(quadratic_run), str(content_run), "--out", str(out),
                 "--layer", "0", "--images", "4", "--query", "3", "3", "--alpha-curve"]) == 0
    printed = capsys.readouterr().out
    for path in ["quadratic/gaussian_heads_layer0.png", "quadratic/head_trajectories_layer0.png",
                 "quadratic/positional_attention_layer0.png", "content/content_attention_mean4.png",
                 "training_curves.png", "conversion_error.png"]:
        assert (out / path).stat().st_size > 1000, path
        assert str(out / path) in printed
    assert main(["figures", str(quadratic_run), "--layer", "7", "--out", str(out)]) == 1
    assert "out of range" in capsys.readouterr().err
