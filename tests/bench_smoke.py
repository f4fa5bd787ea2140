"""Running a benchmark's ``--quick`` mode from a test: one place for how, and for the hang guard.

Smoke tests check that each script in benchmarks/ still runs end to end and prints its table;
they never judge speed. The time limit is a hang guard only: quick modes run on a loaded 2-core
machine, where a fixed deadline would fail for the wrong reason.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HANG_GUARD_S = 1500
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# The pytest-timeout guard for a smoke test (its subprocess gets HANG_GUARD_S).
hang_guard = pytest.mark.timeout(HANG_GUARD_S + 60)


def run_quick(script: str, *args: str, cwd: Path) -> str:
    """Run ``benchmarks/<script> --quick *args`` in ``cwd``; its stdout (it must exit 0)."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", *args],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
