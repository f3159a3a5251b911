"""MAC counting (attnconv.flops), Table 1 (attnconv.analysis.table1), ``attnconv table1``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnconv.analysis.table1 import PAPER_TABLE1
from attnconv.cli import main
from attnconv.flops import (
    EXTRA_FLOP_FORMULAS,
    ComputeCost,
    count_macs,
    format_count,
    model_cost,
)

PAPER_MODELS = ["resnet18", "sa-quadratic", "sa-learned", "sa-learned-content"]
SMALL = {"hidden_size": 32, "num_layers": 2, "heads": 3, "ffn_size": 48}

# Attention products of the paper's networks, from the architecture (6 layers, 9 heads,
# N = 256 tokens, D = 400): probabilities @ values is heads * N * N * D MACs per layer.
N, D, HEADS, LAYERS = 256, 400, 9, 6
WEIGHTED_VALUES = HEADS * N * N * D


@pytest.fixture(scope="module")
def costs() -> dict[str, ComputeCost]:
    return {name: model_cost(name) for name in PAPER_TABLE1}


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_convention_reproduces_table1_flops(costs: dict[str, ComputeCost],
                                                  name: str) -> None:
    flops = costs[name].paper_convention_flops
    assert format_count(flops, 2) == PAPER_TABLE1[name].flops  # 6.2B / 6.2B / 15B / 1.1B


def test_paper_convention_counts_the_linear_layers(costs: dict[str, ComputeCost]) -> None:
    tokens_per_layer = 400 * 9 * 400 + 400 * 400 + 2 * 400 * 512  # W_out, Dense, FFN
    sa_linear = N * (12 * 400 + LAYERS * tokens_per_layer) + 400 * 10
    assert costs["sa-quadratic"].linear_macs == sa_linear
    assert costs["sa-learned"].linear_macs == sa_linear
    assert costs["sa-learned-content"].linear_macs == sa_linear + LAYERS * N * 2 * 400 * 3600
    assert format_count(costs["resnet18"].linear_macs, 2) == "560M"  # paper: 2 x 0.56 GMAC
    for cost in costs.values():  # the hooks agree with the flop counter's linear/conv ops
        counted = sum(v for op, v in cost.by_op.items()
                      if op in ("aten.addmm", "aten.mm", "aten.convolution"))
        assert counted == cost.linear_macs


def test_attention_products_are_counted(costs: dict[str, ComputeCost]) -> None:
    assert costs["sa-quadratic"].attention_macs == LAYERS * WEIGHTED_VALUES
    # learned: plus the per-head scores a_h . r_row and b_h . r_col (2 x heads x 16 x 16 x 400)
    assert costs["sa-learned"].attention_macs == LAYERS * (WEIGHTED_VALUES + 2 * HEADS * 16**2 * D)
    # content: plus q . k and the query-dependent scores q_row . r_row, q_col . r_col
    content = 2 * WEIGHTED_VALUES + 2 * HEADS * N * 16 * 200
    assert costs["sa-learned-content"].attention_macs == LAYERS * content
    for name in ("sa-quadratic", "sa-learned"):
        assert format_count(costs[name].attention_macs, 2) == "1.4B"  # ~1.4 GMAC per image
    for name, cost in costs.items():
        if name.startswith("sa-"):
            assert cost.macs > cost.paper_convention_flops / 2
            assert cost.by_op["aten.bmm"] > 0
    assert costs["resnet18"].attention_macs == 0
    assert all(cost.extra_formula_ops == () for cost in costs.values())
    assert "aten._softmax" in costs["sa-quadratic"].uncounted_ops
    assert "aten.view" not in costs["sa-quadratic"].uncounted_ops


def test_fast_path_counts_what_eval_mode_runs(costs: dict[str, ComputeCost]) -> None:
    for name, cost in costs.items():
        fast = model_cost(name, attention="fast")
        assert fast.linear_macs == cost.linear_macs
        if name == "resnet18":  # no attention at all
            assert fast == cost
        elif name != "sa-learned-content":  # positional-only: separable (cheaper) or dense
            assert fast.macs <= cost.macs
        # learned + content: relative logits score all 2H-1 row / 2W-1 column offsets once per
        # query (a few more MACs than the reference's gathered tables, but no gather copies)
    with pytest.raises(ValueError, match="attention must be one of"):
        model_cost("resnet18", attention="dense")


@pytest.mark.parametrize("name", ["sa-learned-content", "resnet18"])
def test_meta_device_counts_like_a_real_forward(name: str) -> None:
    kwargs = {"base_width": 4} if name == "resnet18" else SMALL
    meta = model_cost(name, image_size=16, **kwargs)
    cpu = model_cost(name, image_size=16, device="cpu", **kwargs)
    assert (meta.params, meta.macs, meta.linear_macs, meta.by_op) == (
        cpu.params, cpu.macs, cpu.linear_macs, cpu.by_op)


def test_extra_formulas_count_products_the_counter_lacks() -> None:
    a, v, batch = torch.randn(5, 7), torch.randn(7), torch.randn(3, 5, 7)
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        torch.mv(a, v)  # 5 x 7 MACs
        torch.dot(v, v)  # 7 MACs
        torch.addbmm(torch.zeros(5, 2), batch, torch.randn(3, 7, 2))  # 3 x 5 x 7 x 2 MACs
    assert counter.get_total_flops() == 2 * (35 + 7 + 210)

    class MatVec(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 12))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.mv(self.weight, x.flatten())

    cost = count_macs(MatVec(), (3, 2, 2))
    assert cost.macs == 48 and cost.extra_formula_ops == ("aten.mv",)


def test_count_macs_restores_training_mode() -> None:
    from attnconv.models import create_model

    model = create_model("sa-quadratic", **SMALL).train()
    count_macs(model, (3, 8, 8))
    assert model.training


@pytest.mark.parametrize(("value", "digits", "text"), [
    (6_175_956_800, 2, "6.2B"), (15_023_316_800, 2, "15B"), (1_110_845_440, 2, "1.1B"),
    (12_086_844, 3, "12.1M"), (999_960, 3, "1.00M"), (4_503_556_000, 3, "4.50B"),
    (0, 3, "0"), (512, 3, "512"),
])
def test_format_count(value: float, digits: int, text: str) -> None:
    assert format_count(value, digits) == text


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def test_cli_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "table1.json"
    assert main(["table1", "--format", "json", "--json", str(out_file)]) == 0
    table = json.loads(capsys.readouterr().out)
    assert json.loads(out_file.read_text()) == table
    rows = {row["model"]: row for row in table["rows"]}
    assert set(rows) == set(PAPER_TABLE1)
    assert rows["sa-quadratic"]["params"] == 12_086_844
    assert rows["sa-learned-content"]["paper_flops"] == "15B"
    for name in PAPER_MODELS:
        row = rows[name]
        assert format_count(row["paper_convention_flops"], 2) == row["paper_flops"]
        assert format_count(row["params"], 3) == row["paper_params"]
        assert "measured_accuracy" not in row


def test_cli_markdown_with_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for i, accuracy in enumerate([0.91, 0.93]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({"model": "sa-quadratic",
                                                      "test_accuracy": accuracy}))
    code = main(["table1", "--models", "resnet18", "--runs",
                 str(tmp_path / "run0"), str(tmp_path / "run1")])
    assert code == 0
    text = capsys.readouterr().out
    header = text.splitlines()[0]
    assert "paper accuracy | measured accuracy (--runs)" in header
    assert "MACs (all ops, flop counter)" in header and "paper-convention FLOPs" in header
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 0.938 | 0.920 (mean of 2) |" in lines["| sa-quadratic (SA quadratic emb.)"]
    assert lines["| resnet18 (ResNet18)"].endswith("| 0.938 | - |")
    assert "another setting" not in text


def test_cli_flags_runs_in_another_setting(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({
        "model": "resnet18", "test_accuracy": 0.5, "dataset": "embedded", "params": 1234}))
    assert main(["table1", "--models", "resnet18", "--runs", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| 0.938 | 0.500 * |" in text
    assert f"{tmp_path / 'results.json'}: dataset embedded, 1,234 params" in text


def test_cli_run_without_results(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["table1", "--runs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'results.json'}" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("content", "match"), [
    ('{"model": "sa-quadratic", "test_accuracy": 93.1}', "fraction in"),
    ('{"model": "sa-quadratc", "test_accuracy": 0.9}', "did you mean 'sa-quadratic'"),
    ("not json", "not valid JSON"),
])
def test_cli_bad_results(capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str,
                         match: str) -> None:
    (tmp_path / "results.json").write_text(content)
    assert main(["table1", "--models", "resnet18", "--runs", str(tmp_path)]) == 1
    assert match in capsys.readouterr().err
