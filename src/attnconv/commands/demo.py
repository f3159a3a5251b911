"""The paper in miniature, offline on a laptop CPU: train a small quadratic self-attention
network and a small CNN on the embedded Fashion-MNIST subset, evaluate both on its test split,
print a table, and show how the Gaussian heads moved away from the query pixel.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

NAME = "demo"
HELP = "train a small SA-quadratic net and a small CNN on the embedded data (~5 min on 2 cores)"

# The two demo runs; configs/cpu/demo-*.yaml hold the same settings for `attnconv train`.
DEMO_RUNS: dict[str, dict[str, Any]] = {
    "sa-quadratic": {
        "model": "sa-quadratic",
        # 14x14 tokens (2x2 space-to-depth of 28x28), 3 layers of 9 Gaussian heads. No dropout:
        # a few epochs do not overfit, and without attention dropout the exact separable path
        # applies (the softmax factorises into row x column).
        "model_args": {"hidden_size": 32, "num_layers": 3, "heads": 9, "ffn_size": 64,
                       "dropout": 0.0, "attn_dropout": 0.0},
        "lr": 0.1,
    },
    "cnn": {
        "model": "resnet18",
        "model_args": {"base_width": 8},
        "lr": 0.1,
        "schedule": "warmup-cosine",
    },
}
DEMO_COMMON: dict[str, Any] = {"dataset": "embedded", "epochs": 8, "batch_size": 50,
                               "val_fraction": 0.1, "augment": True, "seed": 0}


def demo_config(run: str, out_dir: str | Path, epochs: int | None = None) -> Any:
    """The :class:`~attnconv.train.TrainConfig` of one demo run."""
    from attnconv.train.config import config_from_dict

    data = {**DEMO_COMMON, **DEMO_RUNS[run], "name": run, "out_dir": str(out_dir)}
    if epochs is not None:
        data["epochs"] = epochs
    return config_from_dict(data)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output directory and length."""
    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"epochs per model (default {DEMO_COMMON['epochs']})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier demo in --out (otherwise it is an error)")


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


def run(args: argparse.Namespace) -> int:
    """Train both models, print the comparison table and the head movement."""
    import shutil

    from attnconv.errors import ConfigError
    from attnconv.train import train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            raise ConfigError(f"{out} already holds a demo; pass --overwrite to replace it or "
                              f"--out DIR for another directory")
        for run_name in DEMO_RUNS:
            shutil.rmtree(out / run_name, ignore_errors=True)
    results = []
    for run_name in DEMO_RUNS:
        cfg = demo_config(run_name, out, args.epochs)
        print(f"== training {run_name} ({cfg.model}, {cfg.epochs} epochs on the embedded "
              f"Fashion-MNIST subset) ==", flush=True)
        t0 = time.perf_counter()
        result = train(cfg)
        result["wall_time_s"] = time.perf_counter() - t0
        results.append(result)
    print()
    print("| run | model | params | test accuracy | train time (s) |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['model']} | {r['params']:,} | {r['test_accuracy']:.4f} | "
              f"{r['train_time_s']:.0f} |")
    movement = head_movement(out / "sa-quadratic")
    print()
    print("Gaussian heads of sa-quadratic (mean over 9 heads; distance of the centre from the "
          "query pixel, in tokens):")
    print("| layer | distance at init | distance at end | moved | alpha at end |")
    print("|---:|---:|---:|---:|---:|")
    for m in movement:
        print(f"| {m['layer']} | {m['mean_distance_start']:.2f} | {m['mean_distance_end']:.2f} | "
              f"{m['mean_moved']:.2f} | {m['mean_alpha_end']:.2f} |")
    (out / "demo.json").write_text(json.dumps({"runs": results, "heads": movement}, indent=2))
    print(f"\nruns and checkpoints in {out}/ (summary: {out / 'demo.json'})")

    # What attention learned: one report of both runs, and the explorer of the SA model.
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
    return 0
