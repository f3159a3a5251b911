"""Table 1 of the paper: size and cost of each model at CIFAR-10 shape, next to the paper's.

The paper's reported numbers (:data:`PAPER_TABLE1`), a finished run's ``results.json``
(:func:`read_run`), and the table :func:`build_table` assembles for ``attnconv table1`` (JSON-ready
data) with its Markdown rendering (:func:`to_markdown`). For every model: parameters;
multiply-accumulates (MACs) of one 32x32x3 image counted by torch's FlopCounterMode over all
matrix products, attention products included; FLOPs in the paper's convention (linear and conv
layers only, 2 x MACs); the paper's numbers and accuracy; optionally the measured accuracy of runs.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attnconv.errors import ConfigError
from attnconv.flops import EXTRA_FLOP_FORMULAS, format_count, model_cost
from attnconv.models import list_models
from attnconv.models.registry import did_you_mean
from attnconv.textable import markdown_table

__all__ = ["COLUMNS", "IMAGE_SHAPE", "NUM_CLASSES", "PAPER_TABLE1", "PaperRow", "RunResult",
           "build_table", "read_run", "to_markdown"]

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10
NUM_CLASSES = 10


@dataclass(frozen=True)
class PaperRow:
    """A model as the paper names it and, for Table 1's rows, the numbers it reports."""

    label: str
    accuracy: float | None = None
    params: str | None = None
    flops: str | None = None


# PAPER section 4, Table 1 (CIFAR-10). The last two models are in the paper's figures only.
PAPER_TABLE1: dict[str, PaperRow] = {
    "resnet18": PaperRow("ResNet18", 0.938, "11.2M", "1.1B"),
    "sa-quadratic": PaperRow("SA quadratic emb.", 0.938, "12.1M", "6.2B"),
    "sa-learned": PaperRow("SA learned emb.", 0.918, "12.3M", "6.2B"),
    "sa-learned-content": PaperRow("SA learned emb. + content-based att.", 0.871, "29.5M", "15B"),
    "sa-quadratic-full": PaperRow("SA quadratic emb., non-isotropic"),
    "sa-quadratic-16heads": PaperRow("SA quadratic emb., 16 heads"),
}

COLUMNS = {
    "model": "model",
    "params": "params",
    "paper_params": "paper params",
    "macs": "MACs (all ops, flop counter)",
    "attention_macs": "attention-product MACs",
    "macs_fast_path": "MACs (eval fast path)",
    "paper_convention_flops": "paper-convention FLOPs (linear layers, 2 x MACs)",
    "paper_flops": "paper FLOPs",
    "paper_accuracy": "paper accuracy",
    "measured_accuracy": "measured accuracy (--runs)",
}


@dataclass(frozen=True)
class RunResult:
    """What the table needs from one run's ``results.json``."""

    path: Path
    model: str
    test_accuracy: float
    dataset: str | None = None  # optional keys written by the trainer
    params: int | None = None


def read_run(run_dir: Path) -> RunResult:
    """The run's ``results.json`` (``model``, ``test_accuracy``); ConfigError if unusable."""
    path = run_dir / "results.json"
    if not path.is_file():
        where = "does not exist" if not run_dir.exists() else "has no results.json"
        raise ConfigError(f"run directory {run_dir} {where}: expected {path} with "
                          f'{{"model": ..., "test_accuracy": ...}} (written when a run finishes)')
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(results, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(results).__name__}")
    model, accuracy = results.get("model"), results.get("test_accuracy")
    if not isinstance(model, str):
        raise ConfigError(f'{path} has no "model" name (a registry name such as sa-quadratic)')
    if model not in list_models():
        raise ConfigError(f"{path} names model {model!r}, which is not registered"
                          f"{did_you_mean(model, list_models())}")
    if (not isinstance(accuracy, int | float) or isinstance(accuracy, bool)
            or not 0.0 <= accuracy <= 1.0 or math.isnan(accuracy)):
        raise ConfigError(f'{path} needs "test_accuracy" as a fraction in [0, 1], '
                          f"got {accuracy!r}")
    dataset, params = results.get("dataset"), results.get("params")
    return RunResult(path, model, float(accuracy),
                     dataset if isinstance(dataset, str) else None,
                     params if isinstance(params, int) and not isinstance(params, bool) else None)


