"""Theorem 1 as code: conv -> attention (exact and soft), whole networks, attention -> conv, verify.

Relative error throughout: ``max|y_att - y_conv| / max(max|y_conv|, tiny)``
(:func:`attnconv.theorem.max_errors`); exact conversions must reach 1e-12 (float64) and 1e-5
(float32).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attnconv.cli import main
from attnconv.errors import ShapeError
from attnconv.layers import SelfAttention2d
from attnconv.layers import attention as attention_module
from attnconv.theorem import (
    TOLERANCES,
    ConvAttention,
    attention_to_conv,
    conv_to_attention,
    conversion_error,
    conversion_summary,
    convert_model,
    exact_alpha,
    max_errors,
    target_mass,
)

MODES = ("zeros", "reflect", "replicate", "circular")


def make_conv(cls: type[nn.Module], seed: int, dtype: torch.dtype = torch.float64,
              **kwargs: Any) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(**kwargs).to(dtype)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def attention_paths() -> list[Callable[[], AbstractContextManager[Any]]]:
    """The layer's default algorithm, plus its reference (HW)^2 computation where selectable."""
    force_reference = getattr(attention_module, "reference_attention", None)
    return [contextlib.nullcontext] + ([force_reference] if force_reference else [])


def assert_exact(conv: nn.Module, x: torch.Tensor) -> ConvAttention:
    module = conv_to_attention(conv)
    with torch.no_grad():
        y_conv = conv(x)
    for path in attention_paths():
        with path(), torch.no_grad():
            y_att = module(x)
        assert y_att.shape == y_conv.shape
        assert y_att.dtype == y_conv.dtype and y_att.device == y_conv.device
        abs_err, rel_err = max_errors(y_att, y_conv)
        assert rel_err <= TOLERANCES[x.dtype], (conv, tuple(x.shape), path, abs_err, rel_err)
    return module


# ---------------------------------------------------------------------------------------------
# conv -> attention, exact: property-based over configurations and input sizes
# ---------------------------------------------------------------------------------------------
def _min_size(footprint: int, before: int, after: int, mode: str) -> int:
    """Smallest input side the conv accepts (reflect/circular need padding < side)."""
    lo = max(1, footprint - before - after)
    return lo if mode in ("zeros", "replicate") else max(lo, before + 1, after + 1)


