"""Write OUT_DIR/summary.md from what scripts/gpu-check.sh left in OUT_DIR (one page).

Reads ``bench.json`` (``attnconv bench --json``), ``tests.xml`` (pytest's JUnit XML) and
``environment.json`` (interpreter, torch, CUDA, GPU); any of them may be missing (a step that
failed or timed out), and the summary then says so. Usage: ``python gpu_summary.py OUT_DIR``.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _num(value: Any, digits: int = 1) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.{digits}f}"


def _x(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.2f}x"


def _mb(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value / 2**20:.0f}"


def test_lines(path: Path) -> list[str]:
    """Counts of the JUnit file, and the failed tests by name."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [f"No test results ({path.name} missing or unreadable): see tests.log."]
    cases = root.iter("testcase")
    passed, failed, skipped = 0, [], 0
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    lines = [f"{passed} passed, {len(failed)} failed, {skipped} skipped (tests.log, tests.xml)."]
    lines += [f"- FAILED {name}" for name in failed[:20]]
    return lines


def bench_lines(bench: dict[str, Any]) -> list[str]:
    """Models (throughput, memory, ratios), the compiled step, layer speed-ups and targets."""
    lines = ["## Models: training and inference images/s, training-step peak memory", "",
             "| model | precision | attn dropout | batch | ref train | fast train | speed-up | "
             "ref infer | fast infer | speed-up | ref peak MB | fast peak MB | fast / ref memory |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in bench.get("models", []):
        lines.append(
            f"| {r.get('model')} | {r.get('precision')} | {r.get('attn_dropout', '-')} | "
            f"{r.get('batch')} | {_num(r.get('ref_train_images_s'))} | "
            f"{_num(r.get('fast_train_images_s'))} | {_x(r.get('train_speedup'))} | "
            f"{_num(r.get('ref_infer_images_s'))} | {_num(r.get('fast_infer_images_s'))} | "
            f"{_x(r.get('infer_speedup'))} | {_mb(r.get('ref_train_peak_bytes'))} | "
            f"{_mb(r.get('fast_train_peak_bytes'))} | {_num(r.get('train_memory_ratio'), 2)} |")
    for r in bench.get("compile", []):
        if r.get("error"):
            lines += ["", f"torch.compile, {r.get('model')}: failed ({r['error']})."]
            continue
        lines += ["", f"torch.compile, {r.get('model')} training step (batch {r.get('batch')}): "
                      f"eager {_num(r.get('eager_train_images_s'))} images/s, compiled "
                      f"{_num(r.get('compiled_train_images_s'))} images/s "
                      f"({_x(r.get('speedup'))}), compile time {_num(r.get('compile_s'))} s."]
    layers = [r for r in bench.get("layers", []) if r.get("encoding") != "conv3x3"]
    if layers:
        lines += ["", "## Layers: fast path against the reference (fwd+bwd) and a 3x3 conv", "",
                  "| tokens | batch | encoding | algorithm | speed-up | mixing speed-up | "
                  "fast / conv | max abs diff |", "|---|---:|---|---|---:|---:|---:|---:|"]
        for r in layers:
            diff = r.get("max_abs_diff")
            lines.append(
                f"| {r.get('size')}x{r.get('size')} | {r.get('batch')} | {r.get('encoding')} | "
                f"{r.get('fast_algorithm')} | {_x(r.get('speedup_fwd_bwd'))} | "
                f"{_x(r.get('mixing_speedup_fwd_bwd'))} | {_x(r.get('fast_vs_conv_fwd_bwd'))} "
                f"| {'-' if diff is None else f'{diff:.1e}'} |")
    targets = bench.get("targets", [])
    if targets:
        lines += ["", "## The CPU targets, measured on this device", "",
                  "| target | measured | reached |", "|---|---:|---|"]
        for t in targets:
            reached = {True: "yes", False: "no"}.get(t.get("reached"), "not measured")
            lines.append(f"| {t.get('target')} | {_num(t.get('value'), 2)} | {reached} |")
    lines += [f"- {note}" for note in bench.get("notes", [])]
    return lines


def summary(out: Path) -> str:
    """The page's Markdown."""
    env = _load_json(out / "environment.json") or {}
    bench = _load_json(out / "bench.json")
    machine = (bench or {}).get("machine", {})
    peak = (bench or {}).get("peak", {})
    gpu = env.get("gpu") or machine.get("gpu") or "unknown GPU"
    lines = [f"# attnconv GPU check: {gpu}", "",
             f"Interpreter {env.get('python', '?')} ({env.get('interpreter_note', '')}); "
             f"torch {env.get('torch', machine.get('torch', '?'))}, CUDA "
             f"{env.get('cuda', '?')}, bf16 {'yes' if env.get('bf16') else 'no'}; "
             f"commit {env.get('commit', '?')}; {env.get('date', '')}.", "",
             "## Tests on the GPU (CUDA tests, fast paths fp32 and bf16 autocast)", ""]
    lines += test_lines(out / "tests.xml")
    lines += [""]
    if bench is None:
        lines += ["## Benchmark", "", "No bench.json: the benchmark failed or ran out of time "
                  "(see bench.log)."]
    else:
        config = bench.get("config", {})
        lines += [f"Benchmark: `attnconv bench --device {config.get('device')}` "
                  f"({config.get('mode')}), "
                  f"{_num(bench.get('seconds'), 0)} s; matrix-product peak fp32 "
                  f"{_num(peak.get('fp32_gflops'), 0)} GFLOP/s, bf16 "
                  f"{_num(peak.get('bf16_gflops'), 0)} GFLOP/s. Full tables: bench.md.", ""]
        lines += bench_lines(bench)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python gpu_summary.py OUT_DIR (an existing directory)", file=sys.stderr)
        return 2
    out = Path(argv[0])
    (out / "summary.md").write_text(summary(out), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
