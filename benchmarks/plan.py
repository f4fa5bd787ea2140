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
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
    from streamload.lazy_order import EpochOrder
    from streamload.plan import EpochPlan, ShuffleSettings

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


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        params = json.loads(sys.argv[2])
        kind = params.pop("kind")
        out = {"construct": child_construct}[kind](params)
        print(json.dumps(out))
        return
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None, help="where to write the datasets")
    p.add_argument("--only", choices=("construction", "first-batch", "mixture"), default=None)
    args = p.parse_args()
    args.dir = args.dir or Path(tempfile.mkdtemp(prefix="sl-plan-"))
    if args.only in (None, "construction"):
        construction(args)


if __name__ == "__main__":
    main()
