"""Smoke test: benchmarks/ray_convert.py --quick runs on the session's Ray instance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_smoke import hang_guard, run_quick


@hang_guard
def test_ray_convert_quick_mode_runs_on_the_session_cluster(ray_local: Any, tmp_path: Path) -> None:
    """`benchmarks/ray_convert.py --quick` (joining this session's Ray instance, so the session
    keeps one) exits 0 and prints the single-process, Ray and commit rows."""
    address = ray_local.get_runtime_context().gcs_address
    out = run_quick(
        "ray_convert.py", "--dir", str(tmp_path), "--ray-address", address, cwd=tmp_path
    )
    assert "| benchmark |" in out
    for row in ("| sl.convert |", "| Ray Data, 2 CPU |", "| commit |"):
        assert row in out