def build_table(models: list[str], runs: list[Path]) -> dict[str, Any]:
    """Count every model and gather the paper's and the measured numbers as JSON-ready data."""
    for name in models:
        if name not in list_models():
            raise ConfigError(f"unknown model {name!r}{did_you_mean(name, list_models())}; "
                              f"known models: {', '.join(list_models())}")
    measured: dict[str, list[RunResult]] = {}
    for run_dir in runs:
        result = read_run(run_dir)
        measured.setdefault(result.model, []).append(result)
    models = list(dict.fromkeys([*models, *measured]))  # runs may add models
    other_setting: list[str] = []  # runs that are not the Table 1 setting

    rows, extra_used, uncounted = [], set(), set()
    for name in models:
        shape = {"num_classes": NUM_CLASSES, "in_chans": IMAGE_SHAPE[0],
                 "image_size": IMAGE_SHAPE[1:]}
        cost = model_cost(name, **shape)  # the dense reference attention (paper's operator)
        fast = model_cost(name, attention="fast", **shape)  # what eval mode runs
        paper = PAPER_TABLE1.get(name, PaperRow(name))
        extra_used.update(cost.extra_formula_ops, fast.extra_formula_ops)
        uncounted.update(cost.uncounted_ops, fast.uncounted_ops)
        row: dict[str, Any] = {
            "model": name,
            "label": paper.label,
            "params": cost.params,
            "paper_params": paper.params,
            "macs": cost.macs,
            "attention_macs": cost.attention_macs,
            "linear_macs": cost.linear_macs,
            "macs_fast_path": fast.macs,
            "paper_convention_flops": cost.paper_convention_flops,
            "paper_flops": paper.flops,
            "paper_accuracy": paper.accuracy,
            "macs_by_op": cost.by_op,
        }
        if runs:
            results = measured.get(name, [])
            row["measured_accuracy"] = (statistics.fmean(r.test_accuracy for r in results)
                                        if results else None)
            row["measured_runs"] = len(results)
            # A run of another dataset or size (e.g. a CPU demo) is flagged, not hidden.
            odd = [r for r in results if r.dataset not in (None, "cifar10")
                   or r.params not in (None, cost.params)]
            row["measured_other_setting"] = bool(odd)
            other_setting += [f"{r.path}: dataset {r.dataset or '?'}, "
                              f"{r.params if r.params is None else format(r.params, ',')} "
                              f"params" for r in odd]
        rows.append(row)

    notes = [
        "MACs (all ops): every matrix product of one forward pass on one image, counted by "
        "torch.utils.flop_counter.FlopCounterMode (it reports FLOPs = 2 x MACs; halved here). "
        "Attention products (einsum/matmul, dispatched as aten.bmm) are included.",
        "These count the dense reference attention, the paper's operator. "
        "Attention-product MACs: all-op MACs minus the linear/conv layers' MACs.",
        "MACs (eval fast path): what attnconv's layers run in eval mode, where "
        "positional-only attention takes an exact fast path (the softmax factorises into a "
        "row and a column softmax); same counter.",
        "Paper-convention FLOPs: nn.Linear layers (and convolutions for ResNet18) only, "
        "2 x MACs; the paper's FLOPs column uses this convention and omits the attention "
        "products.",
        "Extra flop formulas registered for ops FlopCounterMode lacks: "
        f"{', '.join(sorted(str(op) for op in EXTRA_FLOP_FORMULAS)) or 'none needed'}; used "
        f"by these models: {', '.join(sorted(extra_used)) or 'none'}.",
        "Not counted (no multiply-accumulate formula): "
        f"{', '.join(sorted(op.removeprefix('aten.') for op in uncounted)) or 'nothing'}.",
    ]
    if runs:
        notes.append(f"Measured accuracy: test accuracy from {len(runs)} run director"
                     f"{'y' if len(runs) == 1 else 'ies'} (results.json), mean per model.")
    if other_setting:
        notes.append("* measured in another setting than Table 1 (CIFAR-10, full size): "
                     + "; ".join(other_setting) + ".")
    return {"image_shape": list(IMAGE_SHAPE), "num_classes": NUM_CLASSES, "rows": rows,
            "notes": notes}


def _cell(key: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    if key == "model":
        return f"{value} ({row['label']})" if row["label"] != value else str(value)
    if key == "params":
        return f"{value:,} ({format_count(value)})"
    if key in ("macs", "attention_macs", "macs_fast_path", "paper_convention_flops"):
        return format_count(value)
    if key == "paper_accuracy":
        return f"{value:.3f}"
    if key == "measured_accuracy":
        runs = row["measured_runs"]
        return (f"{value:.3f}" + (f" (mean of {runs})" if runs > 1 else "")
                + (" *" if row["measured_other_setting"] else ""))
    return str(value)


def to_markdown(table: dict[str, Any]) -> str:
    """The table as GitHub Markdown, followed by its notes."""
    keys = [k for k in COLUMNS if k != "measured_accuracy"
            or any("measured_accuracy" in row for row in table["rows"])]
    lines = markdown_table([COLUMNS[k] for k in keys],
                           [[_cell(k, row) for k in keys] for row in table["rows"]],
                           ["left" if k == "model" else "right" for k in keys])
    c, h, w = table["image_shape"]
    lines += ["", f"Per image of {h}x{w}x{c}, {table['num_classes']} classes."]
    lines += [f"- {note}" for note in table["notes"]]
    return "\n".join(lines)
