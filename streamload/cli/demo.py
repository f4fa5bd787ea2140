"""``streamload demo``: write a synthetic corpus, stream it with StreamLoader and DataLoader, compare.

The corpus is three datasets written with `ShardWriter` into a temporary directory (removed at
the end unless ``keep``), sized in proportion to ``size``:

- ``images``: ``id``, ``image`` (random bytes, 16-64 KiB), ``label`` (int) -- 60% of the bytes;
- ``tokens``: ``id``, ``tokens`` (int32[2048]), ``label`` -- 30%;
- ``text``: ``id``, ``text`` (~100 B of words), ``label`` -- 10% (many small records, where
  per-sample Python overhead dominates).

Each dataset is then read by ``StreamLoader(ds, batch_size, num_workers=0)`` and by
``torch.utils.data.DataLoader(ds, batch_size, num_workers=0)``, alternately, ``repeats`` passes
each, every pass with a fresh `StreamingDataset`; timings are medians over the passes. Before timing, every shard is opened once so the per-process checksum
verification is paid by neither run, and the data just written is in the page cache for both.

Measured per run: samples/s; MB/s (shard bytes on disk / wall time); time to first batch (from
constructing the loader); peak memory growth of this process, sampled from
``/proc/self/smaps_rollup`` every ~20 ms by a background thread, split into anonymous memory
(``Pss_Anon + Pss_Shmem``: what the loader allocates) and file-backed memory (``Pss_File``:
mmapped shard pages, reclaimable page cache). Every run checks, through the ``id`` column, that it
saw every sample exactly once. `run` returns a JSON-serialisable results dict; `print_results`
renders it.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from streamload.cli import pss
from streamload.cli.pss import PeakPss
from streamload.progress import progress
from streamload.sizes import format_size, parse_size

SAMPLE_INTERVAL_S = 0.02
TOKENS_LEN = 2048
QUICK_SIZE = "2MB"
QUICK_BATCH_SIZE = 32
REPEATS = 3
_SHARE = {"images": 0.6, "tokens": 0.3, "text": 0.1}
_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "stream",
    "shard",
    "loader",
    "ring",
    "buffer",
    "tensor",
    "batch",
    "epoch",
    "cache",
    "arrow",
    "worker",
    "sample",
    "token",
    "image",
]


# --- corpus -------------------------------------------------------------------------------------


def _image_records(rng: np.random.Generator, budget: int) -> Iterator[dict[str, Any]]:
    written, i = 0, 0
    while written < budget or i == 0:
        image = rng.bytes(int(rng.integers(16 * 1024, 64 * 1024 + 1)))
        written += len(image) + 16
        yield {"id": i, "image": image, "label": int(rng.integers(1000))}
        i += 1


def _token_records(rng: np.random.Generator, budget: int) -> Iterator[dict[str, Any]]:
    per_record = TOKENS_LEN * 4 + 16
    for i in range(max(1, budget // per_record)):
        tokens = rng.integers(0, 50_000, TOKENS_LEN, dtype=np.int32)
        yield {"id": i, "tokens": tokens, "label": int(tokens[0])}


def _text_records(rng: np.random.Generator, budget: int) -> Iterator[dict[str, Any]]:
    # Words are drawn in one vectorised call per chunk: Python-level string building per record
    # would dominate the demo's write time.
    per_record, words_per_text = 100 + 16, 18
    total = max(1, budget // per_record)
    vocab = np.array(_WORDS)
    for start in range(0, total, 4096):
        n = min(4096, total - start)
        picks = vocab[rng.integers(0, len(vocab), (n, words_per_text))]
        labels = rng.integers(0, 10, n)
        for j in range(n):
            yield {"id": start + j, "text": " ".join(picks[j]), "label": int(labels[j])}


_GENERATORS: dict[str, Callable[[np.random.Generator, int], Iterator[dict[str, Any]]]] = {
    "images": _image_records,
    "tokens": _token_records,
    "text": _text_records,
}


def write_corpus(
    root: str,
    size: int,
    *,
    seed: int = 0,
    shard_size: int | None = None,
    storage_options: dict[str, Any] | None = None,
    progress_mode: str = "auto",
) -> dict[str, Any]:
    """Write the three demo datasets under ``root`` (see the module docstring).

    Args:
        root: an existing, empty directory, or a fresh prefix of an object store URL.
        size: approximate total payload bytes.
        seed: RNG seed of the synthetic data.
        shard_size: shard size in bytes; None picks about 8 shards per dataset (at least 64 KiB).
        storage_options: fsspec options of a remote ``root``.
        progress_mode: the ``progress`` setting.

    Returns:
        ``{"datasets": {name: url}, "bytes": total shard bytes, "write_seconds": s}``.
    """
    from streamload.format.index import load_index
    from streamload.write.writer import ShardWriter

    rng = np.random.default_rng(seed)
    urls: dict[str, str] = {}
    start = time.perf_counter()
    bar = progress(total=size, desc="write corpus", unit="B", unit_scale=True, mode=progress_mode)
    with bar:
        for name, share in _SHARE.items():
            budget = int(size * share)
            url = f"{root.rstrip('/')}/{name}"
            per_shard = shard_size or max(64 * 1024, budget // 8)
            with ShardWriter(
                url, shard_size=per_shard, compression=None, storage_options=storage_options
            ) as writer:
                written = 0
                for record in _GENERATORS[name](rng, budget):
                    writer.write(record)
                    step = _record_bytes(record)
                    written += step
                    bar.update(min(step, max(0, budget - written + step)))
            urls[name] = url
    seconds = time.perf_counter() - start
    total = sum(load_index(url, storage_options).total_bytes for url in urls.values())
    return {"datasets": urls, "bytes": total, "write_seconds": seconds}


def _record_bytes(record: dict[str, Any]) -> int:
    n = 16
    for value in record.values():
        if isinstance(value, (bytes, str)):
            n += len(value)
        elif isinstance(value, np.ndarray):
            n += value.nbytes
    return n


# --- runs ---------------------------------------------------------------------------------------


def _warm(url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Open every shard once, so checksum verification (and, for a remote corpus, the download
    into the shard cache) is in neither run."""
    from streamload.dataset.streaming import StreamingDataset

    ds = StreamingDataset(url, storage_options=storage_options)
    for start in ds.index.sample_offsets[:-1]:
        ds[int(start)]


