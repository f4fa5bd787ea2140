"""Plan benchmark (issue 12): a lazy plan vs the eager one, time to the first batch, mixtures.

1. **Plan construction** for 10^6 ... 10^9 samples in 10,000 shards (``block`` mode, 16
   shards per window, and ``full``): each configuration in a fresh interpreter, timing the
   epoch's order plus the first batch's ids (what every rank and worker does before its first
   batch) and the peak RSS it added (``VmHWM`` minus the RSS before). *eager* is the order as it
   was before issue 12 (one int64 array of the epoch, numpy's permutation; reproduced here as
   `eager_order`), *lazy* is `EpochOrder` + `EpochPlan`. Eager at 10^9 is not run (it needs
   8 GB for the array alone).
2. **Time to the first batch** of a StreamLoader (shuffled, block mode) over a 10^7-sample
   dataset vs a 10^6-sample one, at num_workers 0 and 2, each in a fresh interpreter (dataset
   open, loader, first batch); and, in separate runs, the peak non-file PSS of the process tree
   over the first batches (`memory.PeakPss`).
3. **Mixture vs one dataset**: three datasets mixed 50/30/20 against one dataset of the same
   rows and bytes, StreamLoader num_workers=0, samples/s over the same number of batches.

Targets (issue 12): lazy plan for 10^9 samples <= 16 MiB and <= 0.1 s to the first batch's ids;
first batch at 10^7 samples within 1.5x of 10^6; non-file PSS flat from 10^6 to 10^7; the mixture
>= 0.9x the single dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import streamload as sl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

MiB = 1 << 20
SHARDS = 10_000


def eager_order(sizes: np.ndarray, mode: str, seed: int, epoch: int, block: int) -> np.ndarray:
    """The epoch order as streamload built it before issue 12 (plan.global_order at 8a56a43)."""
    total = int(sizes.sum())
    if mode == "full":
        rng = np.random.Generator(np.random.PCG64([seed, epoch]))
        return rng.permutation(total).astype(np.int64, copy=False)
    rng = np.random.Generator(np.random.PCG64([seed, epoch, 1]))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    shard_order = rng.permutation(len(sizes))
    out = np.empty(total, dtype=np.int64)
    filled = 0
    for first in range(0, len(shard_order), block):
        window = shard_order[first : first + block]
        ids = np.concatenate([np.arange(starts[k], starts[k] + sizes[k]) for k in window])
        rng.shuffle(ids)
        out[filled : filled + len(ids)] = ids
        filled += len(ids)
    return out


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child_construct(params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter: build one epoch's plan and the first batch's ids."""
    from streamload.plan.order import EpochOrder, ShuffleSettings
    from streamload.plan.partition import EpochPlan

    n, impl, mode = params["n"], params["impl"], params["mode"]
    sizes = np.full(SHARDS, n // SHARDS, dtype=np.int64)
    settings = ShuffleSettings(True, 0, mode, 16)
    before = _status("VmRSS")
    started = time.perf_counter()
    if impl == "eager":
        order: Any = eager_order(sizes, mode, 0, 0, 16)
    else:
        order = EpochOrder(sizes, settings, 0)
    plan = EpochPlan(order, 8, 256)
    first = plan.batch(3, 0)
    seconds = time.perf_counter() - started
    assert len(np.unique(first)) == 256
    return {"seconds": seconds, "peak_bytes": _status("VmHWM") - before}


def _run_child(kind: str, params: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps({"kind": kind, **params})],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} {params} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def construction(args: Any) -> None:
    sizes = [10**5, 10**6] if args.quick else [10**6, 10**7, 10**8, 10**9]
    results, extras = [], {}
    for mode in ("block", "full"):
        for n in sizes:
            for impl in ("eager", "lazy"):
                name = f"{impl} {mode} 1e{len(str(n)) - 1}"
                if impl == "eager" and n > 10**8:
                    print(name, "not run (an int64 array of 10^9 ids alone is 8 GB)")
                    continue
                runs = [
                    _run_child("construct", {"n": n, "impl": impl, "mode": mode})
                    for _ in range(harness.repeats(args))
                ]
                result = harness.Result(
                    name,
                    {"samples": n, "mode": mode, "plan": impl},
                    items=n,
                    nbytes=0,
                    seconds=[r["seconds"] for r in runs],
                )
                peak = max(r["peak_bytes"] for r in runs)
                extras[name] = {"first batch ms": f"{result.median_s * 1e3:,.1f}"}
                extras[name]["peak RSS MiB"] = f"{peak / MiB:,.1f}"
                results.append(result)
                print(name, extras[name], flush=True)
    by_name = {r.name: r for r in results}

    def extra(r: harness.Result) -> dict[str, str]:
        out = dict(extras[r.name])
        eager = by_name.get(r.name.replace("lazy", "eager"))
        if r.params["plan"] == "lazy" and eager is not None:
            out["x eager time"] = f"{r.median_s / eager.median_s:.4f}"
        return out

    harness.report(
        "Plan construction: eager epoch array vs lazy plan (per process)",
        results,
        args,
        extra=extra,
        notes=(
            f"{SHARDS:,} equal shards; world size 8, batch 256: the time is the epoch's order"
            " plus rank 3's first batch of ids, in a fresh interpreter; peak RSS is what that"
            " added (VmHWM minus RSS before). items/s = planned samples / that time. Eager is"
            " plan.global_order as of 8a56a43 (an int64 array of the epoch in every process)."
        ),
    )


