"""convert reads its source in bounded batches: peak memory does not grow with the source size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

# Converts the small source (to warm up), the small one again, then the large one, in one fresh
# process and prints how far the peak RSS rose above the RSS before the last two (Linux: writing 5 to clear_refs resets the peak, VmHWM).
_CONVERT = textwrap.dedent(
    """
    import sys
    import streamload as sl

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

    fmt, mode, dst = sys.argv[1], sys.argv[2], sys.argv[3]
    for k, src in enumerate(sys.argv[4:]):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS:")
        if mode == "whole":  # the unbounded way, to show the measurement can tell
            import pyarrow.parquet as pq
            table = pq.read_table(src)
        sl.convert(src, f"{dst}/{k}", format=fmt, shard_size="8MB", batch_rows=256)
        if k:  # the first conversion only warms up (libraries paged in, allocator pools made)
            print(status("VmHWM:") - before)
        table = None
    """
)
pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset"
)
SMALL, LARGE = 16 * 2**20, 128 * 2**20
ROW_BYTES = 16 * 2**10


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    out = {}
    for size in (SMALL, LARGE):
        blob = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        rows = size // ROW_BYTES
        column = pa.array(
            [blob[i * ROW_BYTES : (i + 1) * ROW_BYTES] for i in range(rows)], pa.binary()
        )
        path = root / f"{size}.parquet"
        pq.write_table(
            pa.table({"id": np.arange(rows), "blob": column}),
            path,
            row_group_size=512,
            compression="none",
        )
        out[size] = path
    return out


def _extra_growth(sources: dict[int, Path], tmp_path: Path, fmt: str, mode: str) -> int:
    """How much more the peak RSS rises converting the large source than the small one."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CONVERT,
            fmt,
            mode,
            str(tmp_path),
            str(sources[SMALL]),
            str(sources[SMALL]),
            str(sources[LARGE]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    small, large = (int(line) for line in proc.stdout.split())
    return large - small


@pytest.mark.parametrize("fmt", ["arrow", "lmdb"])
def test_peak_memory_does_not_grow_with_the_source(
    sources: dict[int, Path], tmp_path: Path, fmt: str
) -> None:
    """An 8x larger Parquet source raises the converter's peak RSS by far less than its extra size."""
    extra = _extra_growth(sources, tmp_path, fmt, "streamed")
    assert extra < (LARGE - SMALL) // 2, f"peak RSS grew {extra / 2**20:.0f} MiB more"


def test_the_measurement_sees_a_source_read_whole(sources: dict[int, Path], tmp_path: Path) -> None:
    """Control: holding the whole source in memory shows up as growth with the source size."""
    assert _extra_growth(sources, tmp_path, "arrow", "whole") > (LARGE - SMALL) // 2