def measure(
    name: str,
    make_loader: Callable[[], Iterable[Any]],
    num_samples: int,
    nbytes: int,
    progress_mode: str = "auto",
) -> dict[str, Any]:
    """Iterate one loader to the end and measure it (see the module docstring).

    Args:
        name: label of the run (progress bar).
        make_loader: builds the loader; its construction is part of the time to first batch.
        num_samples: samples in the dataset (for the exactly-once check).
        nbytes: dataset bytes on disk (for MB/s).
        progress_mode: the ``progress`` setting.

    Returns:
        ``{"samples", "seconds", "samples_per_s", "mb_per_s", "first_batch_s", "peak_anon",
        "peak_file", "exactly_once"}`` (peaks in bytes, None when not measurable).
    """
    gc.collect()
    ids: list[np.ndarray] = []
    first_batch: float | None = None
    with PeakPss(interval=SAMPLE_INTERVAL_S) if pss.available() else _no_memory() as memory:
        start = time.perf_counter()
        loader = make_loader()
        bar = progress(
            loader,
            total=_len_or_none(loader),
            desc=name,
            unit="batch",
            leave=False,
            mode=progress_mode,
        )
        for batch in bar:
            if first_batch is None:
                first_batch = time.perf_counter() - start
            ids.append(np.asarray(batch["id"]))
        seconds = time.perf_counter() - start
        bar.close()
    seen = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    counts = np.bincount(seen, minlength=num_samples) if len(seen) else np.zeros(num_samples)
    return {
        "samples": len(seen),
        "seconds": seconds,
        "samples_per_s": len(seen) / seconds,
        "mb_per_s": nbytes / 1e6 / seconds,
        "first_batch_s": first_batch,
        "peak_anon": memory and memory.peak_anon_shmem - memory.base_anon_shmem,
        "peak_file": memory and memory.peak_file - memory.base_file,
        "exactly_once": bool(len(counts) == num_samples and (counts == 1).all()),
    }


