"""Everything a run needs to continue exactly, as checkpoint tensors plus JSON.

Optimiser and scheduler ``state_dict``s are split into tensors (momentum buffers) and plain
values; random-number-generator states of Python, NumPy and torch (CPU and CUDA) are saved too.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from attnconv.errors import CheckpointError
from attnconv.train.checkpoint import Checkpoint


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / ``torch.compile`` wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def capture(model: nn.Module, optimizer: torch.optim.Optimizer | None,
            scheduler: Any | None, scaler: torch.amp.GradScaler | None
            ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and JSON metadata of the model, optimiser, scheduler, scaler and RNGs."""
    tensors = {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}
    meta: dict[str, Any] = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for idx, entry in sd["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim.{idx}.{key}"] = value
                else:
                    plain.setdefault(str(idx), {})[key] = value
        meta["optimizer"] = {"param_groups": sd["param_groups"], "state": plain}
    if scheduler is not None:
        meta["scheduler"] = {k: v for k, v in scheduler.state_dict().items()
                             if k != "lr_lambdas"}
    if scaler is not None:
        meta["scaler"] = scaler.state_dict()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    meta["rng"] = {"python": [py[0], list(py[1]), py[2]],
                   "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]),
                             int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
            scheduler: Any | None = None, scaler: torch.amp.GradScaler | None = None) -> None:
    """Load what :func:`capture` saved back into live objects.

    Raises:
        CheckpointError: naming the file, when its state does not fit the live objects (other
            parameters, parameter groups or RNG sizes than this run has).
    """
    try:
        _restore(ckpt, model, optimizer, scheduler, scaler)
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{ckpt.path} does not fit this run ({type(err).__name__}: "
                              f"{first}); resume with the configuration that wrote it, or use "
                              f"another checkpoint") from err


def _restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer | None,
             scheduler: Any | None, scaler: torch.amp.GradScaler | None) -> None:
    unwrap(model).load_state_dict(ckpt.section("model"))
    meta = ckpt.meta
    if optimizer is not None and "optimizer" in meta:
        state: dict[int, dict[str, Any]] = {}
        for key, value in ckpt.section("optim").items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        for idx, entry in meta["optimizer"]["state"].items():
            state.setdefault(int(idx), {}).update(entry)
        optimizer.load_state_dict({"state": state,
                                   "param_groups": meta["optimizer"]["param_groups"]})
    if scheduler is not None and "scheduler" in meta:
        scheduler.load_state_dict({**scheduler.state_dict(), **meta["scheduler"]})
    if scaler is not None and "scaler" in meta:
        scaler.load_state_dict(meta["scaler"])
    rng = meta.get("rng")
    if rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss),
                             cached))
    torch.set_rng_state(ckpt.tensors["rng.torch"])
    cuda = [ckpt.tensors[k] for k in sorted(ckpt.tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
