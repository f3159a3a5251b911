"""Locality metrics on hand-made attention, against loops, and on a converted convolution."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from attnconv.analysis import (
    attention_entropy,
    compute_locality,
    conv_likeness,
    mean_distance,
    offset_mass,
    record_attention,
)
from attnconv.analysis.metrics import (
    NEIGHBOUR_OFFSETS,
    coverage_over_training,
    grid_coverage,
)
from attnconv.errors import ShapeError
from attnconv.layers import SelfAttention2d
from attnconv.models import create_model
from attnconv.theorem import conv_to_attention

H, W = 5, 6


def one_hot(shift: tuple[int, int], b: int = 2) -> Tensor:
    """Every query on ``clamp(q + shift)``: ``(b, 1, H, W, H, W)``."""
    a = torch.zeros(b, 1, H, W, H, W, dtype=torch.float64)
    for i, j in itertools.product(range(H), range(W)):
        k = min(max(i + shift[0], 0), H - 1)
        l = min(max(j + shift[1], 0), W - 1)
        a[:, 0, i, j, k, l] = 1.0
    return a


def test_one_hot_shift() -> None:
    a = one_hot((1, -2))
    likeness, offsets = conv_likeness(a)
    assert likeness.tolist() == [1.0]
    assert offsets.tolist() == [[1, -2]]
    # Queries at least 2 from the border all reach q + (1, -2): exact distance sqrt(5).
    assert mean_distance(a, margin=2).item() == pytest.approx(math.sqrt(5), abs=1e-12)
    assert attention_entropy(a).tolist() == [0.0]
    mass = offset_mass(a)  # (1, 2H - 1, 2W - 1)
    assert mass.shape == (1, 2 * H - 1, 2 * W - 1)
    assert mass[0, 1 + H - 1, -2 + W - 1] == 1.0
    assert torch.isnan(mass).sum() == 0  # every offset has some query on a 5x6 grid


def test_uniform_attention() -> None:
    a = torch.full((3, 2, H, W, H, W), 1.0 / (H * W), dtype=torch.float64)
    assert torch.allclose(attention_entropy(a), torch.full((2,), math.log(H * W), dtype=a.dtype))
    likeness, _ = conv_likeness(a)
    assert torch.allclose(likeness, torch.full((2,), 1.0 / (H * W), dtype=a.dtype))
    # Mean distance: the average distance between two pixels of the grid.
    pairs = list(itertools.product(itertools.product(range(H), range(W)), repeat=2))
    expected = sum(math.dist(p, q) for p, q in pairs) / len(pairs)
    assert torch.allclose(mean_distance(a), torch.full((2,), expected, dtype=a.dtype))


def test_two_offsets_half_each() -> None:
    a = 0.5 * one_hot((0, 0)) + 0.5 * one_hot((0, 1))  # self and right neighbour
    # Away from the last column both offsets exist: mass 1/2 on each, entropy log 2.
    assert conv_likeness(a, margin=1)[0].item() == pytest.approx(0.5)
    assert attention_entropy(a, margin=1).item() == pytest.approx(math.log(2))
    assert mean_distance(a, margin=1).item() == pytest.approx(0.5)


def reference_metrics(a: Tensor, margin: int) -> tuple[list[float], list[float], list[float]]:
    """The definitions, one query and one key at a time."""
    b, heads, h, w = a.shape[:4]
    queries = [(i, j) for i in range(margin, h - margin) for j in range(margin, w - margin)]
    dist, ent, like = [], [], []
    for head in range(heads):
        d = e = 0.0
        for n, (i, j) in itertools.product(range(b), queries):
            for k, l in itertools.product(range(h), range(w)):
                p = float(a[n, head, i, j, k, l])
                d += p * math.hypot(k - i, l - j)
                e -= p * math.log(p) if p > 0 else 0.0
        dist.append(d / (b * len(queries)))
        ent.append(e / (b * len(queries)))
        best = 0.0
        for dr in range(-((h - 1) // 2), (h - 1) // 2 + 1):
            for dc in range(-((w - 1) // 2), (w - 1) // 2 + 1):
                vals = [float(a[n, head, i, j, i + dr, j + dc]) for n in range(b)
                        for i, j in queries if 0 <= i + dr < h and 0 <= j + dc < w]
                if vals:
                    best = max(best, sum(vals) / len(vals))
        like.append(best)
    return dist, ent, like


@pytest.mark.parametrize("margin", [0, 1])
def test_random_attention_against_loops(margin: int) -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 2, 3, 4, 3 * 4, generator=g, dtype=torch.float64)
    a = logits.softmax(-1).view(2, 2, 3, 4, 3, 4)
    dist, ent, like = reference_metrics(a, margin)
    assert torch.allclose(mean_distance(a, margin=margin), torch.tensor(dist, dtype=a.dtype))
    assert torch.allclose(attention_entropy(a, margin=margin), torch.tensor(ent, dtype=a.dtype))
    assert torch.allclose(conv_likeness(a, margin=margin)[0], torch.tensor(like, dtype=a.dtype))


def test_converted_convolution_is_a_perfect_convolution() -> None:
    torch.manual_seed(0)
    module = conv_to_attention(nn.Conv2d(2, 3, 3, padding=1))
    x = torch.randn(2, 2, 6, 6)
    (attn,) = record_attention(module, x)  # (2, 9, 8, 8, 8, 8), padded grid
    offsets = [(a - 1, b - 1) for a in range(3) for b in range(3)]  # head order, row-major
    likeness, found = conv_likeness(attn)
    assert likeness.tolist() == [1.0] * 9
    assert found.tolist() == [list(o) for o in offsets]
    # The conv's own queries (1 token inside the padding) attend exactly at distance |Delta|.
    expected = torch.tensor([math.hypot(*o) for o in offsets])
    assert torch.allclose(mean_distance(attn, margin=1), expected, atol=1e-6)
    assert torch.allclose(attention_entropy(attn, margin=1), torch.zeros(9), atol=1e-6)
    rows = compute_locality(module, x, margin=1)
    assert [r["conv_likeness"] for r in rows] == [1.0] * 9
    assert [(r["offset_row"], r["offset_col"]) for r in rows] == offsets
    assert [(round(r["center_row"]), round(r["center_col"])) for r in rows] == offsets
    assert all(r["alpha"] == pytest.approx(104.7, abs=0.1) for r in rows)
    assert [r["mean_distance"] for r in rows] == pytest.approx(expected.tolist(), abs=1e-6)


def test_compute_locality_positional_without_images() -> None:
    torch.manual_seed(0)
    model = create_model("sa-quadratic-full", in_chans=1, image_size=16, hidden_size=16,
                         num_layers=2, heads=4, ffn_size=16)
    rows = compute_locality(model)
    assert len(rows) == 8 and [r["layer"] for r in rows] == [0] * 4 + [1] * 4
    assert all(r["images"] == 0 and r["grid_rows"] == 8 and r["alpha"] is None for r in rows)
    assert all(r["mean_distance_px"] == pytest.approx(2 * r["mean_distance"]) for r in rows)
    assert all(0 < r["inv_cov_eig_min"] <= r["inv_cov_eig_max"] for r in rows)
    assert all(r["entropy_uniform"] == pytest.approx(math.log(64)) for r in rows)
    # With images the positional layers give the same numbers (maps do not depend on them).
    with_images = compute_locality(model, torch.randn(3, 1, 16, 16))
    for a, b in zip(rows, with_images, strict=True):
        assert a["mean_distance"] == pytest.approx(b["mean_distance"], rel=1e-6)
        assert a["conv_likeness"] == pytest.approx(b["conv_likeness"], rel=1e-6)


def test_compute_locality_content_needs_images() -> None:
    model = create_model("sa-learned-content", in_chans=1, image_size=8, hidden_size=8,
                         num_layers=1, heads=2, ffn_size=8)
    with pytest.raises(ValueError, match="pass images"):
        compute_locality(model)
    rows = compute_locality(model, torch.randn(5, 1, 8, 8), batch_size=2)
    assert [r["images"] for r in rows] == [5, 5] and rows[0]["center_row"] is None
    with pytest.raises(ValueError, match="grid"):
        compute_locality(SelfAttention2d(4, 2))
    assert len(compute_locality(SelfAttention2d(4, 2), grid=(3, 3))) == 2
    with pytest.raises(ValueError, match="margin"):
        mean_distance(torch.full((1, 1, 3, 3, 3, 3), 1 / 9), margin=2)


# Grid coverage of Gaussian heads -------------------------------------------------------------
def test_grid_coverage_perfect_3x3_grid() -> None:
    centres = [(r, c) for r in (-1, 0, 1) for c in (-1, 0, 1)]  # Theorem 1's 9 heads
    cov = grid_coverage(centres)
    assert cov.neighbours_covered == 8 and cov.covered == NEIGHBOUR_OFFSETS
    assert cov.distinct_centres == 9 and cov.query_covered and cov.heads == 9
    jittered = [(r + 0.3, c - 0.3) for r, c in centres]  # 0.42 from each target
    assert grid_coverage(jittered).neighbours_covered == 8


def test_grid_coverage_exact_counts() -> None:
    centres = [(0.1, 0.0), (0.0, 0.05), (-1.2, 0.1), (2.0, 2.0), (0.9, 1.1), (3.0, -3.0)]
    cov = grid_coverage(centres)
    assert cov.covered == ((-1, 0), (1, 1))
    # (0.1, 0) and (0, 0.05) are one centre; the 4 others are far from everything.
    assert cov.distinct_centres == 5 and cov.query_covered and cov.heads == 6
    assert cov.as_dict() == {"heads": 6, "neighbours_covered": 2, "covered": [[-1, 0], [1, 1]],
                             "distinct_centres": 5, "query_covered": True}


def test_grid_coverage_boundary_is_strict() -> None:
    # Exactly 0.5 from (0, 1) and from (1, 1): covers neither, so no head covers two offsets.
    assert grid_coverage([(0.5, 1.0)]).neighbours_covered == 0
    assert grid_coverage([(0.49, 1.0)]).covered == ((0, 1),)
    assert grid_coverage([(0.51, 1.0)]).covered == ((1, 1),)
    # Two centres exactly 0.5 apart are distinct; 0.49 apart they are one.
    assert grid_coverage([(3.0, 3.0), (3.5, 3.0)]).distinct_centres == 2
    assert grid_coverage([(3.0, 3.0), (3.49, 3.0)]).distinct_centres == 1


def test_grid_coverage_one_head_near_two_offsets_counts_once() -> None:
    # 0.4 from (0, 1) and 0.6 from (1, 1) (within 1 of both): covers (0, 1) only.
    assert grid_coverage([(0.4, 1.0)]).covered == ((0, 1),)
    # The middle of (0, 0), (0, 1), (1, 0), (1, 1): 0.707 from each, covers none.
    assert grid_coverage([(0.5, 0.5)]).neighbours_covered == 0
    # Many heads piled on one offset cover it once and are one distinct centre.
    cov = grid_coverage([(1.0, 0.0)] * 5 + [(1.1, 0.1)])
    assert cov.covered == ((1, 0),) and cov.distinct_centres == 1


def test_grid_coverage_chains_and_errors() -> None:
    # 0.4 apart in a chain: the first and last are 0.8 apart but linked through the middle.
    assert grid_coverage([(5.0, 0.0), (5.4, 0.0), (5.8, 0.0)]).distinct_centres == 1
    empty = grid_coverage(torch.zeros(0, 2))
    assert empty.heads == 0 and empty.neighbours_covered == 0 and empty.distinct_centres == 0
    with pytest.raises(ShapeError, match=r"\(heads, 2\)"):
        grid_coverage([[0.0, 1.0, 2.0]])
    with pytest.raises(ValueError, match="finite"):
        grid_coverage([(float("nan"), 0.0)])
    with pytest.raises(ValueError, match="radius"):
        grid_coverage([(0.0, 0.0)], radius=0.6)


def test_coverage_over_training_reads_epoch_zero(tmp_path: Path) -> None:
    init = {"epoch": 0, "layers": [{"centers": [[0.1, 0.1], [0.2, 0.0]]}]}
    end = {"epoch": 3, "layers": [{"centers": [[1.0, 0.0], [-1.0, -1.1]]}]}
    (tmp_path / "heads.jsonl").write_text(json.dumps(init) + "\n" + json.dumps(end) + "\n")
    (row,) = coverage_over_training(tmp_path)
    assert row["layer"] == 0 and row["heads"] == 2 and row["end_epoch"] == 3
    assert row["init"]["neighbours_covered"] == 0 and row["init"]["distinct_centres"] == 1
    assert row["end"]["covered"] == [[-1, -1], [1, 0]] and row["end"]["distinct_centres"] == 2
    (tmp_path / "heads.jsonl").write_text(json.dumps(end) + "\n")  # no epoch-0 record
    assert coverage_over_training(tmp_path)[0]["init"] is None
    assert coverage_over_training(tmp_path / "missing") == []


def test_locality_command_grid_coverage(quadratic_run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from attnconv.cli import main

    assert main(["locality", str(quadratic_run), "--out", str(tmp_path)]) == 0
    assert "grid coverage of the Gaussian heads" in capsys.readouterr().out
    report = json.loads((tmp_path / "locality.json").read_text())
    history = coverage_over_training(quadratic_run)
    assert [c["layer"] for c in report["grid_coverage"]] == [0, 1]
    for cov, hist in zip(report["grid_coverage"], history, strict=True):
        centres = [(r["center_row"], r["center_col"]) for r in report["rows"]
                   if r["layer"] == cov["layer"]]
        assert cov["checkpoint"] == grid_coverage(centres).as_dict()
        assert cov["init"] == hist["init"] and cov["init"] is not None
    lines = (tmp_path / "grid_coverage.csv").read_text().splitlines()
    assert lines[0].startswith("layer,heads,neighbours_covered_init") and len(lines) == 3
    # A checkpoint outside a run directory has no recorded initial centres.
    ckpt = tmp_path / "alone.safetensors"
    ckpt.write_bytes((quadratic_run / "checkpoints" / "best.safetensors").read_bytes())
    assert main(["locality", str(ckpt), "--out", str(tmp_path / "alone")]) == 0
    alone = json.loads((tmp_path / "alone" / "locality.json").read_text())
    assert [c["init"] for c in alone["grid_coverage"]] == [None, None]
    assert alone["grid_coverage"][0]["checkpoint"] == report["grid_coverage"][0]["checkpoint"]
