"""Soak benchmark (issue 17): is the loader's memory flat over many epochs?

Each configuration runs in a fresh process for `--epochs` epochs (50; `--quick`: 10 over small
data) and records the non-file PSS (Pss_Anon + Pss_Shmem: heap, worker copies, rings) of its
whole process tree halfway through every epoch, when the workers are up. Configurations:
num_workers 0 and 2, persistent and not, over a StreamingDataset whose transform allocates
(every sample becomes a new float32 array four times its bytes, as a decoder would), plus the
columnar route without transform (whose workers serve every pass). `DataLoader` over the same
dataset runs beside them for reference.

Reported per configuration: PSS at epoch 2 and at the last epoch, the largest growth over
epoch 2 (`growth %`: the issue's target is <= 5%), and the least-squares slope over the epochs
after 2 (`MiB/epoch`: what a leak shows as, whatever the noise of single samples).
`--leak-kib N` makes each epoch keep N KiB more in the trainer: a self-test that the growth and
slope figures catch a leak.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
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

# name -> (num_workers, persistent_workers, transform, contender)
CONFIGS: dict[str, tuple[int, bool, bool, str]] = {
    "w0 transform": (0, False, True, "StreamLoader"),
    "w2 transform": (2, False, True, "StreamLoader"),
    "w2 transform persistent": (2, True, True, "StreamLoader"),
    "w2 columnar": (2, False, False, "StreamLoader"),
    "DL w2 transform": (2, False, True, "DataLoader"),
}


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(samples, sample bytes, batch size)."""
    return (600, 8 * 1024, 32) if quick else (4000, 32 * 1024, 64)


def write(root: Path, quick: bool) -> Path:
    import streamload as sl

    n, nbytes, _ = _sizes(quick)
    path = root / f"soak-{n}-{nbytes}"
    if not (path / "index.json").exists():
        rng = np.random.default_rng(0)
        with sl.ShardWriter(str(path), shard_size="16MB", overwrite=True) as w:
            for i in range(n):
                w.write({"id": i, "data": rng.bytes(nbytes), "text": f"sample {i}"})
    return path


def decode_sample(row: dict[str, Any]) -> dict[str, Any]:
    """The allocating transform: bytes -> a fresh float32 array (4x the bytes), as decoders do."""
    pixels = np.frombuffer(row["data"], np.uint8).astype(np.float32) / 255.0
    return {"id": row["id"], "pixels": pixels, "text": row["text"]}


def tree_non_file_pss() -> int:
    from streamload.cli.pss import tree_pss

    m = tree_pss(os.getpid())
    return m["Pss_Anon"] + m["Pss_Shmem"]


def run_one(name: str, path: Path, epochs: int, quick: bool, leak_kib: int) -> None:
    """Child mode: run one configuration, print one JSON line: PSS per epoch (bytes)."""
    import torch

    import streamload as sl

    workers, persistent, transform, contender = CONFIGS[name]
    n, _, batch = _sizes(quick)
    ds = sl.StreamingDataset(str(path), transform=decode_sample if transform else None)
    options: dict[str, Any] = {"batch_size": batch, "num_workers": workers}
    if persistent:
        options["persistent_workers"] = True
    if contender == "DataLoader":
        options["multiprocessing_context"] = "fork" if workers else None
        loader: Any = torch.utils.data.DataLoader(ds, **options)
    else:
        loader = sl.StreamLoader(ds, **options)
    leaked: list[mmap.mmap] = []
    pss, seconds = [], []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        started = time.perf_counter()
        seen, sampled = 0, False
        for batch_ in loader:
            seen += len(batch_["id"])
            if not sampled and seen >= n // 2:
                pss.append(tree_non_file_pss())
                sampled = True
        if seen != n:
            raise RuntimeError(f"{name}: epoch {epoch} gave {seen} of {n} samples")
        seconds.append(time.perf_counter() - started)
        if leak_kib:  # fresh anonymous pages (malloc could serve it from freed heap it keeps)
            block = mmap.mmap(-1, leak_kib * 1024)
            block.write(os.urandom(leak_kib * 1024))
            leaked.append(block)
    print(json.dumps({"pss": pss, "seconds": seconds}), flush=True)


def summarize(pss: list[int]) -> dict[str, float]:
    """Growth after epoch 2 (index 1) and the slope over the epochs after it."""
    base = pss[1]
    later = np.asarray(pss[2:], dtype=np.float64)
    growth = (later.max() - base) / base * 100 if len(later) else 0.0
    slope = float(np.polyfit(np.arange(len(later)), later, 1)[0]) if len(later) > 1 else 0.0
    return {
        "epoch2_mib": base / MiB,
        "last_mib": pss[-1] / MiB,
        "growth_pct": float(growth),
        "slope_mib_per_epoch": slope / MiB,
    }


def measure(name: str, root: Path, epochs: int, quick: bool, leak_kib: int = 0) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and summarize its memory."""
    cmd = [sys.executable, __file__, "--one", name, "--dir", str(root), "--epochs", str(epochs)]
    cmd += ["--quick"] if quick else []
    cmd += ["--leak-kib", str(leak_kib)] if leak_kib else []
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name}: child exited {out.returncode}\n{out.stderr[-3000:]}")
    run = json.loads(out.stdout.strip().splitlines()[-1])
    return {"name": name, **run, **summarize(run["pss"])}


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per configuration (50; quick 10)"
    )
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    p.add_argument("--leak-kib", type=int, default=0, help="self-test: leak this much per epoch")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-soak-"))
    epochs = args.epochs or (10 if args.quick else 50)
    path = write(root, args.quick)
    if args.one:
        run_one(args.one, path, epochs, args.quick, args.leak_kib)
        return
    n, nbytes, batch = _sizes(args.quick)
    results, rows = [], {}
    for name in args.configs.split(","):
        res = measure(name, root, epochs, args.quick, args.leak_kib)
        r = harness.Result(name, {"epochs": epochs}, n * epochs, n * nbytes * epochs)
        r.seconds.append(sum(res["seconds"]))
        rows[name] = res
        results.append(r)
        print(
            f"{name}: epoch 2 {res['epoch2_mib']:.0f} MiB, last {res['last_mib']:.0f} MiB,"
            f" growth {res['growth_pct']:+.1f}%, slope {res['slope_mib_per_epoch']:+.2f} MiB/epoch",
            flush=True,
        )

    def extra(r: harness.Result) -> dict[str, str]:
        res = rows[r.name]
        return {
            "epoch 2 MiB": f"{res['epoch2_mib']:.0f}",
            "last MiB": f"{res['last_mib']:.0f}",
            "growth %": f"{res['growth_pct']:+.1f}",
            "MiB/epoch": f"{res['slope_mib_per_epoch']:+.2f}",
        }

    harness.report(
        "Soak: non-file PSS over epochs",
        results,
        args,
        extra=extra,
        timing="one run per row, every epoch sampled",
        notes=f"{n} samples of {nbytes // 1024} KiB, batch {batch}, transform = bytes -> float32"
        " array (4x). PSS = Pss_Anon + Pss_Shmem of the process tree, sampled halfway through"
        " each epoch inside the run. growth % = largest PSS after epoch 2 over epoch 2's;"
        " MiB/epoch = least-squares slope after epoch 2. items/s covers whole epochs,"
        " worker start included.",
    )
    if args.json:
        payload = json.loads(args.json.read_text())
        payload["soak"] = rows
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
