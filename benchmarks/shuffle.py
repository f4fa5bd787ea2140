"""Shuffle benchmark (issue 5 item 1): full permutation vs shard-block shuffle, and no shuffle.

For each shuffle setting, on one dataset written with `sl.ShardWriter` (many equal shards):

- **live shards / cache**: the most shards open at once over the epoch, where a shard is open
  from its first sample to its last in the order. That many shards (x shard bytes) is the cache
  a reader needs to download each shard exactly once per epoch; with fewer it re-downloads.
- **shards per read-ahead**: the mean distinct shards touched by one read-ahead window of
  consecutive samples (``--window``, default 4 batches): what one prefetch round opens.
- **|Spearman|**: rank correlation between position in the order and sample id (1 =
  sequential, ~0 = no trace of the storage order), mean of its absolute value over 5 epochs
  (one epoch's value is noisy when there are few shards). Block mode also keeps samples of one shard close
  together: **neighbours** is the fraction of consecutive pairs from the same shard.
- **throughput**: the first ``--batches`` batches of a StreamLoader epoch (num_workers=0,
  columnar path) from the local page cache, in samples/s, and the time to compute the epoch's
  order (``plan ms``). A full shuffle touches a new shard for nearly every sample, so each
  batch opens many shards: past ``MAX_OPEN_SHARDS`` (64) open readers it re-opens
  (and re-validates) shards all the time; block mode keeps the open set at ``shuffle_block``.

Baseline for the ratios: the full permutation in the same run (``x full``).
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import streamload as sl
from streamload.plan.order import ShuffleSettings, global_order

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness


def write(root: Path, n: int, shard_samples: int, row_bytes: int) -> tuple[str, int, int]:
    """A dataset of n samples (id + a row_bytes blob) in shards of shard_samples samples."""
    url = root / f"shuffle-{n}-{shard_samples}-{row_bytes}"
    shard_bytes = shard_samples * (row_bytes + 24)  # id + offsets: a shard closes near here
    if not (url / "index.json").exists():
        blob = bytes(row_bytes)
        with sl.ShardWriter(str(url), shard_size=shard_bytes, overwrite=True) as w:
            for i in range(n):
                w.write({"id": i, "data": blob})
    ds = sl.StreamingDataset(str(url))
    return str(url), ds.num_shards, ds.index.total_bytes


def locality(sizes: list[int], order: np.ndarray, window: int) -> dict[str, float]:
    """Live shards, shards per read-ahead window, Spearman and same-shard neighbours."""
    shard_of = np.searchsorted(np.cumsum([0, *sizes]), order, "right") - 1
    first = np.full(len(sizes), len(order), dtype=np.int64)
    last = np.full(len(sizes), -1, dtype=np.int64)
    np.minimum.at(first, shard_of, np.arange(len(order)))
    np.maximum.at(last, shard_of, np.arange(len(order)))
    delta = np.zeros(len(order) + 1, dtype=np.int64)
    used = last >= 0
    np.add.at(delta, first[used], 1)
    np.add.at(delta, last[used] + 1, -1)
    live = int(np.cumsum(delta).max()) if len(order) else 0
    per_window = [len(np.unique(shard_of[i : i + window])) for i in range(0, len(order), window)]
    # Both are permutations of 0..n-1, so Spearman's rho is Pearson's r of (position, id).
    positions = np.arange(len(order), dtype=np.float64)
    rho = float(np.corrcoef(positions, order.astype(np.float64))[0, 1])
    same = float(np.mean(shard_of[1:] == shard_of[:-1])) if len(order) > 1 else 1.0
    return {
        "live": live,
        "per_window": float(np.mean(per_window)),
        "spearman": rho,
        "neighbours": same,
    }


def epoch(url: str, settings: ShuffleSettings, batch: int, batches: int) -> None:
    """The first `batches` batches of a StreamLoader epoch in the given order (fresh readers);
    checks no id repeats."""
    ds = sl.StreamingDataset(
        url,
        shuffle=settings.shuffle,
        seed=settings.seed,
        shuffle_mode=settings.mode,
        shuffle_block=settings.block,
    )
    ids = [b["id"] for b in itertools.islice(sl.StreamLoader(ds, batch_size=batch), batches)]
    if len(np.unique(np.concatenate(ids))) != batches * batch:
        raise RuntimeError("an epoch repeated samples")


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where to write the dataset")
    p.add_argument("--window", type=int, default=None, help="read-ahead window in samples")
    p.add_argument("--batches", type=int, default=None, help="batches timed per repeat")
    args = p.parse_args()
    n, shard_samples, row_bytes, batch = (
        (4_000, 100, 256, 64) if args.quick else (400_000, 2_000, 1024, 256)
    )
    batches = args.batches or (20 if args.quick else 200)
    window = args.window or 4 * batch
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-shuffle-"))
    url, num_shards, total_bytes = write(root, n, shard_samples, row_bytes)
    sizes = [s.num_samples for s in sl.StreamingDataset(url).index.shards]
    shard_bytes = total_bytes // max(num_shards, 1)
    cases: list[tuple[str, ShuffleSettings]] = [
        ("none", ShuffleSettings(False, 0)),
        ("full", ShuffleSettings(True, 0, "full")),
        *[(f"block {b}", ShuffleSettings(True, 0, "block", b)) for b in (1, 4, 16, 64)],
    ]
    results, extras = [], {}
    for name, settings in cases:
        t0 = time.perf_counter()
        order = global_order(sizes, settings, 0)
        plan_s = time.perf_counter() - t0
        stats = locality(sizes, order, window)
        rhos = [
            locality(sizes, global_order(sizes, settings, e), window)["spearman"] for e in range(5)
        ]
        result = harness.measure(
            f"shuffle {name}",
            lambda settings=settings: epoch(url, settings, batch, batches),
            items=batches * batch,
            nbytes=batches * batch * row_bytes,
            params={"mode": name, "shards": num_shards},
            warmup=1,
            repeats=harness.repeats(args),
        )
        extras[result.name] = {
            "live shards": f"{stats['live']}",
            "cache MiB": f"{stats['live'] * shard_bytes / 2**20:,.1f}",
            "shards/read-ahead": f"{stats['per_window']:.1f}",
            "|Spearman|": f"{np.mean(np.abs(rhos)):.3f}",
            "neighbours": f"{stats['neighbours']:.3f}",
            "plan ms": f"{plan_s * 1e3:.1f}",
        }
        results.append(result)
        print(result.name, f"{result.items_per_s:,.0f}/s", extras[result.name], flush=True)
    full = next(r for r in results if r.params["mode"] == "full")

    def extra(r: harness.Result) -> dict[str, Any]:
        return {**extras[r.name], "x full": f"{r.items_per_s / full.items_per_s:.2f}"}

    harness.report(
        "Shuffle: full permutation vs shard-block shuffle",
        results,
        args,
        extra=extra,
        notes=(
            f"{n:,} samples of {row_bytes} B in {num_shards} shards of ~{shard_bytes / 2**20:.2f}"
            f" MiB; batch {batch}, read-ahead window {window} samples; throughput: the first"
            f" {batches} batches of an epoch, StreamLoader num_workers=0, from the page cache"
            " (local disk hides the download cost that cache MiB measures). live shards = most"
            " shards between their first and last sample at once: the cache that downloads each"
            " shard once per epoch."
        ),
    )


if __name__ == "__main__":
    main()
