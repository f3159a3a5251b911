"""Degenerate-head pruning for Gaussian attention (PAPER section 5, non-isotropic appendix).

After training, some full-covariance heads degenerate: ``Sigma^-1`` becomes tiny (the Gaussian
covers the whole image: near-uniform averaging) or singular (a line). The paper pruned such heads
(15 of 54) and fine-tuned without losing accuracy. Here, as in the authors' code
(epfml/attention-cnn, ``train.py: find_degenerated_heads``), a head is *degenerate* when

* the condition number ``lambda_max / lambda_min`` of ``Sigma^-1`` exceeds ``max_condition``
  (default :data:`MAX_CONDITION` = 1e3: a line rather than a blob), or else
* the largest eigenvalue of ``Sigma^-1`` is below ``min_eigenvalue`` (default
  :data:`MIN_EIGENVALUE` = 1e-5: its narrowest width ``sigma = 1/sqrt(lambda_max)`` is over
  ~316 tokens, so the head averages the whole image uniformly).

Pruning physically removes the heads: a new ``SelfAttention2d`` with the kept heads only, the
matching columns of ``W_out`` (and rows of the value/query/key projections), nothing reset.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from attnconv.atomic import atomic_write_text
from attnconv.errors import ConfigError
from attnconv.layers import SelfAttention2d

if TYPE_CHECKING:
    from attnconv.train.config import TrainConfig

MIN_EIGENVALUE = 1e-5
"""A head whose largest eigenvalue of ``Sigma^-1`` is below this is pruned as too wide.

The authors' threshold (``train.py: find_degenerated_heads``, ``eig_values.max() < 1e-5``; for
isotropic heads ``sigma_inv ** 2 < 1e-5``). A Gaussian this wide (``sigma > 316`` tokens) is
uniform over any image the paper uses.
"""

MAX_CONDITION = 1e3
"""A head whose ``Sigma^-1`` has a condition number above this is pruned as degenerate.

