"""The demo's settings: a fair comparison as in the paper's Table 1, and its summary tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnconv.cli import main
from attnconv.commands.demo import (
    DEMO_RUNS,
    PAPER_MILESTONES,
    coverage_table,
    demo_config,
    demo_findings,
    scaled_milestones,
)
from attnconv.models import create_model


def test_demo_models_are_parameter_matched() -> None:
    counts = {}
    for run in DEMO_RUNS:
        cfg = demo_config(run, "runs/demo")
        model = create_model(cfg.model, in_chans=1, image_size=28, num_classes=10,
                             **cfg.model_args)  # the embedded Fashion-MNIST shape
        counts[run] = sum(p.numel() for p in model.parameters())
    low, high = min(counts.values()), max(counts.values())
    assert high <= 1.25 * low, counts


def test_demo_runs_share_data_budget_and_optimiser() -> None:
    cfgs = {run: demo_config(run, "out", epochs=12) for run in DEMO_RUNS}
    shared = {(c.dataset, c.epochs, c.batch_size, c.val_fraction, c.augment, c.seed, c.lr,
               c.momentum, c.weight_decay, c.train_subset) for c in cfgs.values()}
    assert shared == {("embedded", 12, 50, 0.1, True, 0, 0.2, 0.9, 1e-4, None)}
    sa, cnn = cfgs["sa-quadratic"], cfgs["cnn"]
    assert (sa.schedule, sa.warmup_fraction) == ("warmup-cosine", 0.2)
    assert (cnn.schedule, cnn.gamma, cnn.milestones) == ("multistep", 0.1, [3, 6, 10])
    assert demo_config("cnn", "out", train_subset=40).train_subset == 40
    shipped = demo_config("cnn", "out")  # the config file's own epochs and milestones agree
    assert shipped.milestones == scaled_milestones(shipped.epochs)
    assert demo_config("sa-quadratic", "out").epochs == shipped.epochs


@pytest.mark.parametrize("epochs", [1, 2, 8, 30, 300])
def test_scaled_milestones_keep_the_paper_fractions(epochs: int) -> None:
    got = scaled_milestones(epochs)
    assert got == sorted(got) and all(m >= 1 for m in got)
    for m, paper in zip(got, PAPER_MILESTONES, strict=True):
        assert abs(m - epochs * paper / 300) <= 0.5 or m == 1
    assert scaled_milestones(300) == list(PAPER_MILESTONES)


def test_coverage_table() -> None:
    rows = [{"layer": 0, "heads": 9, "end_epoch": 8,
             "init": {"neighbours_covered": 1, "distinct_centres": 9},
             "end": {"neighbours_covered": 6, "distinct_centres": 8}},
            {"layer": 1, "heads": 9, "end_epoch": 8, "init": None,
             "end": {"neighbours_covered": 0, "distinct_centres": 2}}]
    lines = coverage_table(rows)
    assert lines[2] == "| 1 | 9 | 1/8 | 6/8 | 9 | 8 |"
    assert lines[3] == "| 2 | 9 | - | 0/8 | - | 2 |"


def test_demo_findings_state_the_gap_and_the_coverage() -> None:
    results = [{"name": "sa-quadratic", "test_accuracy": 0.7100},
               {"name": "cnn", "test_accuracy": 0.8250}]
    coverage = [{"layer": 0, "heads": 9, "end_epoch": 8,
                 "init": {"neighbours_covered": 1, "distinct_centres": 9},
                 "end": {"neighbours_covered": 2, "distinct_centres": 8}},
                {"layer": 1, "heads": 9, "end_epoch": 8, "init": None,
                 "end": {"neighbours_covered": 5, "distinct_centres": 9}}]
    found = demo_findings(results, coverage)
    assert found["values"] == {"accuracy_gap_points": 11.5, "first_layer_coverage": [1, 2],
                               "best_end_coverage": 5}
    assert "sa-quadratic 0.7100 vs cnn 0.8250, a gap of 11.5 points" in found["lines"][0]
    assert "1/8 at init -> 2/8 at the end" in found["lines"][1]
    assert "covers 5/8" in found["lines"][1]
    assert demo_findings(results, [])["values"]["best_end_coverage"] is None


def test_demo_end_to_end_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--train-subset", "50", "--test-images", "10",
                 "--no-report", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    converted = summary["converted_cnn"]
    assert converted["predictions_identical"] and converted["images"] == 10
    assert converted["heads"] == 9 * 17 + 3  # ResNet18: 17 3x3 convs, 3 1x1 shortcuts
    assert converted["test_accuracy"] == converted["cnn_accuracy"]
    assert "| cnn -> attention (Theorem 1) |" in printed
    coverage = summary["grid_coverage"]
    assert [r["layer"] for r in coverage] == [0, 1]
    assert all(r["heads"] == 16 for r in coverage)
    assert summary["findings"]["first_layer_coverage"][0] == coverage[0]["init"][
        "neighbours_covered"]
    assert all(r["init"] is not None and r["end_epoch"] == 1 for r in coverage)
    assert (out / "cnn" / "theorem1.json").is_file() and not (out / "report.html").exists()
    assert main(["demo", "--out", str(out)]) == 1  # an earlier demo is never replaced silently
    assert "--overwrite" in capsys.readouterr().err
