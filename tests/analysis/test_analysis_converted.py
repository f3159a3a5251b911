"""Theorem 1 on a whole trained-like CNN: no convolution left, identical predictions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from attnconv.analysis.converted import check_conversion, check_run, read_check, write_check
from attnconv.models import create_model


def test_resnet_converted_predicts_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", in_chans=1, image_size=8, num_classes=10, base_width=2)
    for m in model.modules():  # non-trivial batch-norm statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    model.eval()
    images, labels = torch.randn(12, 1, 8, 8), torch.randint(0, 10, (12,))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    converted, check = check_conversion(model, images, labels, batch_size=5)
    assert not any(isinstance(m, nn.Conv2d) for m in converted.modules())
    assert any(isinstance(m, nn.Conv2d) for m in model.modules())  # the original is untouched
    assert check.convolutions == len(convs) == 20
    assert check.heads == sum(m.kernel_size[0] * m.kernel_size[1] for m in convs)
    assert check.predictions_identical and check.mismatches == 0
    with torch.no_grad():
        expected = (model(images).argmax(1) == labels).double().mean().item()
    assert check.test_accuracy == check.cnn_accuracy == pytest.approx(expected)
    assert check.max_logit_diff < 1e-4 and check.images == 12 and check.dtype == "float32"
    write_check(tmp_path, check)
    assert read_check(tmp_path) == check.as_dict()
    assert read_check(tmp_path / "none") is None


def test_conversion_errors() -> None:
    x, y = torch.randn(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="no Conv1d/Conv2d"):
        check_conversion(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), x, y)
    net3d = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Unflatten(1, (1, 1)), nn.Conv3d(1, 1, 1))
    with pytest.raises(ValueError, match=r"left after the conversion: 2"):
        check_conversion(net3d, x, y)
    with pytest.raises(ValueError, match="as many labels"):
        check_conversion(nn.Conv2d(1, 2, 3), x, y[:1])


def test_check_run_on_a_trained_cnn(cnn_run: Path) -> None:
    check = check_run(cnn_run, images=10)
    assert check.images == 10 and check.predictions_identical
    assert check.test_accuracy == check.cnn_accuracy
    assert check.heads == 9 * 17 + 3  # 17 3x3 convs (stem + 16 in blocks), 3 1x1 shortcuts


def test_check_run_in_float64(cnn_run: Path) -> None:
    single, double = check_run(cnn_run, images=6), check_run(cnn_run, images=6,
                                                              dtype=torch.float64)
    assert double.dtype == "float64" and double.predictions_identical
    assert double.max_logit_diff < 1e-9 and single.dtype == "float32"
    assert double.cnn_accuracy == single.cnn_accuracy
