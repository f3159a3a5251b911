"""How local and how convolution-like is each attention head of a trained model?

Prints one row per (layer, head): mean attention distance (tokens and input pixels), entropy
(nats), convolution-likeness (mass on the most-attended relative offset, 1.0 for a converted
convolution) with that offset, and the Gaussian centre and width of quadratic heads; then the
per-layer averages; then, for layers of Gaussian heads, the grid coverage (how many of the 8
neighbours of the 3x3 window have a head centre within 0.5 token, and how many distinct
centres; see :func:`attnconv.analysis.metrics.grid_coverage`) of the checkpoint and, for a run
directory whose ``heads.jsonl`` holds them, of the initial centres. Writes locality.csv,
grid_coverage.csv and locality.json to --out. Positional-only models need no images; content
attention is averaged over the first --images test images.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from attnconv.atomic import atomic_open, atomic_write_text

NAME = "locality"
HELP = "attention distance, entropy and convolution-likeness per layer and head"

TABLE = {"layer": "layer", "head": "head", "mean_distance": "dist (tok)",
         "mean_distance_px": "dist (px)", "entropy": "entropy", "conv_likeness": "conv-like",
         "offset": "offset", "center": "centre", "width": "alpha / eig(Sigma^-1)"}

COVERAGE_LABELS = {"layer": "layer", "heads": "heads", "neighbours_covered_init": "covered init",
                   "neighbours_covered": "covered", "distinct_centres_init": "distinct init",
                   "distinct_centres": "distinct", "query_covered_init": "query init",
                   "query_covered": "query", "covered": "covered offsets (row, col)"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, number of images, data directory, output directory, margin."""
    parser.add_argument("checkpoint", help="a .safetensors checkpoint or a run directory "
                                           "(its best checkpoint is used)")
    parser.add_argument("--images", type=int, default=100,
                        help="test images to average content attention over (default 100; "
                             "positional-only models use none)")
    parser.add_argument("--data-dir", help="directory holding the dataset files (default: the "
                                           "one the run was trained with)")
    parser.add_argument("--out", type=Path,
                        help="output directory for locality.csv and locality.json (default: "
                             "the run directory, or the checkpoint's directory)")
    parser.add_argument("--margin", type=int, default=0,
                        help="ignore queries closer than this many tokens to the border "
                             "(default 0: all queries, ViT's measure)")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass")


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_row(row: dict[str, Any]) -> dict[str, str]:
    """The printed form of one row of :func:`attnconv.analysis.compute_locality`."""
    if row["center_row"] is None:
        centre, width = "-", "-"
    else:
        centre = f"({row['center_row']:+.2f}, {row['center_col']:+.2f})"
        width = (f"{row['alpha']:.3g}" if row["alpha"] is not None else
                 f"{row['inv_cov_eig_min']:.3g} / {row['inv_cov_eig_max']:.3g}")
    return {"layer": str(row["layer"]), "head": str(row["head"]),
            "mean_distance": _fmt(row["mean_distance"]),
            "mean_distance_px": _fmt(row["mean_distance_px"]),
            "entropy": _fmt(row["entropy"]), "conv_likeness": _fmt(row["conv_likeness"]),
            "offset": f"({row['offset_row']:+d}, {row['offset_col']:+d})",
            "center": centre, "width": width}