def linked_dataset(root: Path, samples: int, per_shard: int) -> str:
    """A dataset of ``samples`` rows made of hard links to one shard of ``per_shard`` rows
    (ids repeat from shard to shard; what matters here is the index's size, not the bytes)."""
    url = root / f"linked-{samples}"
    if (url / "index.json").exists():
        return str(url)
    one = root / f"one-{per_shard}"
    if not (one / "index.json").exists():
        with sl.ShardWriter(str(one), shard_size="1GB", overwrite=True) as w:
            for i in range(per_shard):
                w.write({"id": i, "tokens": np.full(64, i, dtype=np.int32)})
    index = json.loads((one / "index.json").read_text())
    (entry,) = index["shards"]
    url.mkdir(parents=True, exist_ok=True)
    shards = samples // per_shard
    for k in range(shards):
        target = url / f"shard-{k:05d}.arrow"
        if not target.exists():
            os.link(one / entry["name"], target)
    index["shards"] = [dict(entry, name=f"shard-{k:05d}.arrow") for k in range(shards)]
    index["num_samples"] = shards * per_shard
    (url / "index.json").write_text(json.dumps(index))
    return str(url)


def child_first_batch(params: dict[str, Any]) -> dict[str, Any]:
    """In a fresh interpreter (streamload imported): open the dataset, make the loader, take the
    first batch (timed), then ``batches`` more (what the PSS run samples)."""
    import warnings

    started = time.perf_counter()
    ds = sl.StreamingDataset(params["url"], shuffle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 2 workers on 2 CPUs
        loader = sl.StreamLoader(ds, batch_size=256, num_workers=params["workers"])
    iterator = iter(loader)
    first = next(iterator)
    seconds = time.perf_counter() - started
    assert len(first["id"]) == 256
    for _ in range(params["batches"]):
        next(iterator)
    if hasattr(iterator, "shutdown"):
        iterator.shutdown()
    return {"seconds": seconds}


def first_batch(args: Any) -> None:
    from streamload.cli.pss import PeakPss

    sizes = [10**4, 10**5] if args.quick else [10**6, 10**7]
    per_shard = 1_000 if args.quick else 10_000
    results, extras, base = [], {}, {}
    for workers in (0, 2):
        for n in sizes:
            url = linked_dataset(args.dir, n, per_shard)
            params = {"url": url, "workers": workers, "batches": 20}
            runs = [_run_child("first-batch", params) for _ in range(harness.repeats(args))]
            name = f"first batch 1e{len(str(n)) - 1} w{workers}"
            result = harness.Result(
                name,
                {"samples": n, "num_workers": workers},
                items=256,
                nbytes=0,
                seconds=[r["seconds"] for r in runs],
            )
            proc = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    json.dumps({"kind": "first-batch", **params}),
                ],
                stdout=subprocess.DEVNULL,
            )
            with PeakPss(proc.pid) as pss:
                proc.wait(timeout=900)
            if n == sizes[0]:
                base[workers] = (result.median_s, pss.peak_anon_shmem)
            t0, m0 = base[workers]
            extras[name] = {
                "first batch ms": f"{result.median_s * 1e3:,.0f}",
                "x smallest": f"{result.median_s / t0:.2f}",
                "anon+shmem MiB": f"{pss.peak_anon_shmem / MiB:,.0f}",
                "PSS x smallest": f"{pss.peak_anon_shmem / m0:.2f}",
            }
            results.append(result)
            print(name, extras[name], flush=True)
    harness.report(
        "Time to the first batch: 10x the samples (lazy plan)",
        results,
        args,
        extra=lambda r: extras[r.name],
        notes=(
            f"StreamLoader(batch_size=256), shuffle=True (block, 16 shards per window), shards"
            f" of {per_shard:,} rows (id + int32[64]; hard links to one shard: the index and"
            " the plan scale, the bytes read do not); each run a fresh interpreter with"
            " streamload imported: dataset open + loader + first batch. anon+shmem: peak"
            " non-file PSS of the process tree over the first 21 batches, in a separate run."
            " items/s = 256 / time to the first batch."
        ),
    )


