"""The stats overhead benchmark's --quick mode runs and prints its on/off table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# A hang guard, not a speed limit: benchmarks run their quick mode on a loaded 2-core machine.
BENCH_HANG_GUARD_S = 1500

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stats_overhead.py"


@pytest.mark.timeout(BENCH_HANG_GUARD_S + 60)
def test_stats_overhead_quick_mode_prints_on_off_ratios(tmp_path: Path) -> None:
    """`benchmarks/stats_overhead.py --quick` exits 0 with an on/off row pair per setting."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=BENCH_HANG_GUARD_S,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| stats ")]
    assert len(rows) == 8
    assert sum(1 for row in rows if row.startswith("| stats on ")) == 4