The authors' threshold (``train.py: find_degenerated_heads``, ``condition_number > 1000``).
"""


def check_thresholds(min_eigenvalue: float, max_condition: float) -> None:
    """Raise :class:`ConfigError` unless both pruning thresholds are usable numbers.

    ``min_eigenvalue`` must be finite and ``>= 0`` (0 prunes no head as too wide);
    ``max_condition`` must be finite and ``>= 1`` (every condition number is ``>= 1``, so a
    smaller bound would prune every head).
    """
    for name, value, flag, default in (
            ("min_eigenvalue", min_eigenvalue, "--min-eigenvalue", MIN_EIGENVALUE),
            ("max_condition", max_condition, "--max-condition", MAX_CONDITION)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}; pass e.g. the authors' "
                              f"{flag} {default:g}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}; pass a finite "
                              f"{flag} (the authors' value is {default:g})")
    if min_eigenvalue < 0:
        raise ConfigError(f"min_eigenvalue must be >= 0 (eigenvalues of Sigma^-1 are >= 0), got "
                          f"{min_eigenvalue:g}; pass --min-eigenvalue 0 to prune no head as too "
                          f"wide, or the authors' {MIN_EIGENVALUE:g}")
    if max_condition < 1:
        raise ConfigError(f"max_condition must be >= 1 (every condition number is >= 1, a smaller "
                          f"bound prunes every head), got {max_condition:g}; pass the authors' "
                          f"--max-condition {MAX_CONDITION:g} or a larger value")


@dataclass(frozen=True)
class HeadVerdict:
    """One Gaussian head and whether it is kept."""

    layer: int
    head: int
    center_row: float
    center_col: float
    eig_min: float  # eigenvalues of Sigma^-1
    eig_max: float
    condition: float
    keep: bool
    reason: str


def head_verdicts(model: nn.Module, *, min_eigenvalue: float = MIN_EIGENVALUE,
                  max_condition: float = MAX_CONDITION) -> list[HeadVerdict]:
    """Classify every head of every quadratic attention layer of ``model`` (in model order).

    The condition number is checked first, then the largest eigenvalue (the authors' order: a
    head failing both is reported as degenerate). Raises :class:`ConfigError` for thresholds
    that are not finite or out of range (see :func:`check_thresholds`) and ``TypeError`` for a
    model without quadratic attention.
    """
    check_thresholds(min_eigenvalue, max_condition)
    rows = []
    layers = [m for m in model.modules() if isinstance(m, SelfAttention2d)]
    for i, layer in enumerate(layers):
        if not layer.encoding_name.startswith("quadratic"):
            raise TypeError(f"pruning needs quadratic attention; layer {i} uses "
                            f"encoding={layer.encoding_name!r}")
        g = layer.gaussian_parameters()
        eigs = torch.linalg.eigvalsh(g.inv_covariance.double())  # (heads, 2), ascending
        for h in range(layer.heads):
            lo, hi = max(float(eigs[h, 0]), 0.0), float(eigs[h, 1])
            cond = hi / lo if lo > 0 else float("inf")
            reason = ""
            if cond > max_condition:
                reason = f"degenerate: condition number {cond:.3g} > {max_condition:g}"
            elif hi < min_eigenvalue:
                reason = f"too wide: largest eigenvalue {hi:.3g} < {min_eigenvalue:g}"
            rows.append(HeadVerdict(i, h, float(g.centers[h, 0]), float(g.centers[h, 1]), lo, hi,
                                    cond, not reason, reason or "kept"))
    return rows


def select_heads(layer: SelfAttention2d, keep: list[int]) -> SelfAttention2d:
    """A copy of ``layer`` with only the heads ``keep`` (their parameters copied exactly)."""
    if not keep:
        raise ValueError("cannot prune every head of a layer; keep at least one (lower "
                         "min_eigenvalue / raise max_condition to keep more heads)")
    if any(not 0 <= h < layer.heads for h in keep):
        raise ValueError(f"head indices {keep} out of range for {layer.heads} heads")
    new = copy.deepcopy(layer)
    idx = torch.tensor(keep)
    new.heads = len(keep)
    enc = new.encoding
    with torch.no_grad():
        if enc is not None:
            enc.heads = len(keep)
            for name in ("centers", "log_alpha", "s", "row_score", "col_score"):
                if hasattr(enc, name):
                    setattr(enc, name, nn.Parameter(getattr(enc, name)[idx].clone()))

        def rows_of_heads(linear: nn.Linear, width: int) -> nn.Linear:
            out = nn.Linear(linear.in_features, len(keep) * width)
            w = linear.weight.view(layer.heads, width, -1)[idx]  # (kept, width, in)
            out.weight.copy_(w.reshape(-1, linear.in_features))
            out.bias.copy_(linear.bias.view(layer.heads, width)[idx].reshape(-1))
            return out.to(linear.weight)

        if new.value is not None:
            new.value = rows_of_heads(layer.value, layer.head_dim)
        if new.query is not None and new.key is not None:
            new.query = rows_of_heads(layer.query, layer.qk_dim)
            new.key = rows_of_heads(layer.key, layer.qk_dim)
        out = nn.Linear(len(keep) * layer.head_dim, layer.out_dim)
        w = layer.out.weight.view(layer.out_dim, layer.heads, layer.head_dim)[:, idx]
        out.weight.copy_(w.reshape(layer.out_dim, -1))
        out.bias.copy_(layer.out.bias)
        new.out = out.to(layer.out.weight)
    return new


def prune_model(model: nn.Module, verdicts: list[HeadVerdict]) -> nn.Module:
    """A copy of ``model`` whose attention layers keep only the heads ``verdicts`` keep.

    For the paper's network (``model.config.heads``) the per-layer head counts are recorded in
    the config, so a checkpoint of the pruned model can be rebuilt with ``create_model``.
    """
    pruned = copy.deepcopy(model)
    parents = [(parent, name) for parent in pruned.modules()
               for name, child in parent.named_children() if isinstance(child, SelfAttention2d)]
    counts = []
    for i, (parent, name) in enumerate(parents):
        keep = [v.head for v in verdicts if v.layer == i and v.keep]
        layer = select_heads(getattr(parent, name), keep)
        setattr(parent, name, layer)
        counts.append(layer.heads)
    config = getattr(pruned, "config", None)
    if config is not None and hasattr(config, "heads"):
        config.heads = counts
    return pruned


# Checkpoint metadata of the source run that does not carry over to the pruned run: its
# resumable state (optimiser, schedule, scaler, progress, data order) and what save_checkpoint
# writes itself (format, digest).
SOURCE_ONLY_META = ("sha256", "format", "optimizer", "scheduler", "scaler", "progress", "data")


def write_pruned_run(pruned: nn.Module, meta: dict[str, Any], verdicts: list[HeadVerdict],
                     out: str | Path, *, source: str | Path, epochs: int,
                     lr: float | None = None) -> TrainConfig:
    """Write ``pruned`` as a new run directory ``out`` that ``attnconv train --resume`` continues.

    ``meta`` is the source checkpoint's metadata (its ``config`` is the starting point). The run
    is named after ``out``, records the per-layer head counts in ``model_args.heads``, trains for
    ``max(epochs, 1)`` epochs at ``lr`` (default: the source run's lr / 10, as the authors' pruned
    run) with a fresh optimiser and schedule. Writes ``config.yaml``, the pruned weights as the
    run's only checkpoint (``checkpoints/step-00000000.safetensors``, with ``pruned_from`` and
    ``pruned_heads``) and every verdict to ``pruning.json``. Returns the run's config.
    """
    from attnconv.train import save_checkpoint
    from attnconv.train.config import config_from_dict
    from attnconv.train.state import capture
    from attnconv.train.trainer import Progress

    out = Path(out)
    heads = [layer.heads for layer in pruned.attention_layers()]
    cfg_dict = dict(meta["config"])
    cfg_dict.update(name=out.name, out_dir=str(out.parent),
                    model_args={**cfg_dict.get("model_args", {}), "heads": heads},
                    epochs=max(epochs, 1), lr=lr if lr is not None else cfg_dict["lr"] / 10)
    cfg = config_from_dict(cfg_dict)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    tensors, rng_meta = capture(pruned, None, None, None)
    save_checkpoint(out / "checkpoints" / "step-00000000.safetensors", tensors,
                    {**{k: v for k, v in meta.items() if k not in SOURCE_ONLY_META},
                     **rng_meta, "config": cfg.to_dict(), "model_args": cfg.model_args,
                     "progress": asdict(Progress()), "pruned_from": str(source),
                     "pruned_heads": [asdict(v) for v in verdicts if not v.keep]})
    atomic_write_text(out / "pruning.json", json.dumps([asdict(v) for v in verdicts], indent=2))
    return cfg
