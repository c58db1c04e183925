"""Smoke test of the benchmark: `python -m benchmarks --quick` runs every measurement.

No timing is asserted (the figures of a tiny run on a shared machine mean nothing); only
that it exits 0, prints every row of the table with a figure, and writes no file.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from benchmarks.report import ROWS
from tests.helpers.services import ROOT, Services

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_quick_benchmark_prints_every_row(services: Services) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DATABASE_URL=services.database_url,
        KAFKA_BOOTSTRAP_SERVERS=services.kafka_bootstrap,
    )
    docs = sorted((ROOT / "docs").iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    lines = result.stdout.splitlines()
    for row in ROWS:
        matching = [line for line in lines if line.startswith(row + "  ")]
        assert matching, f"no table row {row!r} in:\n{result.stdout}"
        assert "not run" not in matching[0], matching[0]
    assert sorted((ROOT / "docs").iterdir()) == docs, "--quick wrote files"