def layer_means(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-layer averages of the distance, entropy and convolution-likeness over the heads."""
    out = []
    for layer in sorted({r["layer"] for r in rows}):
        group = [r for r in rows if r["layer"] == layer]
        mean = {k: sum(r[k] for r in group) / len(group)
                for k in ("mean_distance", "mean_distance_px", "entropy", "conv_likeness")}
        out.append({"layer": str(layer), "heads": str(len(group)),
                    **{TABLE[k]: _fmt(v) for k, v in mean.items()}})
    return out


def coverage_rows(rows: list[dict[str, Any]],
                  run_dir: Path | None = None) -> list[dict[str, Any]]:
    """Grid coverage of every layer of Gaussian heads in ``rows`` (:func:`compute_locality`).

    One dict per such layer: ``layer``, ``heads``, ``checkpoint`` (coverage of the centres in
    ``rows``) and ``init`` (of the initial centres recorded in ``run_dir/heads.jsonl``, None
    without them); both are :meth:`GridCoverage.as_dict` forms.
    """
    from attnconv.analysis.metrics import coverage_over_training, grid_coverage

    layers = sorted({r["layer"] for r in rows if r["center_row"] is not None})
    history = coverage_over_training(run_dir) if run_dir is not None else []
    if len(history) != len(layers):  # heads.jsonl lists the quadratic layers in model order
        history = []
    out = []
    for i, layer in enumerate(layers):
        centres = [(r["center_row"], r["center_col"]) for r in rows if r["layer"] == layer]
        out.append({"layer": layer, "heads": len(centres),
                    "init": history[i]["init"] if history else None,
                    "checkpoint": grid_coverage(centres).as_dict()})
    return out


def coverage_cells(cov: dict[str, Any]) -> dict[str, str]:
    """The printed / CSV form of one :func:`coverage_rows` row."""
    init, end = cov["init"], cov["checkpoint"]

    def get(c: dict[str, Any] | None, key: str) -> str:
        return "" if c is None else str(c[key])

    return {"layer": str(cov["layer"]), "heads": str(cov["heads"]),
            "neighbours_covered_init": get(init, "neighbours_covered"),
            "neighbours_covered": get(end, "neighbours_covered"),
            "distinct_centres_init": get(init, "distinct_centres"),
            "distinct_centres": get(end, "distinct_centres"),
            "query_covered_init": get(init, "query_covered"),
            "query_covered": get(end, "query_covered"),
            "covered": " ".join(f"({r:+d},{c:+d})" for r, c in end["covered"])}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows to CSV, one column per key; None is an empty cell."""
    with atomic_open(path, "w", encoding=None, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


def run(args: argparse.Namespace) -> int:
    """Load the model, compute the metrics, print the tables, write CSV and JSON."""
    from attnconv.analysis import (
        attention_layers,
        compute_locality,
        load_test_images,
        token_stride,
    )
    from attnconv.analysis.figures import run_directory
    from attnconv.textable import plain_table
    from attnconv.train.model_io import load_model

    model, meta = load_model(args.checkpoint)
    layers = [layer for _, layer in attention_layers(model)]
    needs_images = any(not layer.positional_only for layer in layers)
    images = None
    if needs_images:
        images, _ = load_test_images(meta, args.images, args.data_dir)
    rows = compute_locality(model, images, batch_size=args.batch_size, margin=args.margin)
    stride = token_stride(model)
    source = (f"{len(images)} {meta['dataset']} test images" if images is not None
              else "positional attention (no image needed)")
    print(f"{meta['model']}: {len(layers)} attention layers, {rows[0]['grid_rows']}x"
          f"{rows[0]['grid_cols']} tokens, 1 token = {stride} input pixels; {source}")
    print(plain_table([{TABLE[k]: v for k, v in table_row(r).items()} for r in rows]))
    print("\nper layer (mean over heads):")
    print(plain_table(layer_means(rows)))
    run_dir = run_directory(args.checkpoint)
    coverage = coverage_rows(rows, run_dir)
    if coverage:
        from attnconv.analysis.metrics import COVER_RADIUS

        print(f"\ngrid coverage of the Gaussian heads (3x3 neighbours with a head centre closer "
              f"than {COVER_RADIUS} token, of 8; distinct centres: closer than {COVER_RADIUS} "
              f"count as one; init: before training, from heads.jsonl):")
        print(plain_table([{COVERAGE_LABELS[k]: v for k, v in coverage_cells(c).items()}
                            for c in coverage]))
    out = args.out or run_dir or Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "locality.csv", rows)
    written = [out / "locality.csv"]
    if coverage:
        write_csv(out / "grid_coverage.csv", [coverage_cells(c) for c in coverage])
        written.append(out / "grid_coverage.csv")
    report = {"checkpoint": str(args.checkpoint), "model": meta["model"],
              "dataset": meta["dataset"], "images": 0 if images is None else len(images),
              "token_stride": stride, "margin": args.margin, "rows": rows,
              "grid_coverage": coverage}
    atomic_write_text(out / "locality.json", json.dumps(report, indent=2) + "\n")
    written.append(out / "locality.json")
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0
