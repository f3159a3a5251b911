"""Record what every attention layer of a model attends to, on the layer's actual input.

:func:`record_attention` runs images through a model and returns, for each
:class:`~attnconv.layers.SelfAttention2d` it contains (model order, as ``model.modules()``
lists them), the attention probabilities ``(B, heads, H, W, H, W)`` (query row, query col, key
row, key col). While it runs, each layer's ``forward`` is wrapped so that it calls the layer
itself with ``return_attention=True`` on the input it actually receives; the wrappers are
removed afterwards, even on error, and the model computes exactly what it computed before.
:func:`record_inputs` uses the same wrappers to keep each layer's input instead (the explorer
computes its views from it).

Also here: the helpers every analysis shares (the layers of a model, its token grid and
token-to-pixel factor, a temporary eval mode, the test images of a checkpoint's dataset).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from attnconv.layers import SelfAttention2d


def attention_layers(model: nn.Module) -> list[tuple[str, SelfAttention2d]]:
    """``(name, layer)`` of every :class:`SelfAttention2d` in ``model``, in model order.

    ``model`` may itself be a ``SelfAttention2d`` (its name is then ``""``).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SelfAttention2d)]


def token_stride(model: nn.Module) -> int:
    """Input pixels per token along each axis: the space-to-depth factor ``r`` of an SANet.

    A distance of ``d`` tokens is ``d * token_stride(model)`` pixels of the input image. Models
    without a ``config.downsample`` (a converted conv, a bare layer) attend over pixels: 1.
    """
    return int(getattr(getattr(model, "config", None), "downsample", 1) or 1)


def token_grid(model: nn.Module) -> tuple[int, int] | None:
    """The token grid ``(H / r, W / r)`` of the model's training images, or None if unknown."""
    grid = getattr(getattr(model, "config", None), "grid_size", None)
    return None if grid is None else (int(grid[0]), int(grid[1]))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode, and restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def display_layout(images: Tensor) -> Tensor:
    """Images ``(N, C, H, W)`` -> ``(N, H, W, 1 or 3)`` on the CPU, for showing them.

    One or three channels are kept as they are (same dtype); any other count is shown as the
    channel mean, in float64. Scaling to a display range is the caller's.
    """
    x = images.detach().cpu()
    if x.shape[1] not in (1, 3):
        x = x.double().mean(dim=1, keepdim=True)  # not grey, not RGB: show the channel mean
    return x.permute(0, 2, 3, 1)  # (N, H, W, C)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


class _Recorder:
    """Wraps the ``forward`` of each layer to keep, per call, its maps or its input.

    ``what="attention"``: the layer runs with ``return_attention=True`` and its probabilities
    are kept (moved to ``device``); ``what="input"``: the layer runs as called and its input is
    kept. ``maps[i]`` lists what layer ``i`` produced, one entry per call.
    """

    def __init__(self, layers: Sequence[tuple[str, SelfAttention2d]],
                 device: torch.device | None = None, what: str = "attention") -> None:
        self.layers = layers
        self.device = device
        self.what = what
        self.maps: list[list[Tensor]] = [[] for _ in layers]
        self._saved: list[tuple[SelfAttention2d, Any]] = []

    def __enter__(self) -> _Recorder:
        try:
            for index, (_, layer) in enumerate(self.layers):
                # An instance attribute shadows the class's forward; remember any earlier one.
                self._saved.append((layer, layer.__dict__.get("forward")))
                layer.forward = self._wrap(layer, index)  # type: ignore[method-assign]
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for layer, previous in reversed(self._saved):
            if previous is None:
                layer.__dict__.pop("forward", None)
            else:
                layer.__dict__["forward"] = previous
        self._saved.clear()

    def _wrap(self, layer: SelfAttention2d, index: int) -> Any:
        forward = layer.forward  # the bound method in place before recording

        def recording_forward(x: Tensor, return_attention: bool = False) -> Any:
            if self.what == "input":
                self.maps[index].append(x.detach())
                return forward(x, return_attention=return_attention)
            y, attn = forward(x, return_attention=True)  # (B, H, W, out), (B', heads, H, W, H, W)
            self.maps[index].append(attn.detach().to(self.device))
            return (y, attn) if return_attention else y

        return recording_forward

    def one_per_layer(self, caller: str) -> list[Tensor]:
        """What each layer produced in one forward pass; ValueError unless it ran exactly once."""
        for index, maps in enumerate(self.maps):
            if len(maps) != 1:
                name = self.layers[index][0] or type(self.layers[index][1]).__name__
                raise ValueError(f"attention layer {index} ({name}) ran {len(maps)} times in "
                                 f"one forward pass; {caller} needs exactly one call per layer")
        return [maps[0] for maps in self.maps]


