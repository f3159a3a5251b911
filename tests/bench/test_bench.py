"""``attnconv bench``: the whole measuring logic on a toy configuration (numbers not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attnconv.bench import peak_memory, quick_config
from attnconv.cli import main


def test_bench_tiny_writes_table_and_json(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--tiny", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Layers" in printed and "## Models" in printed and "## Targets" in printed
    result = json.loads(out.read_text())
    assert set(result) >= {"config", "machine", "peak", "layers", "models", "targets", "notes",
                           "seconds"}
    assert result["peak"]["fp32_gflops"] > 0
    encodings = {r["encoding"] for r in result["layers"]}
    assert encodings == {"conv3x3", "quadratic", "quadratic-full", "learned", "learned+content",
                         "learned+content@fused"}
    for row in result["layers"]:
        if row["encoding"] == "conv3x3":
            continue
        for key in ("ref_fwd_s", "fast_fwd_s", "ref_fwd_bwd_s", "fast_fwd_bwd_s",
                    "ref_mixing_fwd_bwd_s", "fast_mixing_fwd_bwd_s", "projection_fwd_bwd_s",
                    "speedup_fwd_bwd", "mixing_speedup_fwd_bwd", "fast_vs_conv_fwd_bwd",
                    "max_abs_diff", "ref_peak_bytes", "fast_peak_bytes", "fast_algorithm"):
            assert key in row, key
        assert row["max_abs_diff"] < 1e-4
    models = {(r["model"], r["precision"], r.get("attn_dropout")) for r in result["models"]}
    assert ("sa-quadratic", "fp32", 0.1) in models and ("sa-quadratic", "fp32", 0.0) in models
    assert ("sa-quadratic", "bf16", 0.0) in models and ("resnet18", "fp32", None) in models
    sa = next(r for r in result["models"] if r["model"] == "sa-quadratic")
    for key in ("ref_train_images_s", "fast_train_images_s", "train_speedup",
                "ref_infer_images_s", "fast_infer_images_s", "ref_train_peak_bytes",
                "fast_train_peak_bytes", "fast_train_gflops", "fast_macs_per_image"):
        assert key in sa, key
    [shared] = result["batch_dropout"]  # tiny: one batch
    assert shared["batch"] == 2 and shared["fast_algorithm"] == "dense"
    for key in ("plain_train_images_s", "fast_train_images_s", "per_image_train_images_s",
                "speedup_vs_plain", "speedup_vs_per_image"):
        assert shared[key] > 0, key
    assert "## Batch-shared attention dropout" in printed
    labels = [t["target"] for t in result["targets"]]
    for needed in ("<= 1.25", "sa-learned-content fp32 training speed-up",
                   "sa-learned-content fp32 inference speed-up", "attention dropout 0.1"):
        assert any(needed in label for label in labels), (needed, labels)
    assert len(labels) == len(set(labels))
    assert "plain dense at batch 2" in result["targets"][-1]["target"]
    assert all({"target", "value", "reached"} <= set(t) for t in result["targets"])


def test_quick_config_is_smaller_than_full() -> None:
    cfg = quick_config("cpu")
    assert cfg.iters <= 2 and cfg.model_batch < 32 and len(cfg.layer_sizes) == 2
    assert max(cfg.dropout_batches) < 32 and cfg.dropout_iters <= 2


def test_plain_dense_model_is_the_fast_model_under_the_same_mask() -> None:
    """The benchmark's plain dense formulation computes what the fast model computes."""
    import torch

    from attnconv.bench import plain_dense_model
    from attnconv.models import create_model

    small = {"hidden_size": 8, "num_layers": 2, "heads": 2, "ffn_size": 16, "image_size": 8,
             "dropout": 0.0, "attn_dropout": 0.3}
    torch.manual_seed(0)
    fast = create_model("sa-quadratic", **small).double().train()
    torch.manual_seed(0)
    plain = plain_dense_model("sa-quadratic", **small).double().train()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(1)
    y_fast = fast(x)
    torch.manual_seed(1)
    y_plain = plain(x)
    torch.testing.assert_close(y_fast, y_plain, atol=1e-12, rtol=1e-10)
    assert not torch.allclose(y_fast, fast.eval()(x))  # the dropout did act


def test_peak_memory_sees_a_large_allocation() -> None:
    import torch

    peak = peak_memory(lambda: torch.ones(64 * 2**20 // 4).sum(), torch.device("cpu"))
    if peak is not None:  # None where /proc is unavailable
        assert peak >= 48 * 2**20


def test_cuda_request_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["bench", "--tiny", "--device", "cuda"]) == 1
    assert "no CUDA device" in capsys.readouterr().err
