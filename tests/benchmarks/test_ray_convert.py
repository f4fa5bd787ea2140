"""Smoke test: benchmarks/ray_convert.py --quick runs on the session's Ray instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# A hang guard, not a speed limit: benchmarks run their quick mode on a loaded 2-core machine.
BENCH_HANG_GUARD_S = 1500

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.timeout(BENCH_HANG_GUARD_S + 60)
def test_ray_convert_quick_mode_runs_on_the_session_cluster(ray_local: Any, tmp_path: Path) -> None:
    """`benchmarks/ray_convert.py --quick` (joining this session's Ray instance, so the session
    keeps one) exits 0 and prints the single-process, Ray and commit rows."""
    address = ray_local.get_runtime_context().gcs_address
    args = [
        sys.executable,
        str(BENCH / "ray_convert.py"),
        "--quick",
        "--dir",
        str(tmp_path),
        "--ray-address",
        address,
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, timeout=BENCH_HANG_GUARD_S, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| benchmark |" in proc.stdout
    for row in ("| sl.convert |", "| Ray Data, 2 CPU |", "| commit |"):
        assert row in proc.stdout
