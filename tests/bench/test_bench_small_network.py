"""``attnconv bench``'s small-network row: the demo SA network against a same-size ResNet18."""

from __future__ import annotations

import pytest
import torch

from attnconv.bench import bench_small_network, evaluate_targets, format_result, tiny_config


def test_small_network_row_and_target() -> None:
    row = bench_small_network(tiny_config("cpu"), torch.device("cpu"), batch=2, iters=1)
    # the same parameter budget (the comparison is only fair that way)
    assert abs(row["sa_params"] - row["cnn_params"]) / row["cnn_params"] < 0.01
    assert row["sa_algorithm"] == "separable"
    for key in ("sa_train_images_s", "sa_mix_project_train_images_s", "cnn_train_images_s"):
        assert row[key] > 0, key
    ratio = row["sa_train_images_s"] / row["cnn_train_images_s"]
    assert row["sa_vs_cnn_train"] == pytest.approx(ratio, rel=1e-12)
    result = {"layers": [], "models": [], "small_network": [row]}
    [target] = [t for t in evaluate_targets(result) if "demo-size SA network" in t["target"]]
    assert target["value"] == row["sa_vs_cnn_train"]
    assert target["reached"] == (row["sa_vs_cnn_train"] >= 0.6)

    machine = {"cpu": "test", "cpu_count": 1, "threads": 1, "torch": "-", "device": "cpu"}
    printed = format_result({
        **result, "config": {"mode": "test"}, "machine": machine, "notes": [], "seconds": 0.0,
        "peak": {"fp32_gflops": 1.0, "fp32_size": 8, "bf16_gflops": 1.0, "bf16_size": 8},
        "targets": evaluate_targets(result)})
    assert "## Small network" in printed
    assert f"| sa-quadratic demo ({row['sa_params']}) | resnet18 width 4" in printed
