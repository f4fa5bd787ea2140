"""Smoke tests: every benchmark's --quick mode runs to completion in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A hang guard, not a speed limit: benchmarks run their quick mode on a loaded 2-core machine.
BENCH_HANG_GUARD_S = 1500

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["transport.py", "loader.py", "shuffle.py"])
@pytest.mark.timeout(BENCH_HANG_GUARD_S + 60)
def test_benchmark_quick_mode_completes(script: str, tmp_path: Path) -> None:
    """`benchmarks/<script> --quick` exits 0 and prints a table."""
    args = [sys.executable, str(BENCH / script), "--quick"]
    if script in ("loader.py", "shuffle.py"):
        args += ["--dir", str(tmp_path)]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=BENCH_HANG_GUARD_S, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| benchmark |" in proc.stdout
