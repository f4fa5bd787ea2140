"""Smoke test: benchmarks/remote.py --quick runs end to end (servers, shaping proxy, epochs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A hang guard, not a speed limit: benchmarks run their quick mode on a loaded 2-core machine.
BENCH_HANG_GUARD_S = 1500

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "remote.py"


@pytest.mark.timeout(BENCH_HANG_GUARD_S + 60)
def test_remote_benchmark_quick_mode_completes(tmp_path: Path) -> None:
    """`benchmarks/remote.py --quick` exits 0 within its deadline and prints its table."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=BENCH_HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| s3 cold step 0 ms |" in proc.stdout
    assert "x limit" in proc.stdout