@contextlib.contextmanager
def _no_memory() -> Iterator[None]:
    """Stands in for `PeakPss` where the machine reports no PSS (peaks are then None)."""
    yield None


def _len_or_none(obj: object) -> int | None:
    try:
        return len(obj)  # type: ignore[arg-type]
    except TypeError:
        return None


def compare(
    url: str,
    batch_size: int,
    repeats: int = REPEATS,
    storage_options: dict[str, Any] | None = None,
    progress_mode: str = "auto",
) -> dict[str, Any]:
    """Stream one dataset through StreamLoader and DataLoader (``num_workers=0``), ``repeats`` times.

    The loaders alternate (ours, theirs, ours, ...) so drift in machine load hits both alike.

    Returns:
        ``{"num_samples", "bytes", "StreamLoader": summary, "DataLoader": summary, "speedup"}``
        where a summary holds the median of each timing over the repeats, the maximum of each
        memory peak, ``exactly_once`` over all repeats, and the raw ``runs``; ``speedup`` is the
        ratio of median samples/s.
    """
    import torch.utils.data

    from streamload.dataset.streaming import StreamingDataset
    from streamload.loader.loader import StreamLoader

    _warm(url, storage_options)
    probe = StreamingDataset(url, storage_options=storage_options)
    n, nbytes = len(probe), probe.index.total_bytes
    makers: dict[str, Callable[[], Iterable[Any]]] = {
        "StreamLoader": lambda: StreamLoader(
            StreamingDataset(url, storage_options=storage_options),
            batch_size=batch_size,
            num_workers=0,
        ),
        "DataLoader": lambda: torch.utils.data.DataLoader(
            StreamingDataset(url, storage_options=storage_options),
            batch_size=batch_size,
            num_workers=0,
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in _LOADERS}
    for _ in range(repeats):
        for name in _LOADERS:
            runs[name].append(measure(name, makers[name], n, nbytes, progress_mode))
    out: dict[str, Any] = {"num_samples": n, "bytes": nbytes}
    for name in _LOADERS:
        out[name] = _summarise(runs[name])
    out["speedup"] = out["StreamLoader"]["samples_per_s"] / out["DataLoader"]["samples_per_s"]
    return out


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def peak(key: str) -> int | None:
        values = [r[key] for r in runs if r[key] is not None]
        return max(values) if values else None

    firsts = [r["first_batch_s"] for r in runs if r["first_batch_s"] is not None]
    return {
        "samples_per_s": float(np.median([r["samples_per_s"] for r in runs])),
        "mb_per_s": float(np.median([r["mb_per_s"] for r in runs])),
        "seconds": float(np.median([r["seconds"] for r in runs])),
        "first_batch_s": float(np.median(firsts)) if firsts else None,
        "peak_anon": peak("peak_anon"),
        "peak_file": peak("peak_file"),
        "exactly_once": all(r["exactly_once"] for r in runs),
        "runs": runs,
    }


def run(
    size: int | str = "300MB",
    directory: str | None = None,
    batch_size: int = 256,
    keep: bool = False,
    quick: bool = False,
    repeats: int = REPEATS,
    remote: str | None = None,
    storage_options: dict[str, Any] | None = None,
    progress_mode: str = "auto",
) -> dict[str, Any]:
    """Write the corpus, compare the loaders on each dataset, clean up.

    Args:
        size: approximate corpus size (int bytes or e.g. ``"300MB"``).
        directory: parent of the temporary corpus directory (None: the system temp dir).
        batch_size: batch size of both loaders.
        keep: leave the corpus on disk (its path is in the results).
        quick: a tiny corpus (``QUICK_SIZE``), batch size ``QUICK_BATCH_SIZE`` and one pass, for
            smoke tests.
        repeats: passes per loader and dataset (medians are reported).
        remote: an object store URL (``s3://bucket/prefix``, ``gs://...``): the corpus is written
            under a fresh prefix there and streamed back through the shard cache (both loaders
            read the cached copies; the first download is not timed), then deleted unless
            ``keep``.
        storage_options: fsspec options for ``remote`` (e.g. ``{"endpoint_url": ...}``).

    Returns:
        ``{"ok", "corpus": write_corpus(...) + {"dir", "kept"}, "batch_size", "results": {dataset:
        compare(...)}}``; ``ok`` is True when every run saw every sample exactly once.

    Raises:
        ConfigError: bad size or batch size.
    """
    from streamload.errors import ConfigError

    if quick:
        size, batch_size, repeats = QUICK_SIZE, QUICK_BATCH_SIZE, 1
    try:
        nbytes = parse_size(size, what="demo --size")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if nbytes < 1:
        raise ConfigError("demo --size: must be at least 1 byte")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"demo --batch-size: must be an int >= 1, got {batch_size!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"demo --repeats: must be an int >= 1, got {repeats!r}")
    if remote is not None:
        root = f"{remote.rstrip('/')}/streamload-demo-{uuid.uuid4().hex[:12]}"
    else:
        root = tempfile.mkdtemp(prefix="streamload-demo-", dir=directory)
    try:
        corpus = write_corpus(
            root, nbytes, storage_options=storage_options, progress_mode=progress_mode
        )
        results = {
            name: compare(url, batch_size, repeats, storage_options, progress_mode)
            for name, url in corpus["datasets"].items()
        }
    finally:
        if keep:
            pass
        elif remote is not None:
            from streamload.store import filesystem as store

            fs, path = store.resolve(root, storage_options)
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path, recursive=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    ok = all(r[loader]["exactly_once"] for r in results.values() for loader in _LOADERS)
    return {
        "ok": ok,
        "corpus": {**corpus, "dir": root, "kept": keep},
        "batch_size": batch_size,
        "repeats": repeats,
        "results": results,
    }


_LOADERS = ("StreamLoader", "DataLoader")


# --- report -------------------------------------------------------------------------------------


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"


def print_results(results: dict[str, Any]) -> None:
    """Print the results of `run` as a side-by-side table, one block per dataset."""
    corpus = results["corpus"]
    print(
        f"corpus: {format_size(corpus['bytes'])} in {len(corpus['datasets'])} datasets, written in"
        f" {corpus['write_seconds']:.1f} s"
        + (f", kept at {corpus['dir']}" if corpus["kept"] else " (removed)")
    )
    print(
        f"batch_size={results['batch_size']}, num_workers=0, data in page cache;"
        f" median of {results['repeats']} pass(es) per loader, peak memory = max over passes\n"
    )
    header = (
        "dataset",
        "samples",
        "loader",
        "samples/s",
        "MB/s",
        "1st batch",
        "peak anon",
        "peak file",
        "exactly once",
    )
    rows: list[tuple[str, ...]] = []
    for name, r in results["results"].items():
        for loader in _LOADERS:
            m = r[loader]
            rows.append(
                (
                    name if loader == _LOADERS[0] else "",
                    f"{r['num_samples']:,}" if loader == _LOADERS[0] else "",
                    loader,
                    f"{m['samples_per_s']:,.0f}",
                    f"{m['mb_per_s']:,.1f}",
                    f"{m['first_batch_s'] * 1000:.1f} ms"
                    if m["first_batch_s"] is not None
                    else "-",
                    _mib(m["peak_anon"]),
                    _mib(m["peak_file"]),
                    "yes" if m["exactly_once"] else "NO",
                )
            )
        rows.append(("", "", "speedup", f"{r['speedup']:.2f}x", "", "", "", "", ""))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [
            cell.ljust(w) if i in (0, 2) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
    print(
        "\npeak anon = Pss_Anon+Pss_Shmem growth (allocations); peak file = Pss_File growth"
        " (mmapped shard pages, reclaimable page cache)"
    )
    if not results["ok"]:
        print("ERROR: a loader did not see every sample exactly once")
