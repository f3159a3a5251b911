"""Runs for the report tests: the session's tiny sa-quadratic and ResNet18 runs."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def report_runs(quadratic_run: Path, cnn_run: Path) -> dict[str, Path]:
    """A tiny sa-quadratic run (14x14 tokens) and a tiny ResNet18 run, both 2 epochs."""
    return {"sa": quadratic_run, "cnn": cnn_run}