@st.composite
def conv_configs(draw: st.DrawFn, dims: int) -> tuple[nn.Module, torch.Tensor]:
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(dims))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(dims))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(dims))
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    mode = draw(st.sampled_from(MODES))
    kinds = ["int", "tuple", "valid"] + (["same"] if set(stride) == {1} else [])
    kind = draw(st.sampled_from(kinds))
    padding: Any
    if kind == "int":
        padding = draw(st.integers(0, 3))
        pads = [(padding, padding)] * dims
    elif kind == "tuple":
        padding = tuple(draw(st.integers(0, 3)) for _ in range(dims))
        pads = [(p, p) for p in padding]
    else:
        padding = kind
        totals = [d * (k - 1) if kind == "same" else 0 for d, k in zip(dilation, kernel,
                                                                       strict=True)]
        pads = [(t // 2, t - t // 2) for t in totals]
    sizes = []
    for k, d, (before, after) in zip(kernel, dilation, pads, strict=True):
        lo = _min_size(d * (k - 1) + 1, before, after, mode)
        sizes.append(draw(st.integers(lo, lo + 5)))
    cls = nn.Conv2d if dims == 2 else nn.Conv1d
    conv = make_conv(cls, draw(st.integers(0, 2**16)), in_channels=c_in, out_channels=c_out,
                     kernel_size=kernel, stride=stride, padding=padding, dilation=dilation,
                     groups=groups, bias=draw(st.booleans()), padding_mode=mode)
    x = randn(draw(st.integers(1, 2)), c_in, *sizes, seed=draw(st.integers(0, 2**16)))
    return conv, x


@settings(max_examples=60, deadline=None)
@given(conv_configs(2))
def test_conv2d_equals_attention_float64(case: tuple[nn.Module, torch.Tensor]) -> None:
    assert_exact(*case)


@settings(max_examples=40, deadline=None)
@given(conv_configs(1))
def test_conv1d_equals_attention_float64(case: tuple[nn.Module, torch.Tensor]) -> None:
    assert_exact(*case)


EDGE_CASES = [
    # (conv kwargs, input spatial size)
    (dict(kernel_size=1), (5, 6)),  # 1x1: one head
    (dict(kernel_size=5, padding=2), (2, 3)),  # kernel larger than the input
    (dict(kernel_size=(4, 5), padding=(3, 2), padding_mode="replicate"), (1, 2)),
    (dict(kernel_size=2, stride=4), (9, 10)),  # stride larger than the kernel
    (dict(kernel_size=3, padding="same", groups=4, out_channels=4), (6, 5)),  # depthwise
    (dict(kernel_size=4, padding="same", padding_mode="reflect"), (5, 7)),  # asymmetric split
    (dict(kernel_size=(2, 3), dilation=(3, 2), padding="same", padding_mode="circular"), (7, 6)),
    (dict(kernel_size=(4, 3), stride=(2, 3), padding=(1, 2), bias=False), (9, 11)),
    (dict(kernel_size=(1, 5), padding=(0, 2), padding_mode="reflect"), (3, 8)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("kwargs", "size"), EDGE_CASES)
def test_edge_cases_match_conv(kwargs: dict[str, Any], size: tuple[int, int],
                               dtype: torch.dtype) -> None:
    kwargs = {"in_channels": 4, "out_channels": 6, **kwargs}
    conv = make_conv(nn.Conv2d, 0, dtype, **kwargs)
    assert_exact(conv, randn(2, 4, *size, seed=1, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_conv1d_unbatched_and_grouped(dtype: torch.dtype) -> None:
    conv = make_conv(nn.Conv1d, 2, dtype, in_channels=6, out_channels=4, kernel_size=4,
                     stride=2, dilation=2, padding=3, groups=2, padding_mode="circular")
    assert_exact(conv, randn(2, 6, 13, seed=3, dtype=dtype))
    assert_exact(conv, randn(6, 13, seed=4, dtype=dtype))  # unbatched (C, L)
    conv2d = make_conv(nn.Conv2d, 5, dtype, in_channels=3, out_channels=2, kernel_size=3)
    assert_exact(conv2d, randn(3, 6, 5, seed=6, dtype=dtype))  # unbatched (C, H, W)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_cuda_matches_conv(dtype: torch.dtype) -> None:
    for kwargs, size in EDGE_CASES:
        conv = make_conv(nn.Conv2d, 0, dtype, **{"in_channels": 4, "out_channels": 6, **kwargs})
        x = randn(2, 4, *size, seed=1, dtype=dtype).cuda()
        module = assert_exact(conv.cuda(), x)
        assert module.attention.out.weight.is_cuda


def test_inside_is_a_genuine_self_attention_layer() -> None:
    conv = make_conv(nn.Conv2d, 0, in_channels=3, out_channels=5, kernel_size=(2, 3),
                     dilation=(1, 2), groups=1)
    module = conv_to_attention(conv)
    layer = module.attention
    assert isinstance(layer, SelfAttention2d)
    assert (layer.encoding_name, layer.content, layer.heads) == ("quadratic", False, 6)
    assert layer.value is None and layer.head_dim == layer.dim == 3  # identity values
    assert not any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in module.modules())
    g = layer.gaussian_parameters()
    # Head centres on the dilated kernel grid, minus the anchor (2-wide footprint rows: 0;
    # 5-wide columns: 2).
    expected = [(a, 2 * b - 2) for a in range(2) for b in range(3)]
    assert g.centers.tolist() == [list(map(float, c)) for c in expected]
    # W_out block h is the kernel tap of head h; b_out is the conv bias.
    blocks = layer.out.weight.view(5, 6, 3)
    for h, (a, b) in enumerate((a, b) for a in range(2) for b in range(3)):
        assert torch.equal(blocks[:, h], conv.weight[:, :, a, b])
    assert torch.equal(layer.out.bias, conv.bias)


def test_gradients_match_conv() -> None:
    conv = make_conv(nn.Conv2d, 0, in_channels=3, out_channels=4, kernel_size=3, stride=2,
                     padding=1, padding_mode="reflect")
    module = conv_to_attention(conv)
    x1 = randn(2, 3, 7, 6, seed=0).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    w = randn(2, 4, 4, 3, seed=1)
    (conv(x1) * w).sum().backward()
    (module(x2) * w).sum().backward()
    assert x1.grad is not None and x2.grad is not None
    assert max_errors(x2.grad, x1.grad)[1] <= 1e-12
    # dL/dW_Delta lands in the matching W_out block.
    grad_out = module.attention.out.weight.grad
    assert grad_out is not None and conv.weight.grad is not None
    assert max_errors(grad_out.view(4, 9, 3)[:, 4], conv.weight.grad[:, :, 1, 1])[1] <= 1e-12


def test_exact_alpha_underflows_every_off_target_weight() -> None:
    for dtype in (torch.float32, torch.float64):
        alpha = exact_alpha(dtype)
        assert torch.exp(torch.tensor(-alpha, dtype=dtype)).item() == 0.0
        assert torch.exp(torch.tensor(-alpha + 3.0, dtype=dtype)).item() > 0.0  # not overkill


# ---------------------------------------------------------------------------------------------
# Attention maps: every head one-hot on its kernel offset (Lemma 1)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_attention_maps_are_one_hot_on_kernel_offsets(dtype: torch.dtype) -> None:
    conv = make_conv(nn.Conv2d, 0, dtype, in_channels=2, out_channels=3, kernel_size=(3, 2),
                     stride=(2, 1), dilation=(2, 1), padding=(2, 1))
    x = randn(1, 2, 7, 6, seed=0, dtype=dtype)
    module = conv_to_attention(conv)
    for path in attention_paths():
        with path():
            check_one_hot_maps(module, x)


def check_one_hot_maps(module: ConvAttention, x: torch.Tensor) -> None:
    dtype = x.dtype
    y, attn = module(x, return_attention=True)
    hp, wp = 7 + 4, 6 + 2
    assert attn.shape == (1, 6, hp, wp, hp, wp)
    assert torch.equal(y, module(x))
    (ho, wo), (ar, ac) = y.shape[-2:], module.geometry.anchor
    taps = [(a, b) for a in range(3) for b in range(2)]
    for h, (a, b) in enumerate(taps):
        for pr in range(ho):  # every output position: border and interior queries
            for pc in range(wo):
                qr, qc = pr * 2 + ar, pc + ac
                target = torch.zeros(hp, wp, dtype=dtype)
                target[pr * 2 + 2 * a, pc + b] = 1.0  # the pixel the conv reads for tap (a, b)
                assert torch.equal(attn[0, h, qr, qc], target), (h, pr, pc)


def test_conv1d_attention_maps_over_a_one_row_grid() -> None:
    conv = make_conv(nn.Conv1d, 0, in_channels=2, out_channels=2, kernel_size=3, padding=1)
    _, attn = conv_to_attention(conv)(randn(1, 2, 5, seed=0), return_attention=True)
    assert attn.shape == (1, 3, 1, 7, 1, 7)
    for h in range(3):
        for p in range(5):  # query p + anchor 1 attends to p + h on the padded row
            assert attn[0, h, 0, p + 1, 0, p + h].item() == 1.0


# ---------------------------------------------------------------------------------------------
# Soft version: the error shrinks as alpha grows, within the snapping bound
# ---------------------------------------------------------------------------------------------
def test_error_shrinks_with_alpha_and_respects_the_bound() -> None:
    conv = make_conv(nn.Conv2d, 3, in_channels=3, out_channels=4, kernel_size=3, padding=1,
                     dilation=(1, 2), padding_mode="replicate")
    x = randn(2, 3, 8, 9, seed=4)
    alphas = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0, None]
    rows = conversion_error(conv, x, alphas)
    assert [r["alpha"] for r in rows[:-1]] == alphas[:-1]
    assert rows[-1]["alpha"] == exact_alpha(torch.float64)
    errors = [r["max_rel_error"] for r in rows]
    assert all(a > b for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.1 and errors[-1] <= 1e-12
    for row in rows[:-1]:
        module = conv_to_attention(conv, alpha=row["alpha"])
        _, report = attention_to_conv(module)
        assert row["max_abs_error"] <= report.bound(x.abs().max().item()) * (1 + 1e-9)


def test_invalid_alpha_and_inputs_raise() -> None:
    conv = make_conv(nn.Conv2d, 0, in_channels=3, out_channels=4, kernel_size=3)
    for alpha in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="alpha"):
            conv_to_attention(conv, alpha=alpha)
    module = conv_to_attention(conv)
    with pytest.raises(ShapeError, match="3 input channels"):
        module(torch.zeros(1, 4, 5, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match="smaller than the"):
        module(torch.zeros(1, 3, 2, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        module(torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize("layer", [nn.ConvTranspose2d(2, 2, 3), nn.Conv3d(2, 2, 3),
                                   nn.ConvTranspose1d(2, 2, 3), nn.Linear(2, 2)],
                         ids=["ConvTranspose2d", "Conv3d", "ConvTranspose1d", "Linear"])
def test_unsupported_layers_raise_not_implemented(layer: nn.Module) -> None:
    with pytest.raises(NotImplementedError, match=type(layer).__name__) as info:
        conv_to_attention(layer)
    assert "Conv2d" in str(info.value) and "Conv1d" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Whole networks
# ---------------------------------------------------------------------------------------------
def test_resnet18_converted_has_identical_logits(caplog: pytest.LogCaptureFixture) -> None:
    from attnconv.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18").eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    with caplog.at_level(logging.INFO, logger="attnconv.theorem"):
        converted = convert_model(model)
    assert converted is not model
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())  # original untouched
    assert not any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in converted.modules())
    rows = conversion_summary(converted)
    assert len(rows) == 20  # stem + 16 block convs + 3 projection shortcuts
    assert sum(r["heads"] == 9 for r in rows) == 17 and sum(r["heads"] == 1 for r in rows) == 3
    by_name = {r["module"]: r for r in rows}
    assert len(by_name) == 20
    assert {r["stride"] for r in rows} == {(1, 1), (2, 2)}
    assert max(r["out_channels"] for r in rows) == 512
    assert "converted 20 convolution(s)" in caplog.text
    assert all(name in caplog.text for name in by_name)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref, out = model(x), converted(x)
    assert (out - ref).abs().max().item() <= 1e-4
    assert max_errors(out, ref)[1] <= 1e-5  # random-init logits are small: check relative too
    assert torch.equal(out.argmax(dim=1), ref.argmax(dim=1))


def test_convert_model_inplace_shared_and_left_alone(caplog: pytest.LogCaptureFixture) -> None:
    shared = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared, nn.ConvTranspose2d(2, 2, 2)),
                          nn.Conv1d(2, 2, 1))
    with caplog.at_level(logging.INFO, logger="attnconv.theorem"):
        out = convert_model(model, inplace=True, alpha=50.0)
    assert out is model
    assert isinstance(model[0], ConvAttention) and model[0] is model[2][0]
    assert isinstance(model[2][1], nn.ConvTranspose2d)
    assert "2.1 (ConvTranspose2d)" in caplog.text
    assert [r["module"] for r in conversion_summary(model)] == ["0", "3"]
    assert conversion_summary(model)[0]["alpha"] == pytest.approx(50.0)
    assert isinstance(convert_model(nn.Conv1d(2, 2, 1)), ConvAttention)


# ---------------------------------------------------------------------------------------------
# attention -> conv
# ---------------------------------------------------------------------------------------------
ROUND_TRIP = [
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=3, padding=1)),
    (nn.Conv2d, dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=(2, 1),
                     dilation=(2, 1), padding="valid", groups=2, padding_mode="reflect")),
    (nn.Conv2d, dict(in_channels=4, out_channels=4, kernel_size=4, padding="same", groups=4,
                     bias=False, padding_mode="circular")),
    (nn.Conv2d, dict(in_channels=3, out_channels=2, kernel_size=(1, 5), stride=3,
                     padding=(0, 2), padding_mode="replicate")),
    (nn.Conv1d, dict(in_channels=4, out_channels=6, kernel_size=5, stride=2, padding=2,
                     padding_mode="reflect", bias=False)),
    (nn.Conv1d, dict(in_channels=2, out_channels=4, kernel_size=2, dilation=3, groups=2)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("cls", "kwargs"), ROUND_TRIP)
def test_round_trip_returns_the_original_conv(cls: type[nn.Module], kwargs: dict[str, Any],
                                              dtype: torch.dtype) -> None:
    conv = make_conv(cls, 7, dtype, **kwargs)
    back, report = attention_to_conv(conv_to_attention(conv))
    assert type(back) is type(conv)
    assert torch.equal(back.weight, conv.weight) and back.weight.dtype == dtype
    assert (back.bias is None) == (conv.bias is None)
    if conv.bias is not None:
        assert torch.equal(back.bias, conv.bias)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode"):
        assert getattr(back, attr) == getattr(conv, attr), attr
    # Off-target mass below the dtype's smallest normal number: one-hot to the dtype's precision.
    assert all(h.mass == 1.0 and h.off_mass < torch.finfo(dtype).tiny for h in report.heads)
    assert report.bound(1.0) < 1e-30 and report.margin == (0, 0, 0, 0)


def test_converted_module_with_moved_head_refuses_round_trip() -> None:
    module = conv_to_attention(nn.Conv2d(2, 2, 3, dilation=2, padding=2))
    g = module.attention.gaussian_parameters()
    centers = g.centers.clone()
    centers[0] = torch.tensor([-1.0, 0.0])  # between two dilated taps
    module.attention.encoding.set_gaussian_parameters(centers, g.alpha)
    with pytest.raises(ValueError, match="not a tap"):
        attention_to_conv(module)
    conv, _ = attention_to_conv(module.attention)  # the stride-1 conv on the padded grid
    assert conv.kernel_size == (5, 5)


@pytest.mark.parametrize("value_proj", [False, True], ids=["identity-values", "value-proj"])
def test_snapped_conv_of_trained_like_layer_is_within_the_bound(value_proj: bool) -> None:
    torch.manual_seed(11)
    layer = SelfAttention2d(4, 6, out_dim=3, value_proj=value_proj,
                            head_dim=None if not value_proj else 5).double()
    centers = torch.tensor([[0.3, -1.2], [-1.6, 0.9], [0.1, 0.2], [-0.2, -0.4], [2.4, 1.0],
                            [0.0, 2.7]], dtype=torch.float64)  # heads 2 and 3 share (0, 0)
    layer.encoding.set_gaussian_parameters(centers, torch.linspace(0.4, 3.0, 6))
    conv, report = attention_to_conv(layer)
    assert conv.kernel_size == (5, 7) and conv.padding == (2, 3) and conv.stride == (1, 1)
    assert [h.offset for h in report.heads] == [(0, -1), (-2, 1), (0, 0), (0, 0), (2, 1), (0, 3)]
    assert any("heads [2, 3]" in note for note in report.notes)
    assert report.margin == (2, 2, 1, 3)
    x = randn(2, 4, 12, 13, seed=0)
    with torch.no_grad():
        y_att = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y_conv = conv(x)
    t, b, l, r = report.margin
    diff = (y_att - y_conv)[..., t:12 - b, l:13 - r].abs().max().item()
    bound = report.bound(x.abs().max().item())
    assert 0.0 < diff <= bound
    # With the centres on integers and a large alpha the attention is the conv (interior).
    layer.encoding.set_gaussian_parameters(torch.round(centers), 800.0)
    conv, report = attention_to_conv(layer)
    assert report.bound_factor == 0.0
    with torch.no_grad():
        y_att = layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert max_errors(y_att[..., t:12 - b, l:13 - r], conv(x)[..., t:12 - b, l:13 - r])[1] <= 1e-12


def test_target_mass_equals_softmax_of_an_interior_query() -> None:
    layer = SelfAttention2d(1, 3).double()
    centers = torch.tensor([[0.4, -1.3], [2.0, 0.0], [-0.5, 0.7]], dtype=torch.float64)
    alphas = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    layer.encoding.set_gaussian_parameters(centers, alphas)
    attn = layer.attention(torch.zeros(1, 41, 41, 1, dtype=torch.float64))  # query (20, 20)
    for h in range(3):
        offset = (round(centers[h, 0].item()), round(centers[h, 1].item()))
        mass, off = target_mass(tuple(centers[h].tolist()), alphas[h].item(), offset)
        assert mass + off == pytest.approx(1.0, abs=1e-15)
        expected = attn[0, h, 20, 20, 20 + offset[0], 20 + offset[1]].item()
        assert mass == pytest.approx(expected, rel=1e-12)


def test_attention_to_conv_rejects_other_layers() -> None:
    with pytest.raises(NotImplementedError, match="quadratic"):
        attention_to_conv(SelfAttention2d(4, 2, encoding="learned", max_size=4))
    with pytest.raises(NotImplementedError, match="content"):
        attention_to_conv(SelfAttention2d(4, 2, content=True))
    with pytest.raises(NotImplementedError, match="Conv2d"):
        attention_to_conv(nn.Conv2d(2, 2, 3))


# ---------------------------------------------------------------------------------------------
# attnconv verify
# ---------------------------------------------------------------------------------------------
def printed_verify_table(out: str) -> list[list[str]]:
    """The rows of the table ``attnconv verify`` prints, split into columns."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("configuration"))
    rows = []
    for line in lines[start + 2:]:  # after the header and its dashes
        if not line.strip():
            break
        rows.append(re.split(r"\s{2,}", line.strip()))
    return rows


def record_saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every matplotlib Figure saved from now on, in order (the figure before it is closed)."""
    from matplotlib.figure import Figure

    saved: list[Any] = []
    savefig = Figure.savefig

    def recording(self: Figure, *args: Any, **kwargs: Any) -> Any:
        saved.append(self)
        return savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


def test_verify_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    figures = record_saved_figures(monkeypatch)
    assert main(["verify", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "22/22 PASS" in out
    for name in ("depthwise", "dilation", "stride", "reflect", "replicate", "circular",
                 "'same'", "'valid'", "2x2", "1x5", "Conv1d"):
        assert name in out, name
    png = tmp_path / "verify.png"
    assert png.is_file() and png.stat().st_size > 10_000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = json.loads((tmp_path / "verify.json").read_text())
    check_verify_report(report, out)
    assert len(figures) == 1
    check_verify_figure(figures[0], report)


def check_verify_report(report: dict[str, Any], out: str) -> None:
    """verify.json holds the printed cases, each below the tolerance the command states, and
    the printed error-vs-alpha curve, decreasing to the exact width's error."""
    stated = re.search(r"pass if max rel error <= (\S+)", out)
    assert stated is not None
    tolerance = float(stated.group(1))
    assert report["tolerance"] == tolerance == TOLERANCES[torch.float64]
    assert (report["dtype"], report["seed"], report["size"]) == ("float64", 0, 32)
    assert report["alpha"] == exact_alpha(torch.float64)
    table = printed_verify_table(out)
    assert len(table) == len(report["cases"]) == 22
    for row, case in zip(table, report["cases"], strict=True):
        assert row[0] == case["configuration"]
        assert int(row[1]) == case["heads"] > 0
        assert 0.0 <= case["max_rel_error"] <= tolerance, case
        assert row[2:] == [f"{case['max abs error']}", f"{case['max rel error']}", "PASS"]
        assert case["max rel error"] == f"{case['max_rel_error']:.2e}"
    curve = report["alpha_curve"]
    printed_curve = out.split("error vs alpha")[1].splitlines()[0]
    assert printed_curve.endswith(", ".join(f"{r['alpha']:.3g}: {r['max_rel_error']:.1e}"
                                            for r in curve))
    assert curve[-1]["alpha"] == report["alpha"]
    assert curve[0]["max_rel_error"] > 0.1 and curve[-1]["max_rel_error"] <= tolerance
    errors = [r["max_rel_error"] for r in curve]
    assert all(a >= b for a, b in itertools.pairwise(errors[:6]))  # the soft widths: Lemma 2


def check_verify_figure(fig: Any, report: dict[str, Any]) -> None:
    """verify.png: the 3x3 conv of seed 0 (recomputed here) on the photograph, its attention
    version within the tolerance, their difference, and verify.json's error-vs-alpha curve."""
    from attnconv.theorem.verify import sample_image

    tolerance, curve = report["tolerance"], report["alpha_curve"]
    image_ax, conv_ax, att_ax, diff_ax, curve_ax = fig.axes[:5]  # then the colour bars
    image = sample_image(32)
    conv = make_conv(nn.Conv2d, 0, in_channels=3, out_channels=4, kernel_size=3, padding=1)
    with torch.no_grad():
        y_conv = conv(image.unsqueeze(0))[0, 0].numpy()
    shown = image.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(image_ax.images[0].get_array(),
                               (shown - shown.min()) / (shown.max() - shown.min()), atol=1e-12)
    np.testing.assert_allclose(conv_ax.images[0].get_array(), y_conv, rtol=1e-12, atol=1e-12)
    y_att = np.asarray(att_ax.images[0].get_array())
    assert np.abs(y_att - y_conv).max() <= tolerance * np.abs(y_conv).max()
    diff = np.asarray(diff_ax.images[0].get_array())
    np.testing.assert_allclose(diff, np.abs(y_att - conv_ax.images[0].get_array()), atol=0)
    assert diff.max() <= report["cases"][0]["max_abs_error"]
    line, threshold = curve_ax.get_lines()[:2]
    np.testing.assert_array_equal(line.get_xdata(), [r["alpha"] for r in curve])
    tiny = torch.finfo(torch.float64).tiny  # exact zeros sit at the smallest normal number
    np.testing.assert_array_equal(line.get_ydata(),
                                  [max(r["max_rel_error"], tiny) for r in curve])
    assert list(threshold.get_ydata()) == [tolerance, tolerance]


def test_verify_exit_code_is_nonzero_on_failure(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import attnconv.commands.verify as command
    import attnconv.theorem.verify as checks

    monkeypatch.setattr(command, "CASES", checks.CASES[:2])
    monkeypatch.setattr(checks, "TOLERANCES", {torch.float32: -1.0, torch.float64: -1.0})
    assert main(["verify", "--out", str(tmp_path), "--size", "12"]) == 1
