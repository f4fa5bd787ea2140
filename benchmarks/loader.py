"""Loader benchmark: StreamLoader vs torch DataLoader at num_workers 0 and 2.

Workloads, each written once with `sl.ShardWriter` plus one single Arrow IPC file for the
hand-written map-style Dataset a user writes today:

* W1: 20,000 x 64 KiB blobs (image-like), batch 256; W1s: the same at 10,000 samples
* W2: 100,000 x int32[2048] tokens, batch 256
* W3: 1,000,000 x ~100-byte text, batch 1024
* W4: 1,400 small rows (id, label, int32[128], ~100-byte text), batch 64: fixed per-epoch costs

Contenders: `DL(hand)` DataLoader over the hand-written Dataset (a row dict per index, bytes as
bytes: default_collate gives lists), `DL(u8)` the same Dataset returning each blob as a
uint8 array view, so default_collate stacks the views straight into one uint8 tensor (the
careful hand-written path for W1), `DL(sl)` DataLoader over `sl.StreamingDataset`,
`StreamLoader` over it (default: lists of bytes/str), `StreamLoader(blobs)` with
`strings="blobs"` (one uint8 buffer + offsets per column). Every epoch checks that each id
arrives exactly once. Loaders are not persistent: each contender iterates a warm-up epoch,
then the timed epochs (the second epoch onwards: worker start-up included, as a training loop
sees it). Timing and memory come from separate runs of a fresh process (see
`measure_in_child`); memory is the peak non-file PSS (anon + shmem) of the process tree
(`streamload.cli.pss.PeakPss`).
DataLoader workers use fork (its Linux default); StreamLoader uses its own default start method.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

import streamload as sl
from streamload.cli.pss import PeakPss, descendants

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

MiB = 1 << 20

# Contenders run on each workload unless --contenders names others.
DEFAULT_CONTENDERS = {
    "W1": "DL(hand),DL(u8),DL(sl),StreamLoader,StreamLoader(blobs)",
    "W1s": "DL(hand),StreamLoader",
    "W2": "DL(hand),DL(sl),StreamLoader",
    "W3": "DL(hand),DL(sl),StreamLoader,StreamLoader(blobs)",
    "W4": "DL(hand),StreamLoader",
}


def _workloads(quick: bool) -> dict[str, dict[str, Any]]:
    k = 100 if quick else 1
    return {
        "W1": dict(n=20_000 // k, batch=256, kind="blob"),
        "W1s": dict(n=10_000 // k, batch=256, kind="blob"),
        "W2": dict(n=100_000 // k, batch=256, kind="tokens"),
        "W3": dict(n=1_000_000 // k, batch=1024, kind="text"),
        "W4": dict(n=1_400 if not quick else 140, batch=64, kind="small"),
    }


def _sample(kind: str, i: int, rng: np.random.Generator) -> dict[str, Any]:
    if kind == "blob":
        return {"id": i, "label": i % 10, "data": rng.bytes(64 * 1024)}
    if kind == "tokens":
        return {"id": i, "tokens": np.full(2048, i, dtype=np.int32)}
    if kind == "small":
        return {
            "id": i,
            "label": i % 10,
            "tokens": np.full(128, i, dtype=np.int32),
            "text": f"{i:010d} " + "y" * 89,
        }
    return {"id": i, "label": i % 10, "text": f"{i:010d} " + "x" * 89}


def write(root: Path, kind: str, n: int) -> tuple[Path, Path, int]:
    """Write the sharded dataset and the single IPC file; return (shard dir, ipc file, bytes)."""
    rng = np.random.default_rng(0)
    shard_dir, ipc = root / f"{kind}-{n}", root / f"{kind}-{n}.arrow"
    if not ipc.exists():
        rows: list[dict[str, Any]] = []
        with sl.ShardWriter(str(shard_dir), format="arrow", shard_size="64MB", overwrite=True) as w:
            for i in range(n):
                s = _sample(kind, i, rng)
                w.write(s)
                rows.append(s)
        cols = {k: [r[k] for r in rows] for k in rows[0]}
        for name in ("tokens",):
            if name in cols:
                cols[name] = [r.tolist() for r in cols[name]]
        table = pa.table(cols)
        with pa.OSFile(str(ipc), "wb") as f, pa.ipc.new_file(f, table.schema) as wr:
            wr.write_table(table, max_chunksize=1024)
    return shard_dir, ipc, ipc.stat().st_size


class ArrowFileDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The hand-written baseline: one memory-mapped Arrow IPC file, one row dict per index.

    `as_u8`: binary columns come back as uint8 array views of the mapping (default_collate
    then stacks them into one tensor) instead of bytes objects.
    """

    def __init__(self, path: Path, as_u8: bool = False) -> None:
        self.path = path
        self.as_u8 = as_u8
        self._reader: Any = None
        with pa.memory_map(str(path)) as m:
            r = pa.ipc.open_file(m)
            self._n = sum(r.get_batch(i).num_rows for i in range(r.num_record_batches))
            self._chunk = r.get_batch(0).num_rows

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._reader is None:  # opened lazily so each forked worker maps its own
            # Record batches are views of the mapping: fetch them once, not per row.
            reader = pa.ipc.open_file(pa.memory_map(str(self.path)))
            self._reader = [reader.get_batch(k) for k in range(reader.num_record_batches)]
        b = self._reader[i // self._chunk]
        j = i % self._chunk
        # What a careful user writes: scalars via as_py, list columns as a numpy slice of the
        # values buffer (not 2048 Python ints via to_pylist), bytes stay bytes as in streamload
        # (or, as_u8, a uint8 view of the mapped bytes).
        row: dict[str, Any] = {}
        for name, col in zip(b.schema.names, b.columns, strict=True):
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                lo, hi = col.offsets[j].as_py(), col.offsets[j + 1].as_py()
                row[name] = col.values.slice(lo, hi - lo).to_numpy().astype(np.int32)
            elif self.as_u8 and pa.types.is_binary(col.type):
                offsets = np.frombuffer(col.buffers()[1], np.int32)[col.offset :]
                data = np.frombuffer(col.buffers()[2], np.uint8)
                row[name] = data[offsets[j] : offsets[j + 1]]
            else:
                row[name] = col[j].as_py()
        return row


def run_epoch(loader: Any, n: int) -> float:
    """Iterate one epoch, check exactly-once ids, return time to first batch (s)."""
    start, first = time.perf_counter(), None
    seen = np.zeros(n, dtype=np.int64)
    for batch in loader:
        if first is None:
            first = time.perf_counter() - start
        np.add.at(seen, np.asarray(batch["id"]), 1)
    if not (seen == 1).all():
        raise RuntimeError(f"ids not exactly once: {int((seen != 1).sum())} wrong")
    return first or 0.0


def make(contender: str, shard_dir: Path, ipc: Path, batch: int, workers: int) -> Any:
    context = "fork" if workers else None
    if contender in ("DL(hand)", "DL(u8)"):
        dataset = ArrowFileDataset(ipc, as_u8=contender == "DL(u8)")
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch, num_workers=workers, multiprocessing_context=context
        )
    ds = sl.StreamingDataset(str(shard_dir))
    if contender == "DL(sl)":
        return torch.utils.data.DataLoader(
            ds, batch_size=batch, num_workers=workers, multiprocessing_context=context
        )
    if contender == "StreamLoader(blobs)":
        return sl.StreamLoader(ds, batch_size=batch, num_workers=workers, strings="blobs")
    return sl.StreamLoader(ds, batch_size=batch, num_workers=workers)


