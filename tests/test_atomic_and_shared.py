"""The shared helpers of issue #13: atomic writes, did-you-mean, as_pair, display layout,
the one conversion-error curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from attnconv.atomic import atomic_open, atomic_savefig, atomic_write_bytes, atomic_write_text


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_write_replaces_whole_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "out.json"
    atomic_write_text(path, "first\n")
    atomic_write_text(path, "second\n")
    assert path.read_text() == "second\n"
    atomic_write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert _leftovers(path.parent) == []


def test_failing_serialiser_keeps_previous_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, json.dumps({"old": 1}))

    def broken_dump(obj: object, fp: object, **kwargs: object) -> None:
        fp.write('{"new": ')  # type: ignore[attr-defined]  # half a document, then a failure
        raise RuntimeError("serialiser died mid-write")

    monkeypatch.setattr(json, "dump", broken_dump)
    with pytest.raises(RuntimeError, match="mid-write"), atomic_open(path) as f:
        json.dump({"new": 2}, f)
    assert json.loads(path.read_text()) == {"old": 1}
    assert _leftovers(tmp_path) == []


def test_failed_first_write_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "never.csv"
    with pytest.raises(KeyboardInterrupt), atomic_open(path, newline="") as f:
        f.write("a,b\n")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_open_rejects_append(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode must be"), atomic_open(tmp_path / "x", "a"):
        pass


def test_failed_savefig_keeps_previous_figure(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [0, 1])
    path = tmp_path / "plot.png"
    atomic_savefig(fig, path, dpi=20)
    before = path.read_bytes()
    assert before.startswith(b"\x89PNG")

    class Broken:
        def savefig(self, f: object, **kwargs: object) -> None:
            f.write(b"partial")  # type: ignore[attr-defined]
            raise OSError("no space left on device")

    with pytest.raises(OSError, match="no space"):
        atomic_savefig(Broken(), path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_figures_write_through_the_atomic_helper(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A figure whose rendering fails leaves the previous PNG and no temporary file."""
    from matplotlib.figure import Figure

    from attnconv.analysis import figures

    (tmp_path / "conversion_error.png").write_bytes(b"previous")

    def fail(self: Figure, *args: object, **kwargs: object) -> None:
        args[0].write(b"half a png")  # type: ignore[attr-defined]
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(RuntimeError, match="renderer failed"):
        figures.plot_conversion_error(tmp_path, alphas=[1.0])
    assert (tmp_path / "conversion_error.png").read_bytes() == b"previous"
    assert _leftovers(tmp_path) == []


def test_did_you_mean_is_shared() -> None:
    from attnconv.models import registry
    from attnconv.suggest import closest, did_you_mean

    assert registry.did_you_mean is did_you_mean
    assert did_you_mean("sa-quadratik", ["sa-quadratic", "resnet18"]) == \
        " (did you mean 'sa-quadratic'?)"
    assert did_you_mean("zzz", ["sa-quadratic"]) == ""
    assert closest("epochz", ["epochs", "seed"]) == "epochs"
    assert closest("q", ["epochs"]) is None


def test_as_pair() -> None:
    from attnconv.layers.grid import as_pair

    assert as_pair(5) == (5, 5)
    assert as_pair((3, 4)) == (3, 4)
    assert as_pair([np.int64(2), 7]) == (2, 7)
    assert all(type(v) is int for v in as_pair((np.int64(2), 7)))


def test_display_layout_channels() -> None:
    from attnconv.analysis.explorer.build import display_images
    from attnconv.analysis.record import display_layout

    rgb = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    assert torch.equal(display_layout(rgb), rgb.permute(0, 2, 3, 1))
    two = torch.tensor([[[[10]], [[13]]]], dtype=torch.uint8)  # (1, 2, 1, 1): mean 11.5
    assert display_layout(two).dtype == torch.float64
    assert float(display_layout(two)) == 11.5
    assert display_images(two).dtype == np.uint8
    assert int(display_images(two)[0, 0, 0, 0]) == 12  # round half to even of 11.5


def test_figure_curve_and_verify_curve_are_one_computation() -> None:
    from attnconv.analysis.figures import conversion_error_curve
    from attnconv.theorem import conversion_error, exact_alpha
    from attnconv.theorem.verify import CASES, alpha_error_curve

    rows = conversion_error_curve([0.5, 5.0], seed=3)
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    assert rows == alpha_error_curve(x, [0.5, 5.0], 3)
    # ... and that is the conversion error of the seeded 3x3 case, exact width last.
    direct = conversion_error(CASES[0].build(3, torch.float64), x,
                              [0.5, 5.0, exact_alpha(torch.float64)])
    assert rows == direct
    assert rows[0]["max_rel_error"] > rows[1]["max_rel_error"] > rows[2]["max_rel_error"]


def test_record_inputs_is_what_each_layer_receives(layer_inputs: object) -> None:
    """The one capture (used by the explorer) against independent pre-hooks (conftest)."""
    from attnconv.analysis.record import record_inputs
    from attnconv.models import create_model

    model = create_model("sa-learned-content", in_chans=1, image_size=8, hidden_size=8,
                         num_layers=2, heads=2, ffn_size=8, downsample=2, qk_dim=4).eval()
    images = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output, inputs = record_inputs(model, images)
        expected = model(images)
    independent = layer_inputs(model, images)  # type: ignore[operator]
    assert torch.equal(output, expected)
    assert len(inputs) == len(independent) == 2
    for got, want in zip(inputs, independent, strict=True):
        assert torch.equal(got, want)
    from attnconv.analysis.record import attention_layers

    assert all("forward" not in vars(layer) for _, layer in attention_layers(model))


def test_record_inputs_refuses_a_layer_called_twice() -> None:
    from torch import nn

    from attnconv.analysis.record import record_inputs
    from attnconv.layers import SelfAttention2d

    layer = SelfAttention2d(dim=4, heads=1, encoding="quadratic")
    twice = nn.Sequential(layer, layer)
    with pytest.raises(ValueError, match="ran 2 times in one forward pass; the explorer needs"):
        record_inputs(twice, torch.zeros(1, 3, 3, 4), "the explorer")
    assert "forward" not in vars(layer)  # the wrapper is gone after the error
