"""Check Theorem 1 on a real photograph: random convolutions (strided, dilated, grouped, even and
non-square kernels, every padding mode, Conv1d) against their self-attention versions.

Prints one row per configuration (heads, max abs/rel error, PASS/FAIL), writes verify.png (input,
conv output, attention output, difference, error vs alpha) and verify.json to --out. The exit
code is 1 if any configuration fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from attnconv.atomic import atomic_savefig, atomic_write_text
from attnconv.textable import plain_table
from attnconv.theorem import TOLERANCES, exact_alpha
from attnconv.theorem.verify import CASES, CaseResult, error_curve, run_case, sample_image

NAME = "verify"
HELP = "check conv == attention (Theorem 1) on a photograph; table + figure"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out``, ``--dtype``, ``--seed``, ``--size``."""
    parser.add_argument("--out", type=Path, default=Path("runs/verify"),
                        help="output directory for verify.png and verify.json "
                             "(default: runs/verify)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float64",
                        help="precision; tolerance on the max relative error: 1e-12 (float64, "
                             "default) or 1e-5 (float32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random conv weights")
    parser.add_argument("--size", type=int, default=32,
                        help="side of the downscaled photograph in pixels (default 32, "
                             "CIFAR-sized; the attention is global: memory grows as size^4)")


def _figure(path: Path, image: Tensor, y_conv: Tensor, y_att: Tensor,
            curve: list[dict[str, float]], tolerance: float, title: str) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg via savefig

    fig = Figure(figsize=(21, 4.2), layout="constrained")
    axes = fig.subplots(1, 5)
    shown = image.permute(1, 2, 0).double()
    shown = (shown - shown.amin()) / (shown.amax() - shown.amin())
    axes[0].imshow(shown.numpy())
    axes[0].set_title(f"input {image.shape[1]}x{image.shape[2]} (normalised)")
    conv0, att0 = y_conv[0, 0].double(), y_att[0, 0].double()
    lo, hi = float(conv0.min()), float(conv0.max())
    for ax, data, name in ((axes[1], conv0, "nn.Conv2d"), (axes[2], att0, "attention")):
        im = ax.imshow(data.numpy(), cmap="viridis", vmin=lo, vmax=hi)
        ax.set_title(f"{name} output, channel 0")
        fig.colorbar(im, ax=ax, shrink=0.8)
    diff = (att0 - conv0).abs()
    im = axes[3].imshow(diff.numpy(), cmap="magma")
    axes[3].set_title(f"|difference|, max {float(diff.max()):.1e}")
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    for ax in axes[:4]:
        ax.set_xticks([])
        ax.set_yticks([])
    alphas = [r["alpha"] for r in curve]
    # An exact zero has no place on a log axis: show it at the smallest normal number.
    floor = torch.finfo(torch.float64).tiny
    errors = [max(r["max_rel_error"], floor) for r in curve]
    axes[4].loglog(alphas, errors, "o-", label="max relative error")
    axes[4].axhline(tolerance, color="gray", linestyle="--", label=f"tolerance {tolerance:g}")
    axes[4].set_xlabel("alpha (Gaussian width, Lemma 2)")
    axes[4].set_ylabel("max |y_att - y_conv| / max |y_conv|")
    axes[4].set_title("soft attention -> conv as alpha grows")
    axes[4].legend(loc="lower left")
    fig.suptitle(title)
    atomic_savefig(fig, path, dpi=80)


def run(args: argparse.Namespace) -> int:
    """Run every case, print the table, write the figure and the JSON; 1 if any case fails."""
    dtype = DTYPES[args.dtype]
    if args.size < 8 or args.size > 64:
        raise ValueError(f"--size must be between 8 and 64 pixels, got {args.size}")
    image = sample_image(args.size, dtype=dtype)
    results: list[CaseResult] = []
    shown: tuple[Tensor, Tensor] | None = None
    for i, case in enumerate(CASES):
        result, y_conv, y_att = run_case(case, image, args.seed + i)
        results.append(result)
        if shown is None:
            shown = (y_conv, y_att)
    tolerance = TOLERANCES[dtype]
    print(f"Theorem 1: {len(results)} random convolutions on a "
          f"{args.size}x{args.size} photograph, {args.dtype}, alpha = {exact_alpha(dtype):.1f}, "
          f"pass if max rel error <= {tolerance:g}")
    print(plain_table([r.row() for r in results]))
    curve = error_curve(image, args.seed)
    print("\nerror vs alpha (3x3 conv, 24x24 crop): " + ", ".join(
        f"{r['alpha']:.3g}: {r['max_rel_error']:.1e}" for r in curve))
    args.out.mkdir(parents=True, exist_ok=True)
    assert shown is not None
    figure = args.out / "verify.png"
    _figure(figure, image, *shown, curve, tolerance,
            f"Theorem 1: {CASES[0].name} conv vs its self-attention ({args.dtype})")
    report: dict[str, Any] = {
        "dtype": args.dtype, "seed": args.seed, "size": args.size, "tolerance": tolerance,
        "alpha": exact_alpha(dtype),
        "cases": [{**r.row(), "max_abs_error": r.max_abs_error, "max_rel_error": r.max_rel_error}
                  for r in results],
        "alpha_curve": curve,
    }
    atomic_write_text(args.out / "verify.json", json.dumps(report, indent=2) + "\n")
    failed = [r.name for r in results if not r.passed]
    print(f"\nwrote {figure} and {args.out / 'verify.json'}")
    print(f"{len(results) - len(failed)}/{len(results)} PASS" +
          (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
