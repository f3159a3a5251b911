"""Extra tables of one run for :mod:`attnconv.analysis.report`, from files in its directory.

* Grid coverage of the Gaussian heads at initialisation and at the end of training
  (:func:`~attnconv.analysis.metrics.coverage_over_training`, from ``heads.jsonl``; paper
  section 4.2, figures 3-4).
* Theorem 1 on a trained CNN: the converted network's accuracy and whether it predicts every
  test image as the CNN does (``theorem1.json``, written by ``attnconv demo`` through
  :mod:`attnconv.analysis.converted`).

Every cell is a plain string; the report escapes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

COVERAGE_HEADER = {"layer": "layer", "heads": "heads",
                   "covered_init": "3x3 neighbours covered, init",
                   "covered_end": "at end", "distinct_init": "distinct centres, init",
                   "distinct_end": "at end", "query": "query covered, init / end"}
THEOREM1_HEADER = {"model": "network", "heads": "attention heads", "params": "params",
                   "accuracy": "test accuracy", "identical": "predictions identical",
                   "time": "evaluation time (s)"}


@dataclass(frozen=True)
class RunTable:
    """One table of a run's section: title, explanatory note, header and string cells."""

    title: str
    note: str
    header: dict[str, str]
    rows: list[dict[str, str]]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def coverage_table(run_dir: str | Path) -> RunTable | None:
    """Grid coverage per quadratic layer, init and end; None without Gaussian heads."""
    from attnconv.analysis.metrics import COVER_RADIUS, coverage_over_training

    rows = coverage_over_training(run_dir)
    if not rows:
        return None

    def pair(c: dict[str, Any] | None, key: str, fmt: str) -> str:
        return "-" if c is None else fmt.format(c[key])

    cells = [{"layer": str(r["layer"]), "heads": str(r["heads"]),
              "covered_init": pair(r["init"], "neighbours_covered", "{}/8"),
              "covered_end": pair(r["end"], "neighbours_covered", "{}/8"),
              "distinct_init": pair(r["init"], "distinct_centres", "{}"),
              "distinct_end": pair(r["end"], "distinct_centres", "{}"),
              "query": (f"{'-' if r['init'] is None else _yes(r['init']['query_covered'])} / "
                        f"{_yes(r['end']['query_covered'])}")} for r in rows]
    epoch = rows[0]["end_epoch"]
    note = (f"A neighbour offset of the 3x3 window around the query is covered when a head "
            f"centre lies closer than {COVER_RADIUS} token to it (one head covers one offset at "
            f"most); centres closer than {COVER_RADIUS} to each other count as one distinct "
            f"centre. Init: before the first step; end: after epoch {epoch}. A convolution "
            f"as in Theorem 1 covers 8/8 with 9 distinct centres.")
    return RunTable("Grid coverage of the Gaussian heads", note, COVERAGE_HEADER, cells)


def theorem1_table(run_dir: str | Path) -> RunTable | None:
    """The CNN and its converted self-attention version; None without ``theorem1.json``."""
    from attnconv.analysis.converted import ROW_LABEL, read_check

    check = read_check(run_dir)
    if check is None:
        return None
    n = check["images"]
    same = n - check["mismatches"]
    rows = [{"model": "cnn", "heads": "0", "params": "-",
             "accuracy": f"{check['cnn_accuracy']:.4f}", "identical": "-",
             "time": f"{check['cnn_time_s']:.1f}"},
            {"model": ROW_LABEL, "heads": f"{check['heads']:,}",
             "params": f"{check['params']:,}", "accuracy": f"{check['test_accuracy']:.4f}",
             "identical": f"{_yes(check['predictions_identical'])} ({same:,}/{n:,})",
             "time": f"{check['attention_time_s']:.1f}"}]
    note = (f"Every one of the {check['convolutions']} convolutions replaced by multi-head "
            f"self-attention with one head per kernel offset (Theorem 1), no convolution left; "
            f"both networks evaluated on the same {n:,} test images ({check['dtype']}). Largest "
            f"logit difference {check['max_logit_diff']:.1e}, smallest gap between the CNN's "
            f"two largest logits {check['min_margin']:.1e}.")
    return RunTable("Theorem 1: the trained CNN as self-attention", note, THEOREM1_HEADER, rows)


def run_tables(run_dir: str | Path) -> list[RunTable]:
    """Every extra table a run's files allow, in report order."""
    return [t for t in (coverage_table(run_dir), theorem1_table(run_dir)) if t is not None]
