"""Will the model fit? A cheap lower bound on training memory, checked before anything runs.

The model is built on PyTorch's ``meta`` device (shapes only, no storage) and one forward pass
of one training batch runs there, recording every tensor autograd saves for the backward pass.
Parameters, gradients and SGD momentum (3 copies of the weights) plus those saved activations
are a lower bound of what one training step needs; when it exceeds the memory the device has
available, the run is refused with both numbers instead of dying part-way (or swapping the
machine to a halt).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from attnconv.errors import ConfigError

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training step needs at least: ``state`` (weights, gradients, momentum) and
    ``activations`` (tensors saved for the backward pass of one batch; 0 if unknown)."""

    params: int
    state: int
    activations: int

    @property
    def total(self) -> int:
        return self.state + self.activations


def estimate_training_memory(build: Callable[[], nn.Module], batch_shape: tuple[int, ...],
                             *, half_precision: bool = False) -> MemoryEstimate | None:
    """Lower bound on the memory of one training step of ``build()`` on a ``batch_shape`` batch.

    ``build`` is called under ``torch.device("meta")``, so no weights are allocated. Returns
    None when the model cannot be built on the meta device; the activation part is 0 when
    its forward pass cannot run there (e.g. it reads tensor values). ``half_precision``
    (bf16/fp16 autocast) counts float32 activations at 2 bytes an element, since autocast may
    keep them in half precision (autocast does not run on the meta device).
    """
    try:
        with torch.device("meta"):
            model = build()
    except Exception:  # an estimate only: the real build reports real errors
        return None
    params = sum(p.numel() for p in model.parameters())
    state = sum(3 * p.numel() * p.element_size() for p in model.parameters())
    activations = _saved_activation_bytes(model, batch_shape, half_precision)
    return MemoryEstimate(params, state, activations)


def _saved_activation_bytes(model: nn.Module, batch_shape: tuple[int, ...],
                            half_precision: bool = False) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (meta device)."""
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # hold the tensors so that ids are not reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        if not isinstance(base, nn.Parameter) and id(base) not in seen:
            size = base.element_size()
            if half_precision and base.dtype == torch.float32:
                size = 2
            seen[id(base)] = base.numel() * size
            keep.append(base)
        return t

    try:
        x = torch.empty(batch_shape, device="meta")
        model.train()
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    except Exception:  # a forward pass that needs real values: params only
        return 0
    return sum(seen.values())


def available_memory(device: torch.device) -> int | None:
    """Bytes this process may still allocate on ``device`` (None when unknown).

    CUDA: free memory of the GPU; CPU: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    the free physical pages.
    """
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
            return int(free)
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(estimate: MemoryEstimate | None, device: torch.device, *, what: str,
               batch_size: int, available: int | None = None) -> None:
    """Raise :class:`ConfigError` when ``estimate`` exceeds the memory ``device`` has left.

    ``available`` overrides the measured free memory (tests).
    """
    if estimate is None:
        return
    limit = available if available is not None else available_memory(device)
    if limit is None or estimate.total <= limit:
        return
    parts = f"{estimate.state / GIB:.2f} GiB for {estimate.params:,} parameters with " \
            f"gradients and momentum"
    if estimate.activations:
        parts += f" + {estimate.activations / GIB:.2f} GiB of activations for a batch of " \
                 f"{batch_size}"
    raise ConfigError(f"{what} needs at least {estimate.total / GIB:.2f} GiB to train ({parts}) "
                      f"but {device} has only {limit / GIB:.2f} GiB available; lower batch_size "
                      f"or the model size (model_args)")
