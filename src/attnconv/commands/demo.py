"""The paper in miniature, offline on a laptop CPU: train a small quadratic self-attention
network and a parameter-matched CNN on the embedded Fashion-MNIST subset, evaluate both on its
test split, print a table, show how the Gaussian heads moved away from the query pixel and how
many of the 3x3 grid's offsets they cover, then convert the trained CNN to self-attention
(Theorem 1) and check that it classifies every test image the same way.

The demo's settings have one source: the configs shipped as ``demo-sa-quadratic`` and
``demo-cnn`` (``src/attnconv/configs/cpu/demo-*.yaml``, also trainable alone with
``attnconv train --config demo-cnn``); this command sets only the run name, the output folder,
and ``--epochs`` / ``--train-subset``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from attnconv.atomic import atomic_write_text

NAME = "demo"
HELP = ("train a small SA-quadratic net and a parameter-matched CNN on the embedded data, then "
        "convert the CNN to attention (Theorem 1)")

#: The paper's ResNet18 schedule: lr divided by 10 at these epochs of 300 (PAPER section 3).
PAPER_MILESTONES = (80, 150, 250)
PAPER_EPOCHS = 300

#: The demo's two runs (Table 1 in miniature), in training order; run ``R`` is the shipped config
#: ``demo-R`` (why each setting: the comments there and docs/demo-tuning.md).
DEMO_RUNS: tuple[str, ...] = ("sa-quadratic", "cnn")


def scaled_milestones(epochs: int) -> list[int]:
    """The paper's ResNet milestones (80, 150, 250 of 300 epochs) scaled to ``epochs``.

    Each is rounded to the nearest epoch and at least 1 (the first epoch always runs at the
    base rate); a milestone at or past ``epochs`` never applies.
    """
    return [max(1, round(epochs * m / PAPER_EPOCHS)) for m in PAPER_MILESTONES]


def demo_config(run: str, out_dir: str | Path, epochs: int | None = None,
                train_subset: int | None = None) -> Any:
    """The :class:`~attnconv.train.TrainConfig` of one demo run: the shipped ``demo-<run>``.

    Always the packaged file (a file named ``demo-cnn`` in the working directory does not
    shadow it); ``epochs`` rescales the CNN's milestones as the paper's fractions.
    """
    from attnconv.errors import ConfigError
    from attnconv.train.config import config_from_dict, read_yaml_mapping, shipped_configs

    if run not in DEMO_RUNS:
        raise ConfigError(f"unknown demo run {run!r}; the demo runs are {', '.join(DEMO_RUNS)}")
    data = read_yaml_mapping(shipped_configs()[f"demo-{run}"].resource)
    data.update(name=run, out_dir=str(out_dir))
    if epochs is not None:
        data["epochs"] = epochs
    if train_subset is not None:
        data["train_subset"] = train_subset
    if data.get("schedule") == "multistep":
        data["milestones"] = scaled_milestones(data["epochs"])
    return config_from_dict(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output directory, length, and switches for a quick check."""
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per model (default: the epochs of the demo configs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo in --out (otherwise it is an error)")
    parser.add_argument("--train-subset", type=int, default=None, metavar="N",
                        help="train on the first N training images only (a quick check; "
                             "default: all 9,000)")
    parser.add_argument("--test-images", type=int, default=None, metavar="N",
                        help="check Theorem 1 on the first N test images (default: all 2,000)")
    parser.add_argument("--no-report", action="store_true",
                        help="skip report.html and explorer.html (a quick check)")


def head_movement(run_dir: Path) -> list[dict[str, float]]:
    """Per layer: mean distance of the head centres from the query pixel, first and last epoch."""
    rows = [json.loads(line) for line in (run_dir / "heads.jsonl").read_text().splitlines()]
    first, last = rows[0]["layers"], rows[-1]["layers"]
    out = []
    for i, (a, b) in enumerate(zip(first, last, strict=True)):
        dist = [math.hypot(*c) for c in b["centers"]]
        moved = [math.hypot(cb[0] - ca[0], cb[1] - ca[1])
                 for ca, cb in zip(a["centers"], b["centers"], strict=True)]
        out.append({"layer": i + 1, "mean_distance_start": sum(math.hypot(*c) for c in
                                                               a["centers"]) / len(dist),
                    "mean_distance_end": sum(dist) / len(dist),
                    "mean_moved": sum(moved) / len(moved),
                    "mean_alpha_end": sum(b["alpha"]) / len(b["alpha"])})
    return out


def coverage_table(coverage: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the grid coverage at initialisation and at the end, per layer."""
    def cells(c: dict[str, Any] | None) -> tuple[str, str]:
        return ("-", "-") if c is None else (f"{c['neighbours_covered']}/8",
                                             f"{c['distinct_centres']}")

    lines = ["| layer | heads | 3x3 neighbours covered, init | end | distinct centres, init "
             "| end |", "|---:|---:|---:|---:|---:|---:|"]
    for row in coverage:
        (cov0, dis0), (cov1, dis1) = cells(row["init"]), cells(row["end"])
        lines.append(f"| {row['layer'] + 1} | {row['heads']} | {cov0} | {cov1} | {dis0} | "
                     f"{dis1} |")
    return lines


def demo_findings(results: list[dict[str, Any]],
                  coverage: list[dict[str, Any]]) -> dict[str, Any]:
    """The demo's two findings in plain words: the accuracy gap and the grid coverage.

    ``results`` are the train results (``name``, ``test_accuracy``) and ``coverage`` the rows of
    :func:`~attnconv.analysis.metrics.coverage_over_training`. Returns ``values`` (for
    demo.json: ``accuracy_gap_points`` = CNN minus SA in percentage points,
    ``first_layer_coverage`` = [init, end] neighbours covered, ``best_end_coverage`` = the most
    neighbours any layer covers at the end) and ``lines`` (the sentences printed).
    """
    acc = {r["name"]: r["test_accuracy"] for r in results}
    gap = round(100 * (acc["cnn"] - acc["sa-quadratic"]), 2)
    first = coverage[0] if coverage else None
    first_pair = None if first is None else [
        None if first["init"] is None else first["init"]["neighbours_covered"],
        first["end"]["neighbours_covered"]]
    best = max((r["end"]["neighbours_covered"] for r in coverage), default=None)
    lines = [f"Accuracy: sa-quadratic {acc['sa-quadratic']:.4f} vs cnn {acc['cnn']:.4f}, a gap of "
             f"{gap:.1f} points (the paper, 300 epochs of CIFAR-10 at 12M parameters: 93.8 % "
             f"for both)."]
    if first_pair is not None:
        start = "-" if first_pair[0] is None else f"{first_pair[0]}/8"
        lines.append(f"Grid coverage of the first layer: {start} at init -> {first_pair[1]}/8 at "
                     f"the end; the best layer at the end covers {best}/8 neighbours of the 3x3 "
                     f"window.")
    return {"values": {"accuracy_gap_points": gap, "first_layer_coverage": first_pair,
                       "best_end_coverage": best}, "lines": lines}


def _prepare_out(args: argparse.Namespace) -> Path:
    """Check the arguments and clear an earlier demo from ``--out`` (with ``--overwrite``)."""
    import shutil

    from attnconv.errors import ConfigError

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"{out} already holds a demo; pass --overwrite to replace it or "
                              f"--out DIR for another directory")
        for run_name in DEMO_RUNS:
            shutil.rmtree(out / run_name, ignore_errors=True)
    if args.test_images is not None and args.test_images < 1:
        raise ConfigError(f"--test-images must be >= 1, got {args.test_images}")
    return out


def _train_runs(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    """Train the demo runs in order; each result gains its ``wall_time_s``."""
    from attnconv.train import train

    results = []
    for run_name in DEMO_RUNS:
        cfg = demo_config(run_name, out, args.epochs, args.train_subset)
        print(f"== training {run_name} ({cfg.model}, {cfg.epochs} epochs on the embedded "
              f"Fashion-MNIST subset) ==", flush=True)
        t0 = time.perf_counter()
        result = train(cfg)
        result["wall_time_s"] = time.perf_counter() - t0
        results.append(result)
    return results


def _check_theorem1(args: argparse.Namespace, out: Path) -> Any:
    """Theorem 1 on the trained CNN: every convolution becomes attention, same predictions.

    A float32 mismatch (a near-tie flipped by rounding) is checked again in float64; the check
    is written next to the CNN run and returned.
    """
    import torch

    from attnconv.analysis.converted import ROW_LABEL, check_run, write_check

    print(f"\n== {ROW_LABEL}: converting the trained CNN and evaluating it ==", flush=True)
    check = check_run(out / "cnn", images=args.test_images)
    if not check.predictions_identical:  # a near-tie flipped by float32 rounding: look closer
        print(f"{check.mismatches} prediction(s) differ in float32 (largest logit difference "
              f"{check.max_logit_diff:.1e}); checking again in float64", flush=True)
        check = check_run(out / "cnn", images=args.test_images, dtype=torch.float64)
    write_check(out / "cnn", check)
    return check


def _print_comparison(results: list[dict[str, Any]], check: Any) -> None:
    """The table of both runs and the converted CNN, then Theorem 1's verdict."""
    from attnconv.analysis.converted import ROW_LABEL

    print()
    print("| run | model | params | test accuracy | train time (s) |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['model']} | {r['params']:,} | {r['test_accuracy']:.4f} | "
              f"{r['train_time_s']:.0f} |")
    print(f"| {ROW_LABEL} | resnet18, {check.heads} attention heads, no conv | "
          f"{check.params:,} | {check.test_accuracy:.4f} | - |")
    same = "every" if check.predictions_identical else f"NOT every ({check.mismatches} differ)"
    print(f"\nTheorem 1: the converted CNN predicts {same} one of the {check.images} test images "
          f"as the CNN (accuracy {check.test_accuracy:.4f} vs {check.cnn_accuracy:.4f}; largest "
          f"logit difference {check.max_logit_diff:.1e}, smallest top-2 logit margin of the CNN "
          f"{check.min_margin:.1e}); evaluation {check.cnn_time_s:.1f} s as a CNN, "
          f"{check.attention_time_s:.1f} s as attention ({check.dtype}).")


def _print_heads(out: Path) -> tuple[list[dict[str, float]], list[dict[str, Any]]]:
    """How the Gaussian heads of sa-quadratic moved, and their grid coverage; returns both."""
    from attnconv.analysis.metrics import COVER_RADIUS, coverage_over_training

    movement = head_movement(out / "sa-quadratic")
    heads = demo_config("sa-quadratic", out).model_args["heads"]
    print()
    print(f"Gaussian heads of sa-quadratic (mean over {heads} heads; distance of the centre from "
          f"the query pixel, in tokens):")
    print("| layer | distance at init | distance at end | moved | alpha at end |")
    print("|---:|---:|---:|---:|---:|")
    for m in movement:
        print(f"| {m['layer']} | {m['mean_distance_start']:.2f} | {m['mean_distance_end']:.2f} | "
              f"{m['mean_moved']:.2f} | {m['mean_alpha_end']:.2f} |")
    coverage = coverage_over_training(out / "sa-quadratic")
    print(f"\nGrid coverage (a 3x3 neighbour is covered by a head centre closer than "
          f"{COVER_RADIUS} token; centres closer than that count as one):")
    print("\n".join(coverage_table(coverage)))
    return movement, coverage


def _write_demo_report(out: Path) -> None:
    """What attention learned: one report of both runs, and the explorer of the SA model."""
    from attnconv.analysis.report import write_report

    t0 = time.perf_counter()
    report = write_report([out / name for name in DEMO_RUNS], out / "report.html", images=100,
                          explorer=True, explorer_images=20,
                          explorer_paths={out / "sa-quadratic": out / "explorer.html"},
                          title="attnconv demo: SA quadratic vs ResNet18")
    print(f"\nexplorer (sa-quadratic, 20 test images): {report.explorers['sa-quadratic']}")
    print(f"markdown summary: {report.markdown} (report written in "
          f"{time.perf_counter() - t0:.0f} s)")
    print(f"report: {report.html}")


def run(args: argparse.Namespace) -> int:
    """Train both models, print the comparison table, the heads, and Theorem 1's check."""
    out = _prepare_out(args)
    results = _train_runs(args, out)
    check = _check_theorem1(args, out)
    converted = {**check.as_dict(), "convolutions_left": 0}
    _print_comparison(results, check)
    movement, coverage = _print_heads(out)
    findings = demo_findings(results, coverage)
    print("\n" + "\n".join(findings["lines"]))
    summary = {"runs": results, "heads": movement, "grid_coverage": coverage,
               "converted_cnn": converted, "findings": findings["values"]}
    atomic_write_text(out / "demo.json", json.dumps(summary, indent=2))
    print(f"\nruns and checkpoints in {out}/ (summary: {out / 'demo.json'})")
    if not args.no_report:
        _write_demo_report(out)
    return 0
