"""``streamload bench``: stream a dataset without a model and show throughput, data-wait and memory.

For each worker count, one run streams ``epochs`` epochs of the dataset through a StreamLoader
(and, with ``vs_dataloader``, through ``torch.utils.data.DataLoader`` over the same
StreamingDataset, right after it, in the same process): samples/s, MB/s (bytes of the batches'
arrays), data-wait per step (time spent in ``next()``: p50/p95), peak PSS of the process tree
(trainer + workers) and the cache line of ``loader.stats()``. The results print as a table,
save as ``bench.json`` and, with matplotlib (extra ``plot``), as ``bench.png``: throughput per
worker count and memory over time.

Memory is sampled by a separate small process (`streamload.cli.pss.ChildSampler`; not a thread:
a thread in the trainer would make ``start_method = auto`` start workers with forkserver instead
of fork) reading ``/proc/PID/smaps_rollup`` of the trainer and its descendants every
``interval`` seconds (>= 0.2 s: reading smaps_rollup takes the target's mmap lock and stalls its
page faults). PSS splits shared pages (rings, mmapped shards) between processes, so the sum
counts them once.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streamload.cli.pss import ChildSampler
from streamload.errors import ConfigError
from streamload.loader.stats import batch_size_and_bytes

MIN_INTERVAL_S = 0.2


@dataclass
class BenchRun:
    """One loader over the dataset for some epochs: its numbers and memory curve."""

    loader: str
    workers: int
    epochs: int
    samples: int = 0
    bytes: int = 0
    seconds: float = 0.0
    wait_p50_s: float = 0.0
    wait_p95_s: float = 0.0
    peak_pss: int = 0
    memory: list[tuple[float, int]] = field(default_factory=list)
    cache: str = "n/a"

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(samples_per_s=self.samples_per_s, mb_per_s=self.mb_per_s)
        return out


def _stream(make: Callable[[], Iterable[Any]], run: BenchRun, interval: float, bar: Any) -> Any:
    """Iterate ``run.epochs`` passes of ``make()``, timing each ``next()``; returns the loader."""
    waits: list[float] = []
    loader = make()
    with ChildSampler(interval) as sampler:
        started = time.perf_counter()
        for _ in range(run.epochs):
            iterator = iter(loader)
            first = True
            while True:
                t0 = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    break
                waits.append(time.perf_counter() - t0)
                if first:  # workers are up now: one in-process sample per epoch
                    sampler.sample_now()
                    first = False
                samples, nbytes = batch_size_and_bytes(batch)
                run.samples += samples
                run.bytes += nbytes
                bar.update(1)
            del iterator
        run.seconds = time.perf_counter() - started
    run.memory = sampler.samples()
    run.peak_pss = max((pss for _, pss in run.memory), default=0)
    if waits:
        run.wait_p50_s, run.wait_p95_s = (float(v) for v in np.percentile(waits, (50, 95)))
    return loader


def run_bench(
    url: str,
    *,
    workers: Iterable[int] = (0, 1, 2),
    batch_size: int = 256,
    epochs: int = 1,
    vs_dataloader: bool = False,
    interval: float = 0.5,
    storage_options: dict[str, Any] | None = None,
    progress_mode: str = "auto",
) -> list[BenchRun]:
    """Stream ``url`` per worker count (and with DataLoader if asked); see the module docstring.

    Raises:
        ConfigError: a negative worker count, batch_size or epochs < 1, interval below 0.2 s.
        FormatError, StoreError: the dataset cannot be opened or read.
    """
    import torch

    from streamload.dataset.streaming import StreamingDataset
    from streamload.loader.loader import StreamLoader
    from streamload.progress import progress

    counts = list(workers)
    if not counts or any(w < 0 for w in counts):
        raise ConfigError(f"bench --workers: need worker counts >= 0, got {counts}")
    if batch_size < 1 or epochs < 1:
        raise ConfigError(f"bench: batch size and epochs must be >= 1 ({batch_size}, {epochs})")
    if interval < MIN_INTERVAL_S:
        raise ConfigError(f"bench interval: at least {MIN_INTERVAL_S} s, got {interval}")
    dataset = StreamingDataset(url, storage_options=storage_options)
    steps = -(-len(dataset) // batch_size) * epochs
    runs: list[BenchRun] = []
    contenders = ("streamload", "DataLoader") if vs_dataloader else ("streamload",)
    total = steps * len(counts) * len(contenders)
    with progress(total=total, desc="bench", unit="batch", mode=progress_mode) as bar:
        for n in counts:
            run = BenchRun("streamload", n, epochs)
            loader = _stream(
                functools.partial(StreamLoader, dataset, batch_size=batch_size, num_workers=n),
                run,
                interval,
                bar,
            )
            run.cache = _cache_text(loader.stats()["cache"])
            runs.append(run)
            del loader
            if vs_dataloader:
                run = BenchRun("DataLoader", n, epochs)
                _stream(
                    functools.partial(
                        torch.utils.data.DataLoader, dataset, batch_size=batch_size, num_workers=n
                    ),
                    run,
                    interval,
                    bar,
                )
                runs.append(run)
    return runs


def _cache_text(cache: dict[str, Any]) -> str:
    if not cache["enabled"]:
        return "none"
    rate = cache["hit_rate"]
    return f"{100 * rate:.0f}% hit" if rate is not None else "no lookups"


def table(runs: list[BenchRun]) -> list[list[str]]:
    """The printed table's rows (header first); with DataLoader runs, a ``x DL`` ratio column."""
    baseline = {r.workers: r for r in runs if r.loader == "DataLoader"}
    header = [
        "loader",
        "workers",
        "samples/s",
        "MB/s",
        "wait p50 ms",
        "wait p95 ms",
        "peak PSS MiB",
    ]
    header += ["cache"] + (["x DL"] if baseline else [])
    rows = [header]
    for r in runs:
        row = [
            r.loader,
            str(r.workers),
            f"{r.samples_per_s:,.0f}",
            f"{r.mb_per_s:,.1f}",
            f"{1e3 * r.wait_p50_s:.3f}",
            f"{1e3 * r.wait_p95_s:.3f}",
            f"{r.peak_pss / (1 << 20):,.0f}",
            r.cache,
        ]
        if baseline:
            base = baseline.get(r.workers)
            ok = base is not None and base.samples_per_s > 0
            row.append(f"{r.samples_per_s / base.samples_per_s:.2f}" if ok else "")  # type: ignore[union-attr]
        rows.append(row)
    return rows