def write_rows(root: Path, name: str, n: int, offset: int) -> str:
    url = root / f"{name}-{n}"
    if not (url / "index.json").exists():
        with sl.ShardWriter(str(url), shard_size="8MB", overwrite=True) as w:
            for i in range(n):
                w.write({"id": offset + i, "tokens": np.full(256, i, dtype=np.int32)})
    return str(url)


def mixture(args: Any) -> None:
    n = 20_000 if args.quick else 300_000
    single = write_rows(args.dir, "single", n, 0)
    parts = {"web": n // 2, "code": 3 * n // 10, "books": n - n // 2 - 3 * n // 10}
    urls = {
        name: write_rows(args.dir, name, k, 10**7 * (i + 1))
        for i, (name, k) in enumerate(parts.items())
    }
    weights = {"web": 0.5, "code": 0.3, "books": 0.2}
    row_bytes = 8 + 4 * 256

    def epoch_of(make: Any, workers: int) -> Any:
        def run() -> None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loader = sl.StreamLoader(make(), batch_size=256, num_workers=workers)
            count = sum(len(b["id"]) for b in loader)
            assert count == n, count

        return run

    def one() -> Any:
        return sl.StreamingDataset(single, shuffle=True)

    def mixed() -> Any:
        sources = {name: sl.StreamingDataset(u) for name, u in urls.items()}
        return sl.MixedDataset(sources, weights=weights, samples=n, seed=0)

    results = []
    for workers in (0, 2):
        for name, make in (("single", one), ("mixture", mixed)):
            results.append(
                harness.measure(
                    f"{name} w{workers}",
                    epoch_of(make, workers),
                    items=n,
                    nbytes=n * row_bytes,
                    params={"dataset": name, "num_workers": workers},
                    warmup=1,
                    repeats=harness.repeats(args),
                )
            )
            print(results[-1].name, f"{results[-1].items_per_s:,.0f}/s", flush=True)
    by = {r.name: r for r in results}

    def extra(r: harness.Result) -> dict[str, str]:
        single_rate = by[f"single w{r.params['num_workers']}"].items_per_s
        return {"x single": f"{r.items_per_s / single_rate:.2f}"}

    harness.report(
        "Three-source mixture vs one dataset of the same rows",
        results,
        args,
        extra=extra,
        notes=(
            f"One epoch of {n:,} rows (id + int32[256], ~1 KiB) from the page cache,"
            " StreamLoader(batch_size=256): one shuffled dataset (block mode) against"
            f" MixedDataset of three datasets ({', '.join(f'{k}: {v:,}' for k, v in parts.items())}"
            " rows) at 50/30/20 with the default window budget (16 shards: 8/5/3 per source),"
            " same total rows and bytes; loaders made inside the timed epoch."
        ),
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        params = json.loads(sys.argv[2])
        kind = params.pop("kind")
        out = {"construct": child_construct, "first-batch": child_first_batch}[kind](params)
        print(json.dumps(out))
        return
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where to write the datasets")
    p.add_argument("--only", choices=("construction", "first-batch", "mixture"), default=None)
    args = p.parse_args()
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="sl-plan-"))
    if args.only in (None, "construction"):
        construction(args)
    if args.only in (None, "first-batch"):
        first_batch(args)
    if args.only in (None, "mixture"):
        mixture(args)


if __name__ == "__main__":
    main()
