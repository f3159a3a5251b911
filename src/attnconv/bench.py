"""``attnconv bench``: how fast the exact attention algorithms are, measured in one run.

One process runs everything once and reports a table and JSON. Every time is the median of
repeated timed iterations after warm-up iterations; every comparison is a ratio of two numbers
measured in the same run, the two sides alternating iteration by iteration
(:func:`interleaved_times`) so that a change of machine load hits both alike. Three parts:

* **machine**: CPU model / GPU, threads, torch version, load average, and the achieved
  matrix-product peak (a large fp32 and bf16 GEMM), the yardstick of every GFLOP/s figure.
* **layers**: :class:`~attnconv.layers.SelfAttention2d` at the paper's size (dim 400, 9 heads of
  full width, 16x16 tokens, batch 32) and at 32x32 and 64x64 tokens, for each encoding:
  forward and forward+backward time of the reference (``impl="reference"``) and of the
  automatic fast path, split into the attention mixing and the output projection, the speed-up,
  the largest output difference, and ``Conv2d(400, 400, 3, padding=1)`` on the same tensor as
  the floor. The projection is timed alone (``Linear(heads D, D)`` on a tensor of the mixed
  heads' shape), alternating with the two layers and the conv; mixing = layer - projection
  (for the fast path, whose projection runs fused inside the same chunks, this split is by
  subtraction).
* **models**: training steps (forward, backward, SGD) and inference per second for each paper
  model with the reference and with the fast paths, fp32 and bf16 autocast, and ResNet18; the
  peak memory of a training step; achieved GFLOP/s (:func:`attnconv.flops.count_macs`, attention
  products included, x3 for a training step) against the measured peak.
* **batch-shared dropout**: ``sa-quadratic`` training steps (fp32, attention dropout 0.1 with
  one mask per batch, the authors' semantics) with the fast paths, against the plain dense
  formulation (:class:`PlainDenseAttention`: one ``(heads, N, N)`` probability tensor, dropout
  on it, one product with the values, ``Linear(heads D, D)``) and against per-image masks
  (``attn_dropout_mode="probabilities"``), the three alternating step by step, at each batch
  of ``BenchConfig.dropout_batches``.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (reset before each measurement). On a
CPU torch keeps no allocator statistics, so we measure the process's peak resident set size:
``malloc_trim(0)`` returns freed heap pages to the OS, writing ``5`` to ``/proc/self/clear_refs``
resets the kernel's high-water mark ``VmHWM`` to the current RSS, and after the step
``VmHWM - RSS_before`` is the peak growth. It counts every page the step touched (tensors,
allocator slack, library workspaces) and can only undercount by memory that a previous step
freed but the allocator kept and reused. Where ``/proc`` is missing the field is ``null``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attnconv
from attnconv.atomic import atomic_open
from attnconv.flops import count_macs
from attnconv.layers import SelfAttention2d, attention_impl
from attnconv.models import create_model
from attnconv.train.config import TrainConfig, load_config
from attnconv.train.engine import compile_model

ENCODINGS = ("quadratic", "quadratic-full", "learned", "learned+content",
             "learned+content@fused")
"""Layer rows: an encoding, ``+content`` for content attention, ``@impl`` to force the fast side."""
PAPER_MODELS = ("sa-quadratic", "sa-learned", "sa-learned-content")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class BenchConfig:
    """What to measure. :func:`full_config`, :func:`quick_config`, :func:`tiny_config` fill it."""

    mode: str = "full"
    device: str = "cpu"
    dim: int = 400
    heads: int = 9
    layer_sizes: list[tuple[int, int]] = field(  # (tokens per side, batch)
        default_factory=lambda: [(16, 32), (32, 8), (64, 1)])
    encodings: tuple[str, ...] = ENCODINGS
    warmup: int = 1
    iters: int = 3
    model_batch: int = 32
    models: tuple[str, ...] = (*PAPER_MODELS, "resnet18")
    model_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    image_size: int = 32
    bf16_models: tuple[str, ...] = ("sa-quadratic", "resnet18")
    bf16_batch: int = 2
    bf16_min_ratio: float = 0.05  # skip bf16 models when bf16 GEMMs are slower than this x fp32
    peak_size: int = 2048
    dropout_batches: tuple[int, ...] = (8, 32)  # batch-shared dropout comparison
    dropout_iters: int = 3
    compile_models: tuple[str, ...] = ("sa-quadratic",)  # torch.compile against eager training
    compile_backend: str = "inductor"
    small_network: bool = True  # the demo-size SA network against a same-size ResNet18
    small_iters: int = 10


def full_config(device: str) -> BenchConfig:
    """Every size at the paper's width (several minutes on a 2-core CPU); on CUDA, bf16 models
    run at the fp32 batch (a GPU is not compute-bound at batch 2)."""
    return BenchConfig(mode="full", device=device,
                       bf16_batch=32 if device == "cuda" else BenchConfig.bf16_batch)


def quick_config(device: str) -> BenchConfig:
    """Fewer sizes, iterations and images: under 3 minutes on a 2-core CPU."""
    return BenchConfig(mode="quick", device=device, layer_sizes=[(16, 8), (32, 2)],
                       encodings=ENCODINGS[:4],
                       warmup=1, iters=2, model_batch=4, bf16_batch=1,
                       models=("sa-quadratic", "sa-learned-content", "resnet18"),
                       bf16_models=("sa-quadratic",), peak_size=1024,
                       dropout_batches=(2, 8), dropout_iters=2,
                       compile_models=())  # compiling takes minutes on a CPU


def tiny_config(device: str) -> BenchConfig:
    """A toy configuration that exercises every code path in seconds (tests)."""
    small = {"hidden_size": 16, "num_layers": 1, "heads": 2, "ffn_size": 32}
    return BenchConfig(
        mode="tiny", device=device, dim=16, heads=2, layer_sizes=[(4, 2)], warmup=1, iters=1,
        encodings=ENCODINGS,
        model_batch=2, models=("sa-quadratic", "sa-learned-content", "resnet18"),
        model_overrides={"sa-quadratic": small, "sa-learned-content": small,
                         "resnet18": {"base_width": 4}},
        image_size=8, bf16_models=("sa-quadratic",), bf16_batch=1, bf16_min_ratio=0.0,
        peak_size=64, dropout_batches=(2,), dropout_iters=1, small_network=False,
        compile_backend="eager")  # the compile path without code generation (seconds)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time in seconds of ``iters`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    samples = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def interleaved_times(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
                      iters: int) -> dict[str, float]:
    """Median wall time of each function, the functions run alternately iteration by iteration.

    Alternating (a, b, a, b, ...) exposes both sides of a comparison to the same machine load,
    which matters on a shared machine more than the number of iterations.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(iters, 1)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Peak memory growth in bytes while ``fn()`` runs (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    base = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if base is None or peak is None:
        return None
    return max(0, peak - base) * 1024


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Achieved GFLOP/s of a ``size``-cubed matrix product: the best of a few (a peak)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        _sync(device)
        seconds = time.perf_counter() - start
        best = min(best, seconds)
        if seconds > 2.0:  # a slow dtype on this machine: one sample is enough
            break
    return 2 * size**3 / best / 1e9


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()``)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions, hardware, threads and the load average now."""
    info: dict[str, Any] = {
        "attnconv": attnconv.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(), "device": str(device),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError, AttributeError):
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return info


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------------------------
# Layer level
# --------------------------------------------------------------------------------------------
def _make_layer(encoding: str, cfg: BenchConfig, side: int,
                device: torch.device) -> tuple[SelfAttention2d, str]:
    """The layer of a row spec and the ``impl`` of its fast side (``"auto"`` unless forced)."""
    spec, _, fast_impl = encoding.partition("@")
    name, _, extra = spec.partition("+")
    torch.manual_seed(0)
    layer = SelfAttention2d(cfg.dim, cfg.heads, encoding=name, content=extra == "content",
                            max_size=side).to(device)
    return layer, fast_impl or "auto"


def _fwd(module: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], Any]:
    def run() -> None:
        with torch.no_grad():
            module(x)
    return run


def _fwd_bwd(module: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[], Any]:
    def run() -> None:
        module(x).sum().backward()
    return run


def bench_layer_size(cfg: BenchConfig, side: int, batch: int,
                     device: torch.device) -> list[dict[str, Any]]:
    """Rows for every encoding at ``side x side`` tokens, plus the conv floor."""
    w, it = cfg.warmup, cfg.iters
    x = torch.randn(batch, side, side, cfg.dim, device=device, requires_grad=True)
    proj = nn.Linear(cfg.heads * cfg.dim, cfg.dim).to(device)
    mixed = torch.randn(batch, side, side, cfg.heads * cfg.dim, device=device,
                        requires_grad=True)
    conv = nn.Conv2d(cfg.dim, cfg.dim, 3, padding=1).to(device)
    xc = x.detach().permute(0, 3, 1, 2).contiguous().requires_grad_(True)  # (B, C, H, W)
    conv_mem = peak_memory(_fwd_bwd(conv, xc), device)
    rows = [{"size": side, "batch": batch, "encoding": "conv3x3", "algorithm": "conv2d",
             "fwd_s": [], "fwd_bwd_s": [], "peak_bytes": conv_mem}]
    for encoding in cfg.encodings:
        layer, fast_impl = _make_layer(encoding, cfg, side, device)
        row: dict[str, Any] = {"size": side, "batch": batch, "encoding": encoding}
        impls = {"ref": "reference", "fast": fast_impl}

        def run(impl: str, backward: bool, layer: SelfAttention2d = layer) -> Callable[[], Any]:
            def step() -> None:
                layer.impl = impl
                if backward:
                    layer(x).sum().backward()
                else:
                    with torch.no_grad():
                        layer(x)
            return step

        # Reference, fast path, the projection alone and the conv, alternating.
        for part, backward in (("fwd", False), ("fwd_bwd", True)):
            fns = {key: run(impl, backward) for key, impl in impls.items()}
            fns["projection"] = (_fwd_bwd if backward else _fwd)(proj, mixed)
            fns["conv"] = (_fwd_bwd if backward else _fwd)(conv, xc)
            times = interleaved_times(fns, device, w, it)
            for key, seconds in times.items():
                row[f"{key}_{part}_s"] = seconds
            rows[0][f"{part}_s"].append(times["conv"])
        outputs = {}
        for key, impl in impls.items():
            layer.impl = impl
            row[f"{key}_algorithm"] = layer.algorithm(side * side)  # training (gradients on)
            with torch.no_grad():
                row[f"{key}_algorithm_inference"] = layer.algorithm(side * side)
                outputs[key] = layer(x)
            row[f"{key}_peak_bytes"] = peak_memory(run(impl, True), device)
            for part in ("fwd", "fwd_bwd"):
                row[f"{key}_mixing_{part}_s"] = max(
                    row[f"{key}_{part}_s"] - row[f"projection_{part}_s"], 0.0)
        x.grad = None
        layer.zero_grad(set_to_none=True)
        row["max_abs_diff"] = (outputs["fast"] - outputs["ref"]).abs().max().item()
        for part in ("fwd", "fwd_bwd"):
            row[f"speedup_{part}"] = _ratio(row[f"ref_{part}_s"], row[f"fast_{part}_s"])
            row[f"mixing_speedup_{part}"] = _ratio(row[f"ref_mixing_{part}_s"],
                                                   row[f"fast_mixing_{part}_s"])
        row["fast_vs_conv_fwd_bwd"] = _ratio(row["fast_fwd_bwd_s"], row["conv_fwd_bwd_s"])
        row["memory_ratio"] = _ratio(row["fast_peak_bytes"], row["ref_peak_bytes"])
        rows.append(row)
        del layer, outputs
        gc.collect()
    for part in ("fwd", "fwd_bwd"):  # the conv row: median over every interleaved measurement
        rows[0][f"{part}_s"] = statistics.median(rows[0][f"{part}_s"])
    return rows


# --------------------------------------------------------------------------------------------
# Model level
# --------------------------------------------------------------------------------------------
def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
                device: torch.device, precision: str) -> Callable[[], None]:
    def step() -> None:
        with _autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def _infer(model: nn.Module, x: Tensor, device: torch.device,
           precision: str) -> Callable[[], None]:
    def run() -> None:
        with torch.no_grad(), _autocast(device, precision):
            model(x)
    return run


def _model_macs(model: nn.Module, image: tuple[int, int, int], attention: str) -> int:
    return count_macs(model, image, attention=attention).macs


def bench_model(cfg: BenchConfig, name: str, variant: dict[str, Any], device: torch.device,
                precision: str, batch: int) -> dict[str, Any]:
    """Training-step and inference throughput of one model, reference vs fast attention."""
    overrides = {**cfg.model_overrides.get(name, {}), **variant}
    torch.manual_seed(0)
    model = create_model(name, image_size=cfg.image_size, **overrides).to(device)
    image = (3, cfg.image_size, cfg.image_size)
    x = torch.randn(batch, *image, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    is_sa = any(isinstance(m, SelfAttention2d) for m in model.modules())
    row: dict[str, Any] = {"model": name, "precision": precision, "batch": batch,
                           **{k: v for k, v in variant.items()}}
    w, it = cfg.warmup, cfg.iters
    impls = {"ref": "reference", "fast": "auto"} if is_sa else {"fast": "auto"}

    def train(impl: str) -> Callable[[], None]:
        step = _train_step(model, opt, x, y, device, precision)

        def run() -> None:
            with attention_impl(impl):
                model.train()
                step()
        return run

    def infer(impl: str) -> Callable[[], None]:
        forward = _infer(model, x, device, precision)

        def run() -> None:
            with attention_impl(impl):
                model.eval()
                forward()
        return run

    train_s = interleaved_times({k: train(i) for k, i in impls.items()}, device, w, it)
    infer_s = interleaved_times({k: infer(i) for k, i in impls.items()}, device, w, it)
    for key, impl in impls.items():
        row[f"{key}_train_images_s"] = batch / train_s[key]
        row[f"{key}_infer_images_s"] = batch / infer_s[key]
        row[f"{key}_train_peak_bytes"] = peak_memory(train(impl), device)
        with attention_impl(impl):
            macs = _model_macs(model, image, "reference" if impl == "reference" else "fast")
        row[f"{key}_macs_per_image"] = macs
        row[f"{key}_train_gflops"] = 3 * 2 * macs * row[f"{key}_train_images_s"] / 1e9
        row[f"{key}_infer_gflops"] = 2 * macs * row[f"{key}_infer_images_s"] / 1e9
    if is_sa:
        row["train_speedup"] = _ratio(row["fast_train_images_s"], row["ref_train_images_s"])
        row["infer_speedup"] = _ratio(row["fast_infer_images_s"], row["ref_infer_images_s"])
        row["train_memory_ratio"] = _ratio(row["fast_train_peak_bytes"],
                                           row["ref_train_peak_bytes"])
    return row


def model_runs(cfg: BenchConfig, peaks: dict[str, float]) -> tuple[list[dict[str, Any]],
                                                                    list[str]]:
    """Which (model, variant, precision, batch) to run; notes on what was skipped."""
    runs: list[dict[str, Any]] = []
    notes: list[str] = []
    for name in cfg.models:
        variants: list[dict[str, Any]] = [{}]
        if name == "sa-quadratic":  # the paper's attention dropout 0.1, and without it
            variants = [{"attn_dropout": 0.1}, {"attn_dropout": 0.0}]
        for variant in variants:
            runs.append({"name": name, "variant": variant, "precision": "fp32",
                         "batch": cfg.model_batch})
    bf16_ratio = peaks.get("bf16_gflops", 0.0) / max(peaks.get("fp32_gflops", 1.0), 1e-9)
    if bf16_ratio < cfg.bf16_min_ratio:
        notes.append(f"bf16 model runs skipped: a bf16 matrix product runs at "
                     f"{peaks.get('bf16_gflops', 0):.1f} GFLOP/s, {1 / max(bf16_ratio, 1e-9):.0f}x "
                     f"slower than fp32 on this machine (no native bf16 instructions)")
    else:
        for name in cfg.bf16_models:
            variant = {"attn_dropout": 0.0} if name == "sa-quadratic" else {}
            runs.append({"name": name, "variant": variant, "precision": "bf16",
                         "batch": cfg.bf16_batch})
    return runs, notes


# --------------------------------------------------------------------------------------------
# Batch-shared attention dropout against the plain dense formulation
# --------------------------------------------------------------------------------------------
class PlainDenseAttention(nn.Module):
    """Benchmark-only: positional-only attention written the plain dense way (authors' code).

    One ``(heads, N, N)`` probability tensor for the batch (from the wrapped layer's reference
    logits), ``F.dropout`` on it (one mask shared by every image), one product with the values
    (``einsum``, identity values), then the layer's own ``Linear(heads D, D)``.
    """

    def __init__(self, attn: SelfAttention2d) -> None:
        super().__init__()
        self.attn = attn

    def check_size(self, height: int, width: int) -> None:
        """As :meth:`SelfAttention2d.check_size` (the model validates its input with it)."""
        self.attn.check_size(height, width)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, H, W, D)`` to ``(B, H, W, D_out)``."""
        a = self.attn
        b, h, w, d = x.shape
        n = h * w
        probs = a.attention(x).reshape(a.heads, n, n)  # (heads, N, N), no batch axis
        probs = F.dropout(probs, a.attn_dropout.p, a.training)
        mixed = torch.einsum("hqk,bkd->bqhd", probs, x.reshape(b, n, d))  # (B, N, heads, D)
        return a.out(mixed.reshape(b, h, w, a.heads * d))


def plain_dense_model(name: str, **overrides: Any) -> nn.Module:
    """``create_model(name, ...)`` with every attention layer run by :class:`PlainDenseAttention`
    (same parameters, same initial values for the same seed)."""
    model = create_model(name, **overrides)
    for block in model.layers:  # type: ignore[union-attr]
        block.attn = PlainDenseAttention(block.attn)
    return model


def bench_batch_dropout(cfg: BenchConfig, device: torch.device, batch: int) -> dict[str, Any]:
    """Training images/s of ``sa-quadratic`` (attention dropout 0.1, one mask per batch) with
    the fast paths, the plain dense formulation and per-image masks, alternating."""
    name = "sa-quadratic"
    overrides = {**cfg.model_overrides.get(name, {}), "attn_dropout": 0.1,
                 "image_size": cfg.image_size}
    models: dict[str, nn.Module] = {}
    for key, mode in (("fast", "batch"), ("plain", "batch"), ("per_image", "probabilities")):
        torch.manual_seed(0)
        make = plain_dense_model if key == "plain" else create_model
        models[key] = make(name, attn_dropout_mode=mode, **overrides).to(device)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def train(model: nn.Module) -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        step = _train_step(model, opt, x, y, device, "fp32")

        def run() -> None:
            model.train()
            step()
        return run

    times = interleaved_times({k: train(m) for k, m in models.items()}, device, cfg.warmup,
                              cfg.dropout_iters)
    row: dict[str, Any] = {"model": name, "batch": batch, "attn_dropout": 0.1,
                           "fast_algorithm": models["fast"].layers[0].attn.algorithm(
                               (cfg.image_size // 2) ** 2)}
    for key in models:
        row[f"{key}_train_images_s"] = batch / times[key]
    row["speedup_vs_plain"] = _ratio(times["plain"], times["fast"])
    row["speedup_vs_per_image"] = _ratio(times["per_image"], times["fast"])
    return row


def bench_compile(cfg: BenchConfig, name: str, device: torch.device) -> dict[str, Any]:
    """Training images/s of ``name`` eager and under ``torch.compile`` (fp32, fast paths, the
    model's own dropout), alternating; ``compile_s`` is the first compiled step, compiling
    included, less one eager step."""
    overrides = {**cfg.model_overrides.get(name, {}), "image_size": cfg.image_size}
    torch.manual_seed(0)
    model = create_model(name, **overrides).to(device).train()
    batch = cfg.model_batch
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    compiled = compile_model(model, device, cfg.compile_backend)  # shares model's parameters
    steps = {"eager": _train_step(model, opt, x, y, device, "fp32"),
             "compiled": _train_step(compiled, opt, x, y, device, "fp32")}
    row: dict[str, Any] = {"model": name, "precision": "fp32", "batch": batch,
                           "backend": cfg.compile_backend}
    _sync(device)
    start = time.perf_counter()
    try:
        steps["compiled"]()
    except Exception as err:  # e.g. no C compiler or Triton: say so, keep the other results
        return {**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    _sync(device)
    first = time.perf_counter() - start
    times = interleaved_times(steps, device, cfg.warmup, cfg.iters)
    return {**row, "compile_s": max(first - times["eager"], 0.0),
            "eager_train_images_s": batch / times["eager"],
            "compiled_train_images_s": batch / times["compiled"],
            "speedup": _ratio(times["eager"], times["compiled"])}


SMALL_CONFIGS = ("demo-sa-quadratic", "demo-cnn")
"""The shipped configs of the demo's two networks: the small-network benchmark times what
``attnconv demo`` trains (2 x 16 Gaussian heads, 44.2k parameters, against a CIFAR ResNet18 of
base width 4, 44.6k), read from one source."""


def small_network_configs() -> tuple[TrainConfig, TrainConfig]:
    """The demo's SA and CNN training configs (:data:`SMALL_CONFIGS`)."""
    sa, cnn = (load_config(name) for name in SMALL_CONFIGS)
    return sa, cnn


def bench_small_network(cfg: BenchConfig, device: torch.device, batch: int = 50,
                        iters: int | None = None) -> dict[str, Any]:
    """Training steps (fp32, SGD) of the demo-size SA network and a same-size ResNet18 on
    28x28 grey images, alternating; the SA network also with its separable layers forced to
    the "mix, then project" kernel (what ran before the "project, then mix" one)."""
    from attnconv.layers.separable import separable_kernel

    sa_cfg, cnn_cfg = small_network_configs()
    torch.manual_seed(0)
    common = {"in_chans": 1, "image_size": 28}
    sa = create_model(sa_cfg.model, **common, **sa_cfg.model_args).to(device)
    cnn = create_model(cnn_cfg.model, **common, **cnn_cfg.model_args).to(device)
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def train(model: nn.Module, kernel: str = "auto") -> Callable[[], None]:
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        step = _train_step(model, opt, x, y, device, "fp32")

        def run() -> None:
            model.train()
            with separable_kernel(kernel):
                step()
        return run

    times = interleaved_times({"sa": train(sa), "sa_mix_project": train(sa, "mix-project"),
                               "cnn": train(cnn)}, device, cfg.warmup,
                              iters or cfg.small_iters)
    params = {key: sum(p.numel() for p in m.parameters()) for key, m in (("sa", sa),
                                                                         ("cnn", cnn))}
    row: dict[str, Any] = {"sa_model": sa_cfg.model, "sa_config": dict(sa_cfg.model_args),
                           "cnn_model": cnn_cfg.model, "cnn_config": dict(cnn_cfg.model_args),
                           "batch": batch,
                           "image": [1, 28, 28], "sa_params": params["sa"],
                           "cnn_params": params["cnn"],
                           "sa_algorithm": sa.layers[0].attn.algorithm(14 * 14)}
    for key, seconds in times.items():
        row[f"{key}_train_images_s"] = batch / seconds
    row["sa_vs_cnn_train"] = _ratio(times["cnn"], times["sa"])
    row["kernel_speedup"] = _ratio(times["sa_mix_project"], times["sa"])
    return row


# --------------------------------------------------------------------------------------------
# Targets and the whole run
# --------------------------------------------------------------------------------------------
def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def evaluate_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was reached."""
    layers, models = result["layers"], result["models"]
    sizes = sorted({r["size"] for r in layers})
    small = sizes[0] if sizes else None
    second = sizes[1] if len(sizes) > 1 else None

    def layer_value(size: int | None, encoding: str, key: str) -> float | None:
        row = _find(layers, size=size, encoding=encoding) if size is not None else None
        return None if row is None else row.get(key)

    def model_value(name: str, key: str, **match: Any) -> float | None:
        row = _find(models, model=name, **match)
        return None if row is None else row.get(key)

    fp32_ref_train = model_value("sa-quadratic", "ref_train_images_s", precision="fp32",
                                 attn_dropout=0.0)
    bf16_fast_train = model_value("sa-quadratic", "fast_train_images_s", precision="bf16")
    bf16_batch = model_value("sa-quadratic", "batch", precision="bf16")
    fp32_batch = model_value("sa-quadratic", "batch", precision="fp32", attn_dropout=0.0)
    specs = [
        (f"quadratic mixing fwd+bwd speed-up at {small}x{small}", ">=", 5.0,
         layer_value(small, "quadratic", "mixing_speedup_fwd_bwd")),
        (f"quadratic mixing fwd+bwd speed-up at {second}x{second}", ">=", 15.0,
         layer_value(second, "quadratic", "mixing_speedup_fwd_bwd")),
        (f"quadratic layer fwd+bwd / Conv2d(3x3) at {small}x{small}", "<=", 1.25,
         layer_value(small, "quadratic", "fast_vs_conv_fwd_bwd")),
        ("sa-quadratic fp32 training speed-up, attention dropout off", ">=", 1.3,
         model_value("sa-quadratic", "train_speedup", precision="fp32", attn_dropout=0.0)),
        ("sa-quadratic fp32 training speed-up, attention dropout 0.1", ">=", 1.0,
         model_value("sa-quadratic", "train_speedup", precision="fp32", attn_dropout=0.1)),
        ("sa-quadratic bf16 fast training / fp32 reference (images/s)", ">=", 2.5,
         _ratio(bf16_fast_train, fp32_ref_train)),
        (f"learned+content layer fwd+bwd speed-up at {second}x{second}", ">=", 2.0,
         layer_value(second, "learned+content", "speedup_fwd_bwd")),
        (f"learned+content layer fwd+bwd speed-up at {small}x{small}", ">=", 1.0,
         layer_value(small, "learned+content", "speedup_fwd_bwd")),
        ("sa-quadratic training-step peak memory, fast / reference (dropout 0.1)", "<=", 0.7,
         model_value("sa-quadratic", "train_memory_ratio", precision="fp32", attn_dropout=0.1)),
        ("sa-quadratic training-step peak memory, fast / reference (dropout off)", "<=", 0.7,
         model_value("sa-quadratic", "train_memory_ratio", precision="fp32", attn_dropout=0.0)),
        ("sa-learned-content fp32 training speed-up (whole model)", ">=", 1.5,
         model_value("sa-learned-content", "train_speedup", precision="fp32")),
        ("sa-learned-content fp32 inference speed-up (whole model)", ">=", 1.5,
         model_value("sa-learned-content", "infer_speedup", precision="fp32")),
    ]
    for row in result.get("small_network", []):
        specs.append((f"demo-size SA network fp32 training images/s / same-size ResNet18 "
                      f"(28x28 grey, batch {row['batch']})", ">=", 0.6,
                      row.get("sa_vs_cnn_train")))
    for row in result.get("batch_dropout", []):
        specs.append((f"sa-quadratic fp32 training, batch-shared attention dropout, fast / "
                      f"plain dense at batch {row['batch']}", ">=", 1.3,
                      row.get("speedup_vs_plain")))
    targets = []
    for label, op, bound, value in specs:
        reached = None if value is None else (value >= bound if op == ">=" else value <= bound)
        targets.append({"target": f"{label} {op} {bound}", "value": value, "reached": reached})
    if bf16_batch is not None and fp32_batch is not None and bf16_batch != fp32_batch:
        targets[5]["note"] = f"bf16 at batch {bf16_batch}, fp32 at batch {fp32_batch}"
    return targets


def run_bench(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement of ``cfg``; return the JSON-ready result."""
    log = log or (lambda message: None)
    device = torch.device(cfg.device)
    start = time.perf_counter()
    result: dict[str, Any] = {"config": asdict(cfg), "machine": machine_info(device)}
    log("matrix-product peak")
    peaks = {"fp32_gflops": matmul_peak(device, torch.float32, cfg.peak_size)}
    bf16_size = cfg.peak_size if device.type == "cuda" else min(cfg.peak_size, 512)
    peaks["bf16_gflops"] = matmul_peak(device, torch.bfloat16, bf16_size)
    peaks["bf16_size"], peaks["fp32_size"] = bf16_size, cfg.peak_size
    result["peak"] = peaks
    layers: list[dict[str, Any]] = []
    for side, batch in cfg.layer_sizes:
        log(f"layers at {side}x{side} tokens, batch {batch}")
        layers += bench_layer_size(cfg, side, batch, device)
    result["layers"] = layers
    runs, notes = model_runs(cfg, peaks)
    models = []
    for run in runs:
        log(f"model {run['name']} {run['variant']} {run['precision']} batch {run['batch']}")
        models.append(bench_model(cfg, run["name"], run["variant"], device, run["precision"],
                                  run["batch"]))
        gc.collect()
    for row in models:
        peak = peaks["bf16_gflops" if row["precision"] == "bf16" else "fp32_gflops"]
        for key in ("ref", "fast"):
            if f"{key}_train_gflops" in row:
                row[f"{key}_train_fraction_of_peak"] = row[f"{key}_train_gflops"] / peak
    result["models"] = models
    result["batch_dropout"] = []
    for batch in cfg.dropout_batches:
        log(f"batch-shared attention dropout: sa-quadratic fast / plain dense, batch {batch}")
        result["batch_dropout"].append(bench_batch_dropout(cfg, device, batch))
        gc.collect()
    result["compile"] = []
    for name in cfg.compile_models:
        log(f"torch.compile ({cfg.compile_backend}) against eager: {name} training")
        result["compile"].append(bench_compile(cfg, name, device))
        gc.collect()
    result["small_network"] = []
    if cfg.small_network:
        log("small network: demo-size SA network against a same-size ResNet18, training")
        result["small_network"].append(bench_small_network(cfg, device))
        gc.collect()
    result["notes"] = notes
    result["targets"] = evaluate_targets(result)
    with contextlib.suppress(OSError, AttributeError):
        result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    result["seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.1f}" if value < 0.01 else f"{value * 1e3:.0f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _layers_section(layers: list[dict[str, Any]]) -> list[str]:
    """The layer table: reference and fast attention (and the Conv2d floor), in ms."""
    lines = ["## Layers (times in ms, medians; mixing = layer - projection)", "",
             "| tokens | batch | encoding | algorithm | ref fwd | fast fwd | ref fwd+bwd | "
             "fast fwd+bwd | speed-up fwd+bwd | ref mixing fwd+bwd | fast mixing fwd+bwd | "
             "mixing speed-up | projection fwd+bwd | fast / conv | max abs diff | "
             "ref peak MB | fast peak MB |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
             "---:|"]
    for r in layers:
        size = f"{r['size']}x{r['size']}"
        if r["encoding"] == "conv3x3":
            lines.append(f"| {size} | {r['batch']} | Conv2d(3x3) floor | conv2d | - | "
                         f"{_ms(r['fwd_s'])} | - | {_ms(r['fwd_bwd_s'])} | - | - | - | - | - | "
                         f"1.00x | - | - | {_mb(r['peak_bytes'])} |")
            continue
        algorithm = r["fast_algorithm"]
        if r.get("fast_algorithm_inference", algorithm) != algorithm:
            algorithm = f"{r['fast_algorithm_inference']} (fwd) / {algorithm} (train)"
        lines.append(
            f"| {size} | {r['batch']} | {r['encoding']} | {algorithm} | "
            f"{_ms(r['ref_fwd_s'])} | {_ms(r['fast_fwd_s'])} | {_ms(r['ref_fwd_bwd_s'])} | "
            f"{_ms(r['fast_fwd_bwd_s'])} | {_x(r['speedup_fwd_bwd'])} | "
            f"{_ms(r['ref_mixing_fwd_bwd_s'])} | {_ms(r['fast_mixing_fwd_bwd_s'])} | "
            f"{_x(r['mixing_speedup_fwd_bwd'])} | {_ms(r['projection_fwd_bwd_s'])} | "
            f"{_x(r['fast_vs_conv_fwd_bwd'])} | {r['max_abs_diff']:.1e} | "
            f"{_mb(r['ref_peak_bytes'])} | {_mb(r['fast_peak_bytes'])} |")
    return lines


def _models_section(models: list[dict[str, Any]]) -> list[str]:
    """The model table: training and inference throughput, reference and fast."""
    lines = ["", "## Models (images/s; GFLOP/s counts every product, attention included)", "",
             "| model | precision | attn dropout | batch | ref train | fast train | speed-up | "
             "ref infer | fast infer | speed-up | ref train peak MB | fast train peak MB | "
             "fast train GFLOP/s (% of peak) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in models:
        dropout = r.get("attn_dropout", "-")
        frac = r.get("fast_train_fraction_of_peak")
        lines.append(
            f"| {r['model']} | {r['precision']} | {dropout} | {r['batch']} | "
            f"{_num(r.get('ref_train_images_s'))} | {_num(r.get('fast_train_images_s'))} | "
            f"{_x(r.get('train_speedup'))} | {_num(r.get('ref_infer_images_s'))} | "
            f"{_num(r.get('fast_infer_images_s'))} | {_x(r.get('infer_speedup'))} | "
            f"{_mb(r.get('ref_train_peak_bytes'))} | {_mb(r.get('fast_train_peak_bytes'))} | "
            f"{_num(r.get('fast_train_gflops'))} ({_num(None if frac is None else 100 * frac, 0)}"
            f"%) |")
    return lines


def _batch_dropout_section(batch_dropout: list[dict[str, Any]]) -> list[str]:
    """The table of batch-shared attention dropout against plain and per-image masks."""
    lines = ["", "## Batch-shared attention dropout (sa-quadratic, fp32 training, images/s)",
             "", "| batch | fast algorithm | plain dense | fast | per-image masks (fast) | "
             "fast / plain dense | fast / per-image |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in batch_dropout:
        lines.append(f"| {r['batch']} | {r['fast_algorithm']} | "
                     f"{_num(r['plain_train_images_s'])} | {_num(r['fast_train_images_s'])} | "
                     f"{_num(r['per_image_train_images_s'])} | {_x(r['speedup_vs_plain'])} | "
                     f"{_x(r['speedup_vs_per_image'])} |")
    return lines


def _compile_section(runs: list[dict[str, Any]]) -> list[str]:
    """The torch.compile table: eager against compiled training."""
    lines = ["", "## torch.compile (fp32 training, images/s)", "",
             "| model | batch | backend | eager | compiled | compiled / eager | "
             "compile time s |", "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch']} | {r['backend']} | "
              f"{_num(r.get('eager_train_images_s'))} | "
              f"{_num(r.get('compiled_train_images_s'))} | {_x(r.get('speedup'))} | "
              f"{_num(r.get('compile_s'), 0)} |" + (f" failed: {r['error']}" if
                                                   r.get("error") else "")
              for r in runs]
    return lines


def _small_network_section(small_network: list[dict[str, Any]]) -> list[str]:
    """The small-network table: the demo SA network against ResNet18."""
    lines = ["", "## Small network (fp32 training, 28x28 grey, images/s)", "",
             "| SA network (params) | ResNet18 (params) | batch | SA | SA, mix-then-project "
             "kernel | ResNet18 | SA / ResNet18 |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in small_network:
        lines.append(
            f"| {r['sa_model']} demo ({r['sa_params']}) | {r['cnn_model']} width "
            f"{r['cnn_config']['base_width']} ({r['cnn_params']}) | {r['batch']} | "
            f"{_num(r['sa_train_images_s'])} | {_num(r['sa_mix_project_train_images_s'])} | "
            f"{_num(r['cnn_train_images_s'])} | {_x(r['sa_vs_cnn_train'])} |")
    return lines


def _targets_section(targets: list[dict[str, Any]]) -> list[str]:
    """The targets: each measured value and whether it is reached."""
    lines = ["", "## Targets", "", "| target | measured | reached |", "|---|---:|---|"]
    for t in targets:
        reached = {True: "yes", False: "no", None: "not measured"}[t["reached"]]
        note = f" ({t['note']})" if t.get("note") else ""
        lines.append(f"| {t['target']}{note} | {_num(t['value'], 2)} | {reached} |")
    return lines


def format_result(result: dict[str, Any]) -> str:
    """The result as Markdown tables (what ``attnconv bench`` prints)."""
    m, p = result["machine"], result["peak"]
    lines = [f"# attnconv bench ({result['config']['mode']})", "",
             f"machine: {m.get('gpu') or m['cpu']}, {m['cpu_count']} CPUs, {m['threads']} "
             f"threads, torch {m['torch']}, device {m['device']}, load average "
             f"{m.get('load_average')} -> {m.get('load_average_end')}",
             f"matrix-product peak: fp32 {p['fp32_gflops']:.1f} GFLOP/s ({p['fp32_size']}^3), "
             f"bf16 {p['bf16_gflops']:.1f} GFLOP/s ({p['bf16_size']}^3)", ""]
    lines += _layers_section(result["layers"])
    lines += _models_section(result["models"])
    lines += _batch_dropout_section(result.get("batch_dropout", []))
    if result.get("compile"):
        lines += _compile_section(result["compile"])
    if result.get("small_network"):
        lines += _small_network_section(result["small_network"])
    lines += _targets_section(result["targets"])
    if result["notes"]:
        lines += [""] + [f"- {note}" for note in result["notes"]]
    lines += ["", f"total {result['seconds']:.0f} s"]
    return "\n".join(lines)


def write_json(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``result`` as indented JSON."""
    with atomic_open(path) as f:
        json.dump(result, f, indent=2)
        f.write("\n")


def main_log(message: str) -> None:
    """Progress lines on stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)