def save(runs: list[BenchRun], out: str | os.PathLike[str]) -> tuple[Path, Path | None, str]:
    """Write ``bench.json`` and, if matplotlib is installed, ``bench.png`` into ``out``.

    Returns:
        (json path, png path or None, a one-line note about the plot).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "bench.json"
    json_path.write_text(json.dumps([r.as_dict() for r in runs], indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            json_path,
            None,
            "plot skipped: matplotlib is not installed (pip install 'streamload[plot]')",
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(dict.fromkeys(r.loader for r in runs))
    counts = sorted({r.workers for r in runs})
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        by_workers = {r.workers: r.samples_per_s for r in runs if r.loader == name}
        xs = [i + k * width for i in range(len(counts))]
        left.bar(xs, [by_workers.get(c, 0.0) for c in counts], width, label=name)
    left.set_xticks([i + width * (len(names) - 1) / 2 for i in range(len(counts))])
    left.set_xticklabels([str(c) for c in counts])
    left.set_xlabel("workers")
    left.set_ylabel("samples/s")
    left.set_title("throughput")
    left.legend()
    for r in runs:
        if r.memory:
            ts, pss = zip(*r.memory, strict=True)
            right.plot(ts, [p / (1 << 20) for p in pss], label=f"{r.loader} w{r.workers}")
    right.set_xlabel("seconds")
    right.set_ylabel("PSS MiB (process tree)")
    right.set_title("memory over time")
    right.legend(fontsize="small")
    fig.tight_layout()
    png_path = folder / "bench.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return json_path, png_path, f"plot: {png_path}"
