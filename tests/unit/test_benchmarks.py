"""Smoke tests: every benchmark's --quick mode runs to completion in a subprocess.

No wall-clock limit beyond pytest-timeout's hang guard: on a busy 2-core machine a quick run
can take several times longer than alone, and that is not a failure.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

# Each script's quick run, trimmed to what keeps its code paths from rotting.
QUICK_ARGS = {
    "transport.py": [],
    "loader.py": ["--workloads", "W1,W4"],
    "shuffle.py": [],
    "soak.py": ["--configs", "w2 columnar,DL w2 transform", "--epochs", "3"],
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard only
@pytest.mark.parametrize("script", sorted(QUICK_ARGS))
def test_benchmark_quick_mode_completes(script: str, tmp_path: Path) -> None:
    """`benchmarks/<script> --quick` exits 0 and prints a table."""
    args = [sys.executable, str(BENCH / script), "--quick", *QUICK_ARGS[script]]
    if script in ("loader.py", "shuffle.py", "soak.py"):
        args += ["--dir", str(tmp_path)]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| benchmark |" in proc.stdout


def test_tree_pss_counts_this_process() -> None:
    """The PSS sampler reports nonzero anonymous memory for the running interpreter."""
    sys.path.insert(0, str(BENCH))
    import memory

    with memory.PeakPss(interval=0.01) as pss:
        pass
    assert pss.peak_anon_shmem > 0
