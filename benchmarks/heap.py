"""Heap benchmark: what the trainer's malloc policy costs when it copies batches out of the ring.

A forked producer streams W1-like batches (256 x 64 KiB `bytes` rows, a 16 MiB batch) through a
4 MiB ring in 1 MiB records, as a loader worker does; the trainer decodes each into its list of
`bytes` (one malloc per row) and drops the previous batch, as a training loop does. Each policy
runs in a fresh process:

* default  -- glibc's defaults: the freed top of the heap goes back to the kernel as soon as
              128 KiB are free, and every batch page-faults its 16 MiB back in.
* prime    -- what streamload does in the trainer (`streamload.loader.heap.prime`): one freed
              block starts glibc's own sliding thresholds; no `mallopt`.
* mallopt  -- what it did before (and still does in workers): `mallopt` fixes the trim and mmap
              thresholds for the whole process.

Reported: ms per batch (median), minor page faults per batch, and the trainer's peak non-file PSS
(its own heap: batches alive plus what malloc keeps).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

MiB = 1 << 20
POLICIES = ("default", "prime", "mallopt")


def run_one(policy: str, batches: int) -> None:
    """Child mode: decode `batches` streamed batches under `policy`, print one JSON line."""
    from streamload.format.blobs import BlobColumn
    from streamload.loader import heap
    from streamload.transport.codec import decode, send
    from streamload.transport.ring import Ring

    if policy == "prime":
        heap.prime(64 * MiB)
    elif policy == "mallopt":
        heap.retain_freed(64 * MiB)
    rows = 256
    ring = Ring.create(4 * MiB)
    handle = ring.handle()
    pid = os.fork()
    if pid == 0:  # the producer: a loader worker's side (its batch never touches the trainer)
        source = np.random.default_rng(0).integers(0, 255, rows * 65536, dtype=np.uint8)
        offsets = np.arange(rows + 1, dtype=np.int64) * 65536
        batch = {"id": np.arange(rows), "data": BlobColumn(False, offsets, source)}
        producer = Ring.attach(handle, "producer")
        for _ in range(batches + 3):
            send(producer, batch, chunk=MiB - 64, timeout=60)
        producer.close()
        os._exit(0)
    ring.set_producer_pid(pid)

    def more() -> object:
        return ring.get(timeout=60)

    out = None
    for _ in range(3):  # warm-up
        out = decode(ring.get(timeout=60), more=more)
    seconds = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(batches):
        started = time.perf_counter()
        out = decode(ring.get(timeout=60), more=more)  # the previous batch dies here
        seconds.append(time.perf_counter() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    os.waitpid(pid, 0)
    assert out is not None and len(out["data"]) == rows
    print(json.dumps({"seconds": seconds, "faults": faults / batches}), flush=True)


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches", type=int, default=None, help="timed batches (60; quick 8)")
    args = p.parse_args()
    batches = args.batches or (8 if args.quick else 60)
    if args.one:
        run_one(args.one, batches)
        return
    from streamload.cli.pss import PeakPss

    results, extras = [], {}
    for policy in POLICIES:
        cmd = [sys.executable, __file__, "--one", policy, "--batches", str(batches)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        with PeakPss(proc.pid) as pss:
            out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{policy}: child exited {proc.returncode}")
        run = json.loads(out.strip().splitlines()[-1])
        res = harness.Result(policy, {"policy": policy}, 256, 256 * 65536)
        res.seconds.extend(run["seconds"])
        extras[policy] = {
            "ms/batch": f"{res.median_s * 1e3:.2f}",
            "faults/batch": f"{run['faults']:,.0f}",
            "peak anon+shmem MiB": f"{pss.peak_anon_shmem / MiB:.0f}",
        }
        results.append(res)
        print(policy, extras[policy], flush=True)
    harness.report(
        "Heap: the trainer copying 16 MiB batches of 64 KiB rows out of the ring",
        results,
        args,
        extra=lambda r: extras[r.name],
        notes="items/s = rows/s. PSS includes the producer process and the 4 MiB ring, sampled"
        " from outside while the timed batches run (a separate process per policy).",
    )


if __name__ == "__main__":
    main()