def run_one(
    workload: str, contender: str, workers: int, root: Path, quick: bool, reps: int
) -> None:
    """Child-process mode: time one contender, print one JSON line (seconds, ttfb)."""
    cfg = _workloads(quick)[workload]
    n = cfg["n"]
    shard_dir, ipc, _ = write(root, cfg["kind"], n)
    loader = make(contender, shard_dir, ipc, cfg["batch"], workers)
    ttfb = run_epoch(loader, n)  # warm-up epoch also measures time to first batch
    seconds = []
    own0, workers0 = tree_cpu_s()
    for _ in range(reps):
        t0 = time.perf_counter()
        run_epoch(loader, n)
        seconds.append(time.perf_counter() - t0)
    own1, workers1 = tree_cpu_s()
    batches = reps * -(-n // cfg["batch"])
    print(
        json.dumps(
            {
                "seconds": seconds,
                "ttfb": ttfb,
                "trainer_us": (own1 - own0) / batches * 1e6,
                "workers_us": (workers1 - workers0) / batches * 1e6,
            }
        ),
        flush=True,
    )


def tree_cpu_s() -> tuple[float, float]:
    """CPU seconds (user + system) so far of this process and of all its descendants, dead or
    alive: process CPU is what a 2-core host shares out, and it moves far less than wall time
    on a noisy machine. Live descendants (`descendants`) count with what their own reaped
    children used, reaped direct children come from ``os.times``: a worker reaped in between
    moves from the first count to the second, so a difference stays exact."""
    me = os.getpid()
    ticks = 0
    for pid in descendants(me):
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile: os.times counts it once reaped
            continue
        ticks += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    times = os.times()
    live = ticks / os.sysconf("SC_CLK_TCK")
    return times.user + times.system, live + times.children_user + times.children_system


def measure_in_child(args: Any, root: Path, workload: str, contender: str, workers: int) -> Any:
    """Time `run_one` in a fresh interpreter, then run it again with its process tree's PSS
    sampled from here (`--quick`: one run does both; its figures only show the script works).

    A fresh process per contender keeps one contender's heap, imports and page-cache mappings
    out of the next one's figures, and keeps the sampler thread out of the measured process
    (StreamLoader's start method depends on whether the trainer runs other threads). Timing and
    memory come from separate runs: reading /proc/PID/smaps_rollup walks the target's page
    tables under its mmap lock, which stalls the page faults of freshly started workers (it
    slowed a W2 epoch 3x at a 30 ms sampling interval).
    """
    small = workload in ("W1s", "W4")  # short epochs: take the median of several
    reps = 1 if args.quick else (min(harness.repeats(args), 5) if small else 3)
    cmd = [sys.executable, __file__, "--one", workload, contender, str(workers), "--dir", str(root)]
    cmd += ["--quick"] if args.quick else []

    def run(repeats: int, sample: bool) -> tuple[Any, Any]:
        proc = subprocess.Popen(
            [*cmd, "--repeats", str(repeats)], stdout=subprocess.PIPE, text=True
        )
        pss = PeakPss(proc.pid) if sample else None
        with pss or contextlib.nullcontext():
            out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{workload} {contender} w{workers}: child exited {proc.returncode}")
        return json.loads(out.strip().splitlines()[-1]), pss

    if args.quick:
        return run(reps, sample=True)
    timing, _ = run(reps, sample=False)
    _, pss = run(1, sample=True)
    return timing, pss


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--workloads", default="W1,W1s,W2,W3,W4")
    p.add_argument("--workers", default="0,2", help="worker counts to run")
    p.add_argument("--contenders", default=None, help="default: per workload (DEFAULT_CONTENDERS)")
    p.add_argument(
        "--one", nargs=3, metavar=("WORKLOAD", "CONTENDER", "WORKERS"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-bench-"))
    if args.one:
        workload, contender, workers = args.one
        run_one(workload, contender, int(workers), root, args.quick, args.repeats or 1)
        return
    wl = _workloads(args.quick)
    results, extras = [], {}
    for name in args.workloads.split(","):
        cfg = wl[name]
        # Written in a child so the rows it builds do not inflate any measured process.
        child = multiprocessing.get_context("fork").Process(
            target=write, args=(root, cfg["kind"], cfg["n"])
        )
        child.start()
        child.join()
        _, _, nbytes = write(root, cfg["kind"], cfg["n"])  # exists: just the size
        for workers in (int(w) for w in args.workers.split(",")):
            for c in (args.contenders or DEFAULT_CONTENDERS[name]).split(","):
                params = {"workload": name, "contender": c, "workers": workers}
                res = harness.Result(f"{name} {c} w{workers}", params, cfg["n"], nbytes)
                timing, pss = measure_in_child(args, root, name, c, workers)
                res.seconds.extend(timing["seconds"])
                extras[res.name] = {
                    "trainer CPU us/batch": f"{timing['trainer_us']:.0f}",
                    "workers CPU us/batch": f"{timing['workers_us']:.0f}" if workers else "",
                    "TTFB s": f"{timing['ttfb']:.3f}",
                    "anon+shmem MiB": f"{pss.peak_anon_shmem / MiB:.0f}",
                    "file MiB": f"{pss.peak_file / MiB:.0f}",
                }
                results.append(res)
                print(res.name, f"{res.items_per_s:,.0f}/s", extras[res.name], flush=True)
    by_key = {
        (r.params["workload"], r.params["contender"], r.params["workers"]): r for r in results
    }

    def extra(r: harness.Result) -> dict[str, str]:
        workload, contender, workers = (
            r.params["workload"],
            r.params["contender"],
            r.params["workers"],
        )
        base = by_key.get((workload, "DL(hand)", workers))
        own_w0 = by_key.get((workload, contender, 0))
        return {
            "MB/s": f"{r.nbytes / r.median_s / 1e6:,.1f}",
            "x DL(hand)": f"{r.items_per_s / base.items_per_s:.2f}" if base else "",
            "x own w0": f"{r.items_per_s / own_w0.items_per_s:.2f}" if own_w0 and workers else "",
            **extras[r.name],
        }

    harness.report(
        "Loader: StreamLoader vs DataLoader",
        results,
        args,
        extra=extra,
        timing="each contender in a fresh process, median of its timed epochs",
        notes="Each contender runs in a fresh process; PSS = peak of that process tree "
        "(sampled from outside, in a separate run). DataLoader workers: fork. StreamLoader: "
        "default start method. Loaders are not persistent: timed epochs follow a warm-up "
        "epoch (W1/W2/W3: median of 3, W1s/W4: of up to 5). x own w0 = this contender's "
        "rate over its own num_workers=0 rate. CPU us/batch: user + system CPU over the timed "
        "epochs per batch, of the trainer process and of all its workers (process accounting, "
        "steadier than wall time on a shared host; worker start-up included).",
    )


if __name__ == "__main__":
    main()
