"""Figure functions write non-empty PNG + PDF files; the commands run end to end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from attnconv.analysis import figures
from attnconv.cli import main
from attnconv.models import create_model
from attnconv.theorem import conv_to_attention
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


def test_quadratic_figures(quadratic_run: Path, tmp_path: Path) -> None:
    model, _ = load_model(quadratic_run)
    check_files(figures.plot_gaussian_heads(model, tmp_path),
                "gaussian_heads_all", "gaussian_heads_layer0", "gaussian_heads_layer1")
    check_files(figures.plot_head_trajectories(quadratic_run, tmp_path, layer=1),
                "head_trajectories_layer1")
    check_files(figures.plot_positional_attention(model, tmp_path, query=(2, 3)),
                "positional_attention")
    check_files(figures.plot_training_curves([quadratic_run], tmp_path), "training_curves")


def test_content_and_learned_figures(content_run: Path, tmp_path: Path) -> None:
    model, meta = load_model(content_run)
    images, raw = figures.load_test_images(meta, 6)
    assert images.shape == raw.shape == (6, 1, 28, 28) and raw.dtype == torch.uint8
    paths = figures.plot_content_attention(model, images, tmp_path, query=(1, 2),
                                           image_index=3, display=raw, batch_size=4)
    check_files(paths, "content_attention_image3", "content_attention_mean6")
    torch.manual_seed(0)
    learned = create_model("sa-learned", in_chans=1, image_size=16, hidden_size=16,
                           num_layers=2, heads=3, ffn_size=16)
    check_files(figures.plot_positional_attention(learned, tmp_path, layer=1),
                "positional_attention_layer1")
    with pytest.raises(ValueError, match="no positional-only"):
        figures.plot_positional_attention(model, tmp_path)
    with pytest.raises(ValueError, match="no quadratic"):
        figures.plot_gaussian_heads(model, tmp_path)


def test_converted_convolution_figures(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = conv_to_attention(nn.Conv2d(2, 3, 3, padding=1))
    wrapped = nn.Sequential(module)
    check_files(figures.plot_gaussian_heads(wrapped, tmp_path, layer=0, grid=(8, 8)),
                "gaussian_heads_layer0")
    check_files(figures.plot_positional_attention(wrapped, tmp_path, grid=(8, 8)),
                "positional_attention")


def test_conversion_error_figure(tmp_path: Path) -> None:
    rows = figures.conversion_error_curve([1.0, 10.0])
    assert rows[0]["max_rel_error"] > rows[1]["max_rel_error"] > rows[2]["max_rel_error"]
    check_files(figures.plot_conversion_error(tmp_path, alphas=[1.0, 10.0]), "conversion_error")


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
