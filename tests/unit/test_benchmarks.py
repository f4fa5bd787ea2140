"""Smoke tests: every benchmark's --quick mode runs to completion in a subprocess within a deadline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("script", ["transport.py", "loader.py", "shuffle.py", "tokens.py"])
def test_benchmark_quick_mode_completes(script: str, tmp_path: Path) -> None:
    """`benchmarks/<script> --quick` exits 0 within its deadline and prints a table."""
    args = [sys.executable, str(BENCH / script), "--quick"]
    if script in ("loader.py", "shuffle.py", "tokens.py"):
        args += ["--dir", str(tmp_path)]
    if script == "tokens.py":  # one dtype, no separate memory runs: the smoke test stays short
        args += ["--dtypes", "uint16", "--no-pss"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| benchmark |" in proc.stdout


def test_tree_pss_counts_this_process() -> None:
    """The PSS sampler reports nonzero anonymous memory for the running interpreter."""
    sys.path.insert(0, str(BENCH))
    import memory

    with memory.PeakPss(interval=0.01) as pss:
        pass
    assert pss.peak_anon_shmem > 0
