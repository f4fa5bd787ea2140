"""Convert throughput: single-process sl.convert vs Ray Data (1 and 2 CPUs), Parquet -> Arrow shards,
and the cost of one commit of 10,000 shards' metadata.

Each configuration runs in a fresh Python process (Ray started there with ``num_cpus=N``; its
start-up and the first, warm-up conversion are not timed), converting the same Parquet corpus from
the page cache into a fresh local directory per repeat. rows/s and GB/s count the rows and the
Arrow shard bytes written. The commit row times ``commit.commit`` over 10,000 staged shards'
metadata (empty files, so only validation, one listing, the index write and its read-back count).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

ROWS_PER_GROUP = 4096


def make_corpus(root: Path, rows: int, files: int) -> int:
    """Parquet files of token documents (list<int32>, ~480 tokens) and text; returns rows."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_file = rows // files
    for f in range(files):
        lengths = rng.integers(224, 736, per_file)
        offsets = np.zeros(per_file + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = rng.integers(0, 50_000, int(offsets[-1]), dtype=np.int32)
        ids = np.arange(f * per_file, (f + 1) * per_file)
        table = pa.table(
            {
                "id": pa.array(ids),
                "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                "text": pa.array([f"document {i} " * 8 for i in ids]),
            }
        )
        pq.write_table(table, root / f"part-{f:04d}.parquet", row_group_size=ROWS_PER_GROUP)
    return per_file * files


def run_case(
    engine: str, cpus: int, src: str, scratch: str, repeats: int, warmup: int, address: str
) -> None:
    """(In a child process) convert ``src`` warmup + repeats times; print timings as JSON.
    ``address``: a running Ray cluster to join ("-": start one with ``cpus`` CPUs)."""
    import streamload as sl

    options: dict[str, Any] = {}
    if engine == "ray":
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        import ray

        if address != "-":
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            ray.init(
                num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR"
            )
        options = {"engine": "ray", "ray_options": {"part_bytes": 32 * 2**20}}
    times, rows, nbytes = [], 0, 0
    for k in range(warmup + repeats):
        dst = Path(scratch) / f"out-{k}"
        start = time.perf_counter()
        index = sl.convert(src, dst, shard_size="64MB", progress=False, **options)
        elapsed = time.perf_counter() - start
        rows, nbytes = index.num_samples, index.total_bytes
        shutil.rmtree(dst)
        if k >= warmup:
            times.append(elapsed)
    print(json.dumps({"seconds": times, "rows": rows, "bytes": nbytes}))


def commit_cost(root: Path, shards: int, repeats: int) -> harness.Result:
    """Time one commit of ``shards`` staged (empty) shards' metadata."""
    from streamload.format.index import ShardInfo
    from streamload.format.schema import schema_from_json
    from streamload.store import filesystem as store
    from streamload.write import commit

    schema = schema_from_json(
        {"columns": [{"name": "id", "kind": "int"}, {"name": "text", "kind": "str"}]}, "bench"
    )
    result = harness.Result("commit", {"shards": shards}, shards, 0)
    for r in range(repeats):
        where = root / f"commit-{r}"
        where.mkdir(parents=True)
        staged = []
        for k in range(shards):
            name = f"shard-{k // 100:05d}-{k % 100:05d}-0a1b2c3d.arrow"
            (where / name).write_bytes(b"")
            info = ShardInfo(name, 1000, 0, "xxh3_64", f"{k:016x}")
            staged.append(commit.StagedShard(info, schema.to_json(), (k // 100, k % 100)))
        fs, path = store.resolve(str(where))
        start = time.perf_counter()
        commit.commit(fs, path, str(where), format="arrow", shards=staged)
        result.seconds.append(time.perf_counter() - start)
        shutil.rmtree(where)
    return result


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="scratch directory (corpus + outputs)")
    p.add_argument(
        "--ray-address",
        default="-",
        help="join this running Ray cluster for the Ray cases instead of starting one per case",
    )
    p.add_argument("--case", nargs=7, default=None, help=argparse_hidden())
    args = p.parse_args()
    if args.case:
        engine, cpus, src, scratch, repeats, warmup, address = args.case
        run_case(engine, int(cpus), src, scratch, int(repeats), int(warmup), address)
        return
    rows, files = (20_000, 4) if args.quick else (500_000, 16)
    repeats = harness.repeats(args) if args.repeats else (1 if args.quick else 3)
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-ray-convert-"))
    src = root / "parquet"
    t0 = time.perf_counter()
    rows = make_corpus(src, rows, files)
    parquet_bytes = sum(f.stat().st_size for f in src.iterdir())
    print(
        f"corpus: {rows:,} rows, {parquet_bytes / 1e6:,.0f} MB Parquet in"
        f" {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    cases = [("local", 1)] + ([("ray", 2)] if args.quick else [("ray", 1), ("ray", 2)])
    results = []
    for engine, cpus in cases:
        scratch = root / f"scratch-{engine}-{cpus}"
        scratch.mkdir()
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--case",
                engine,
                str(cpus),
                str(src),
                str(scratch),
                str(repeats),
                "1",
                args.ray_address,
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if out.returncode != 0:
            sys.exit(f"{engine} x{cpus} failed:\n{out.stderr[-3000:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        name = "sl.convert" if engine == "local" else f"Ray Data, {cpus} CPU"
        result = harness.Result(
            name, {"engine": engine, "cpus": cpus}, data["rows"], data["bytes"], data["seconds"]
        )
        results.append(result)
        print(
            f"{name}: {result.items_per_s:,.0f} rows/s, {result.gb_per_s * 1e3:,.0f} MB/s",
            flush=True,
        )
        shutil.rmtree(scratch)
    single = results[0]
    commit_result = commit_cost(root, 1_000 if args.quick else 10_000, repeats)
    if args.dir is None:
        shutil.rmtree(root)

    def extra(r: harness.Result) -> dict[str, str]:
        if r.name == "commit":
            return {"s": f"{r.median_s:.3f}"}
        return {
            "MB/s": f"{r.gb_per_s * 1e3:,.0f}",
            "x single": f"{r.items_per_s / single.items_per_s:.2f}",
        }

    harness.report(
        "Convert: single process vs Ray Data (Parquet -> Arrow shards), and commit cost",
        [*results, commit_result],
        args,
        extra=extra,
        notes=(
            f"{rows:,} rows ({parquet_bytes / 1e6:,.0f} MB Parquet, {single.nbytes / 1e6:,.0f} MB"
            " of Arrow shards): token lists (224-735 int32) and ~100-byte text; shard_size 64MB;"
            " each engine in a fresh process, Ray start-up and one warm-up conversion untimed;"
            " Ray tasks read 32 MB parts of the Parquet files. commit: one commit of"
            f" {commit_result.items:,} staged shards' metadata on local disk (items/s = shards/s)."
        ),
    )


def argparse_hidden() -> str:
    return "internal: engine cpus src scratch repeats warmup address (one configuration, JSON out)"


if __name__ == "__main__":
    main()
