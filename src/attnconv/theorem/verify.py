"""Theorem 1 on a real photograph: the checks behind ``attnconv verify``.

Each :class:`VerifyCase` is a random conv (fixed seed) applied to a downscaled photograph shipped
with matplotlib (``grace_hopper.jpg``, nothing downloaded); its attention version from
:func:`~attnconv.theorem.conv_to_attention` must reproduce the output to the dtype's tolerance.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnconv.errors import DatasetError
from attnconv.theorem.conv_attention import (
    TOLERANCES,
    conv_to_attention,
    conversion_error,
    exact_alpha,
    max_errors,
)

SAMPLE_IMAGE = "grace_hopper.jpg"
# Widths for the error-vs-alpha curve (the exact width of the dtype is appended).
CURVE_ALPHAS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)


@dataclass(frozen=True)
class VerifyCase:
    """One configuration: ``nn.<conv_type>(3, **kwargs)``; Conv1d runs on the middle image row."""

    name: str
    conv_type: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int, dtype: torch.dtype) -> nn.Module:
        """The conv with random weights drawn from ``seed`` (the global RNG is left untouched)."""
        cls = nn.Conv1d if self.conv_type == "Conv1d" else nn.Conv2d
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            conv = cls(3, **self.kwargs)
        return conv.to(dtype).eval()

    def input(self, image: Tensor) -> Tensor:
        """``(1, 3, H, W)`` for Conv2d, the middle row ``(1, 3, W)`` for Conv1d."""
        batch = image.unsqueeze(0)
        return batch[:, :, image.shape[1] // 2] if self.conv_type == "Conv1d" else batch


CASES: tuple[VerifyCase, ...] = (
    VerifyCase("3x3, padding 1", "Conv2d", dict(out_channels=4, kernel_size=3, padding=1)),
    VerifyCase("5x5, padding 2", "Conv2d", dict(out_channels=4, kernel_size=5, padding=2)),
    VerifyCase("1x1", "Conv2d", dict(out_channels=4, kernel_size=1)),
    VerifyCase("3x3 stride 2", "Conv2d", dict(out_channels=4, kernel_size=3, stride=2, padding=1)),
    VerifyCase("2x2 stride 3 (> kernel)", "Conv2d", dict(out_channels=4, kernel_size=2, stride=3)),
    VerifyCase("3x3 dilation 2", "Conv2d",
               dict(out_channels=4, kernel_size=3, dilation=2, padding=2)),
    VerifyCase("3x3 depthwise (groups 3)", "Conv2d",
               dict(out_channels=3, kernel_size=3, padding=1, groups=3)),
    VerifyCase("3x3 groups 3, 3->6, no bias", "Conv2d",
               dict(out_channels=6, kernel_size=3, padding=1, groups=3, bias=False)),
    VerifyCase("2x2 even", "Conv2d", dict(out_channels=4, kernel_size=2)),
    VerifyCase("4x4 even, 'same'", "Conv2d", dict(out_channels=4, kernel_size=4, padding="same")),
    VerifyCase("1x5 non-square", "Conv2d",
               dict(out_channels=4, kernel_size=(1, 5), padding=(0, 2))),
    VerifyCase("3x1 stride (2,1)", "Conv2d",
               dict(out_channels=4, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0))),
    VerifyCase("4x3 stride (2,3) dilation (1,2)", "Conv2d",
               dict(out_channels=4, kernel_size=(4, 3), stride=(2, 3), dilation=(1, 2),
                    padding=(2, 1))),
    VerifyCase("3x3 reflect", "Conv2d",
               dict(out_channels=4, kernel_size=3, padding=1, padding_mode="reflect")),
    VerifyCase("3x3 replicate", "Conv2d",
               dict(out_channels=4, kernel_size=3, padding=1, padding_mode="replicate")),
    VerifyCase("3x3 circular", "Conv2d",
               dict(out_channels=4, kernel_size=3, padding=1, padding_mode="circular")),
    VerifyCase("3x3 'same'", "Conv2d", dict(out_channels=4, kernel_size=3, padding="same")),
    VerifyCase("3x3 'valid'", "Conv2d", dict(out_channels=4, kernel_size=3, padding="valid")),
    VerifyCase("4x4 'same' reflect", "Conv2d",
               dict(out_channels=4, kernel_size=4, padding="same", padding_mode="reflect")),
    VerifyCase("Conv1d k5 (image row)", "Conv1d", dict(out_channels=4, kernel_size=5, padding=2)),
    VerifyCase("Conv1d k4 stride 2 dil 2 circular", "Conv1d",
               dict(out_channels=4, kernel_size=4, stride=2, dilation=2, padding=3,
                    padding_mode="circular")),
    VerifyCase("Conv1d depthwise k3 'same' replicate", "Conv1d",
               dict(out_channels=3, kernel_size=3, groups=3, padding="same",
                    padding_mode="replicate")),
)


@dataclass(frozen=True)
class CaseResult:
    """The outcome of one :class:`VerifyCase`."""

    name: str
    heads: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """``max_rel_error <= tolerance`` (NaN fails)."""
        return bool(self.max_rel_error <= self.tolerance)

    def row(self) -> dict[str, Any]:
        """The row of the printed table."""
        return {"configuration": self.name, "heads": self.heads,
                "max abs error": f"{self.max_abs_error:.2e}",
                "max rel error": f"{self.max_rel_error:.2e}",
                "check": "PASS" if self.passed else "FAIL"}


def sample_image(size: int = 32, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """matplotlib's bundled photograph, centre-cropped, area-downscaled to ``(3, size, size)``.

    Normalised per channel to zero mean and unit standard deviation.
    """
    from matplotlib import cbook, image  # matplotlib ships the photograph

    try:
        path = Path(cbook.get_sample_data(SAMPLE_IMAGE, asfileobj=False))
    except (OSError, ValueError) as err:
        raise DatasetError(f"matplotlib's sample image {SAMPLE_IMAGE} is unavailable ({err}); "
                           f"reinstall matplotlib") from err
    if not path.is_file():
        raise DatasetError(f"matplotlib's sample image {path} is missing; reinstall matplotlib")
    pixels = np.asarray(image.imread(path))  # (H, W, 3) uint8
    x = torch.from_numpy(pixels[..., :3].copy()).permute(2, 0, 1).to(torch.float64) / 255.0
    side = min(x.shape[1:])
    top, left = (x.shape[1] - side) // 2, (x.shape[2] - side) // 2
    x = x[:, top:top + side, left:left + side]  # (3, side, side)
    x = F.interpolate(x.unsqueeze(0), size=(size, size), mode="area")[0]  # area averaging
    mean, std = x.mean(dim=(1, 2), keepdim=True), x.std(dim=(1, 2), keepdim=True)
    return ((x - mean) / std).to(dtype)  # (3, size, size)


@torch.no_grad()
def run_case(case: VerifyCase, image: Tensor, seed: int) -> tuple[CaseResult, Tensor, Tensor]:
    """Run one case on ``image``; return the result, the conv output and the attention output."""
    conv = case.build(seed, image.dtype)
    x = case.input(image)
    module = conv_to_attention(conv)
    with warnings.catch_warnings():  # PyTorch's note on 'same' with even kernels
        warnings.filterwarnings("ignore", message="Using padding='same'")
        y_conv = conv(x)
    y_att = module(x)
    abs_err, rel_err = max_errors(y_att, y_conv)
    result = CaseResult(case.name, module.heads, abs_err, rel_err, TOLERANCES[image.dtype])
    return result, y_conv, y_att


def alpha_error_curve(x: Tensor, alphas: Sequence[float], seed: int) -> list[dict[str, float]]:
    """Errors of the soft conversion of the 3x3 case for each width ``alpha`` (Lemma 2).

    The conv is ``CASES[0]`` (``Conv2d(3, 4, 3, padding=1)``) with weights from ``seed``, in
    ``x.dtype``; ``x`` is its input ``(N, 3, H, W)``. The exact width of the dtype comes last.
    One row per width, as :func:`~attnconv.theorem.conversion_error` returns them.
    """
    conv = CASES[0].build(seed, x.dtype)
    return conversion_error(conv, x, [*alphas, exact_alpha(x.dtype)])


def error_curve(image: Tensor, seed: int, crop: int = 24) -> list[dict[str, float]]:
    """:func:`alpha_error_curve` at :data:`CURVE_ALPHAS` on a centre crop of ``image``."""
    top = (image.shape[1] - crop) // 2
    left = (image.shape[2] - crop) // 2
    x = image[:, top:top + crop, left:left + crop].unsqueeze(0)
    return alpha_error_curve(x, CURVE_ALPHAS, seed)