def record_inputs(model: nn.Module, batch: Tensor,
                  caller: str = "record_inputs") -> tuple[Any, list[Tensor]]:
    """``(model(batch), input of each SelfAttention2d)`` for one forward pass, in model order.

    The inputs are what each layer actually receives (detached, on the model's device). The
    forward pass runs as the caller set it up (grad mode, train/eval mode are not changed).

    Raises:
        ValueError: a layer is not called exactly once (``caller`` names who needed it).
    """
    with _Recorder(attention_layers(model), what="input") as recorder:
        output = model(batch)
    return output, recorder.one_per_layer(caller)


def record_attention(
    model: nn.Module,
    images: Tensor,
    *,
    batch_size: int = 100,
    device: torch.device | str = "cpu",
) -> list[Tensor]:
    """Attention maps of every ``SelfAttention2d`` of ``model`` for ``images``, in model order.

    Args:
        model: any module built from :class:`SelfAttention2d` layers (an attnconv model, a
            converted conv, a bare layer); ``model(images)`` must run. Its train/eval mode is
            used as it is (call ``model.eval()`` first for dropout-free features); the maps are
            the probabilities *before* attention dropout.
        images: the model's input, batched along axis 0 (normalised images ``(N, C, H, W)`` for
            the registry's models, channels-last tokens ``(N, H, W, C)`` for a bare layer).
        batch_size: images per forward pass.
        device: where the recorded maps are stored (CPU by default: they are large).

    Returns:
        One tensor per layer of shape ``(N, heads, H, W, H, W)`` on ``device``, ``H x W`` the
        token grid that layer attends over; every map sums to 1 over the last two axes. A
        positional-only layer attends the same way for every image: its map is computed once
        and returned as an ``expand``-ed view of that one map (stride 0 along the batch axis,
        no extra memory; call ``.contiguous()`` before writing into it).

    Raises:
        ValueError: ``model`` holds no ``SelfAttention2d``, ``images`` is empty, or a layer is
            not called exactly once per forward pass (a shared layer cannot be attributed).

    The model is left unchanged (wrappers removed, even if the forward pass raises) and runs
    under ``torch.no_grad()``.
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} holds no SelfAttention2d layer; there is no "
                         f"attention to record (a CNN? convert it with "
                         f"attnconv.theorem.convert_model first)")
    if not isinstance(images, Tensor) or images.dim() == 0 or len(images) == 0:
        raise ValueError("record_attention needs a non-empty batch of images (N, ...)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store = torch.device(device)
    model_device = _model_device(model)
    per_layer: list[list[Tensor]] = [[] for _ in layers]
    with torch.no_grad(), _Recorder(layers, store) as recorder:
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size].to(model_device)
            recorder.maps = [[] for _ in layers]
            model(batch)
            for index, attn in enumerate(recorder.one_per_layer("record_attention")):
                layer = layers[index][1]
                if layer.positional_only and per_layer[index]:
                    continue  # the same map for every image: keep the first one only
                per_layer[index].append(attn)
    out = []
    for (_, layer), maps in zip(layers, per_layer, strict=True):
        if layer.positional_only:
            attn = maps[0][:1]  # (1, heads, H, W, H, W)
            out.append(attn.expand(len(images), *attn.shape[1:]))  # (N, heads, H, W, H, W)
        else:
            out.append(torch.cat(maps))  # (N, heads, H, W, H, W)
    return out


def positional_attention(layer: SelfAttention2d, grid: tuple[int, int]) -> Tensor:
    """A positional-only layer's attention on an ``H x W`` token grid, ``(heads, H, W, H, W)``.

    No image is needed: the attention depends on the shifts ``k - q`` only. It is what the
    layer's own ``forward(x, return_attention=True)`` returns for any input on that grid.

    Raises:
        ValueError: the layer has content attention (its maps depend on the image).
    """
    if not layer.positional_only:
        raise ValueError("this layer has content attention: its maps depend on the image; "
                         "record them with record_attention(model, images)")
    height, width = grid
    param = next(layer.parameters())
    x = torch.zeros(1, height, width, layer.dim, dtype=param.dtype, device=param.device)
    with torch.no_grad(), eval_mode(layer):
        _, attn = layer(x, return_attention=True)  # (1, heads, H, W, H, W)
    return attn[0]


def load_test_images(meta: dict[str, Any], count: int,
                     data_dir: str | None = None) -> tuple[Tensor, Tensor]:
    """The first ``count`` test images of a checkpoint's dataset, normalised and raw.

    Args:
        meta: the checkpoint metadata from :func:`attnconv.train.model_io.load_model`
            (``dataset``, ``mean``, ``std`` and ``config.data_dir`` are used).
        count: how many images (all of them if there are fewer).
        data_dir: where the dataset files are (default: the training run's ``data_dir``).

    Returns:
        ``(normalised float32 (N, C, H, W), raw uint8 (N, C, H, W))``.
    """
    from attnconv.data import load_dataset, normalize

    if count < 1:
        raise ValueError(f"the number of images must be >= 1, got {count}")
    data_dir = data_dir or (meta.get("config") or {}).get("data_dir")
    arrays = load_dataset(meta["dataset"], "test", data_dir)
    raw = torch.from_numpy(arrays.images[:count]).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return normalize(raw, meta["mean"], meta["std"]), raw
