"""Smoke tests: every benchmark's --quick mode runs to completion in a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_smoke import hang_guard, run_quick

# A quick run's extra arguments: what keeps each script's code paths from rotting, no more.
_QUICK_ARGS = {
    "heap.py": [],
    "transport.py": [],
    "loader.py": ["--workloads", "W1,W4"],  # every contender; W2/W3 take the same paths
    "shuffle.py": [],
    "startup.py": [],
    "soak.py": ["--configs", "w2 columnar,DL w2 transform", "--epochs", "3"],
    "tokens.py": ["--dtypes", "uint16", "--no-pss"],  # one dtype, no separate memory runs
}


@hang_guard
@pytest.mark.parametrize("script", sorted(_QUICK_ARGS))
def test_benchmark_quick_mode_completes(script: str, tmp_path: Path) -> None:
    """`benchmarks/<script> --quick` exits 0 and prints a table."""
    args = list(_QUICK_ARGS[script])
    if script not in ("transport.py", "heap.py"):
        args += ["--dir", str(tmp_path)]
    assert "| benchmark |" in run_quick(script, *args, cwd=tmp_path)


@hang_guard
def test_stats_overhead_quick_mode_prints_on_off_ratios(tmp_path: Path) -> None:
    """`benchmarks/stats_overhead.py --quick` exits 0 with an on/off row pair per setting."""
    out = run_quick("stats_overhead.py", "--dir", str(tmp_path), cwd=tmp_path)
    rows = [line for line in out.splitlines() if line.startswith("| stats ")]
    assert len(rows) == 8
    assert sum(1 for row in rows if row.startswith("| stats on ")) == 4


@hang_guard
def test_formats_benchmark_quick_mode_completes(tmp_path: Path) -> None:
    """`benchmarks/formats.py --quick` runs to completion and prints its table."""
    out = run_quick("formats.py", "--samples", "600", "--dir", str(tmp_path), cwd=tmp_path)
    assert "| batch rand lmdb |" in out and "| convert parquet->lmdb |" in out


@hang_guard
def test_remote_benchmark_quick_mode_completes(tmp_path: Path) -> None:
    """`benchmarks/remote.py --quick` (servers, shaping proxy, epochs) exits 0 with its table."""
    out = run_quick("remote.py", "--dir", str(tmp_path), cwd=tmp_path)
    assert "| s3 cold step 0 ms |" in out
    assert "x limit" in out


@hang_guard
def test_plan_benchmark_quick_mode_prints_its_three_tables(tmp_path: Path) -> None:
    """`benchmarks/plan.py --quick` (eager vs lazy plan, first batch at 10x samples, mixture vs
    one dataset) exits 0 with a row of each table."""
    out = run_quick("plan.py", "--dir", str(tmp_path), cwd=tmp_path)
    assert "| lazy block 1e5 |" in out and "| eager full 1e6 |" in out
    assert "| first batch 1e5 w2 |" in out
    assert "| mixture w0 |" in out and "x single" in out
