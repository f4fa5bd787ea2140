"""Stats overhead benchmark (issue 7): StreamLoader with its stats on (the default) vs off.

"Off" replaces the loader's `LoaderStats` with a stand-in whose hooks do nothing, so the only
difference is the trainer-side bookkeeping per step (two clock reads, a walk over the batch for
samples and bytes, a reservoir insert, a ring-occupancy sample every 8 steps). Worker-side
stage clocks stay on in both (a few ``perf_counter_ns`` calls per batch and one small record
every 0.5 s; not separable without a switch, and cheaper than the trainer side).

Workload: a columnar StreamingDataset of small rows read from the page cache, small batches,
so per-step overhead is as visible as it gets (a real model step would hide it further).
Baseline for the ratio: stats off in the same run (``x off`` < 1 means stats cost time).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

import streamload as sl
from streamload.loader.stats import LoaderStats


class _Off(LoaderStats):
    """LoaderStats whose per-step hooks do nothing (the 'stats off' baseline)."""

    def step(self, wait_s: float, batch: Any, nbytes: int | None = None) -> None:
        pass

    def worker_report(self, pid: int, body: bytes) -> None:
        pass


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the dataset")
    args = parser.parse_args()
    rows = 20_000 if args.quick else 200_000
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        url = str(Path(tmp) / "ds")
        with sl.ShardWriter(url, shard_size="8MB") as w:
            for i in range(rows):
                w.write({"id": i, "x": np.full(16, i, dtype=np.float32)})
        results = []
        for workers in (0, 2):
            for batch_size in (16, 256):
                timings = {}
                for mode in ("off", "on"):

                    def run(mode: str = mode, workers: int = workers, bs: int = batch_size) -> None:
                        loader = sl.StreamLoader(
                            sl.StreamingDataset(url), batch_size=bs, num_workers=workers
                        )
                        if mode == "off":
                            loader._stats = _Off()
                        for _ in loader:
                            pass

                    result = harness.measure(
                        f"stats {mode} w{workers} b{batch_size}",
                        run,
                        items=rows,
                        nbytes=rows * (16 * 4 + 8),
                        params={"workers": workers, "batch": batch_size, "stats": mode},
                        repeats=harness.repeats(args),
                    )
                    timings[mode] = result
                    results.append(result)
                timings["on"].params["x off"] = (
                    f"{timings['off'].median_s / timings['on'].median_s:.3f}"
                )
        harness.report(
            "Stats overhead: StreamLoader stats on vs off",
            results,
            args,
            notes="x off = time(stats off) / time(stats on) in the same run: 1.000 = free,"
            " 0.98 = stats cost 2%.",
        )


if __name__ == "__main__":
    main()
