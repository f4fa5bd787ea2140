"""Token streams (issue 13): tokens/s of blocks and packed rows vs litdata's TokensLoader.

One synthetic corpus of documents (lengths drawn log-normally, mean ~700 tokens) is written as
uint16 and as int32 tokens three ways: a streamload dataset (``ShardWriter``, 64 MB shards), a
litdata dataset (``litdata.optimize`` with ``TokensLoader``, when litdata is installed), and one
flat ``.npy`` file of the concatenated tokens for a hand-written map-style ``Dataset`` that
memory-maps it and slices block ``i`` (what a user writes without either library).

Contenders, each in a fresh process, batch 16, at num_workers 0 and 2, no shuffle:

- ``sl blocks``: ``StreamLoader(StreamingDataset(url, tokens="tokens", block_size=2049))``
- ``sl packed``: ``StreamingDataset(url, tokens="tokens", seq_len=2048, pack=True)``
- ``litdata``: ``StreamingDataLoader(StreamingDataset(dir, item_loader=TokensLoader(2049)))``
- ``DL(memmap)``: ``torch.utils.data.DataLoader`` over the memory-mapped ``.npy`` file

Tokens/s counts token slots delivered (blocks x 2049, rows x 2048; padding included for packed
rows, whose padding fraction is printed). Each epoch checks the batch shapes and that the blocks
cover the corpus. Peak non-file PSS (anonymous + shared memory of the whole process tree: what
the loader itself costs, page cache excluded) comes from a separate run sampled from outside.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import streamload as sl
from streamload.cli.pss import PeakPss

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

MiB = 1 << 20
BLOCK = 2049
SEQ_LEN = 2048
BATCH = 16
CONTENDERS = ("litdata", "DL(memmap)", "sl blocks", "sl packed")


def _lengths(total_tokens: int) -> np.ndarray:
    """Document lengths summing to ``total_tokens`` (log-normal, 1..16k tokens)."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(6.0, 1.0, total_tokens // 100), 1, 16384).astype(np.int64)
    lengths = lengths[np.cumsum(lengths) <= total_tokens]
    return lengths


def _documents(total_tokens: int, dtype: str) -> list[np.ndarray]:
    lengths = _lengths(total_tokens)
    rng = np.random.default_rng(1)
    flat = rng.integers(0, 50_000, int(lengths.sum())).astype(dtype)
    return np.split(flat, np.cumsum(lengths)[:-1])


def write(root: Path, dtype: str, total_tokens: int) -> dict[str, Any]:
    """Write the corpus in every form; return paths and facts (idempotent)."""
    base = root / f"{dtype}-{total_tokens}"
    facts_path = base / "facts.json"
    if facts_path.exists():
        return json.loads(facts_path.read_text())  # type: ignore[no-any-return]
    base.mkdir(parents=True, exist_ok=True)
    docs = _documents(total_tokens, dtype)
    with sl.ShardWriter(str(base / "sl"), shard_size="64MB", overwrite=True) as w:
        for doc in docs:
            w.write({"tokens": doc})
    flat = np.concatenate(docs)
    np.save(base / "flat.npy", flat)
    facts: dict[str, Any] = {"tokens": len(flat), "docs": len(docs), "litdata": None}
    try:
        import litdata
    except ImportError:
        pass
    else:
        # Inputs: a few files of documents, so optimize's workers have something to split.
        parts = np.array_split(np.arange(len(docs)), 4)
        inputs = []
        for k, part in enumerate(parts):
            path = base / f"docs-{k}.npz"
            holder = np.empty(len(part), dtype=object)
            holder[:] = [docs[i] for i in part]
            np.savez(path, docs=holder)
            inputs.append(str(path))
        with contextlib.redirect_stdout(sys.stderr):
            litdata.optimize(
                fn=_litdata_docs_pickled,
                inputs=inputs,
                output_dir=str(base / "litdata"),
                chunk_size=BLOCK * 8192,  # ~64 MB of int32 tokens per chunk, like the shards
                item_loader=litdata.TokensLoader(),
                num_workers=1,
                mode="overwrite",
            )
        facts["litdata"] = str(base / "litdata")
    facts.update(sl=str(base / "sl"), flat=str(base / "flat.npy"))
    facts_path.write_text(json.dumps(facts))
    return facts


def _litdata_docs_pickled(path: str) -> Any:
    """litdata's ``optimize`` function over the ``.npz`` inputs written above (object arrays of
    the benchmark's own documents, so pickle is allowed here and nowhere in streamload)."""
    for doc in np.load(path, allow_pickle=True)["docs"]:
        yield torch.from_numpy(np.ascontiguousarray(doc))


class MemmapBlocks(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """The hand-written baseline: block ``i`` of one memory-mapped token file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tokens: np.ndarray | None = None
        self._n = len(np.load(path, mmap_mode="r")) // BLOCK

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._tokens is None:  # mapped lazily so each worker maps its own
            self._tokens = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self._tokens[i * BLOCK : (i + 1) * BLOCK]))


def make(contender: str, facts: dict[str, Any], workers: int) -> Any:
    """The loader of one contender (see the module docstring)."""
    if contender == "litdata":
        import litdata

        ds = litdata.StreamingDataset(
            facts["litdata"], item_loader=litdata.TokensLoader(block_size=BLOCK), shuffle=False
        )
        return litdata.StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers)
    if contender == "DL(memmap)":
        return torch.utils.data.DataLoader(
            MemmapBlocks(facts["flat"]),
            batch_size=BATCH,
            num_workers=workers,
            multiprocessing_context="fork" if workers else None,
        )
    if contender == "sl blocks":
        ds = sl.StreamingDataset(facts["sl"], tokens="tokens", block_size=BLOCK)
    else:
        ds = sl.StreamingDataset(facts["sl"], tokens="tokens", seq_len=SEQ_LEN, pack=True)
    return sl.StreamLoader(ds, batch_size=BATCH, num_workers=workers)


def run_epoch(loader: Any, contender: str, facts: dict[str, Any]) -> tuple[int, float]:
    """One epoch: (token slots delivered, padding fraction), checking shapes and coverage."""
    width = SEQ_LEN if contender == "sl packed" else BLOCK
    slots = padding = 0
    for batch in loader:
        tokens = batch["tokens"] if isinstance(batch, dict) else batch
        if tokens.ndim != 2 or tokens.shape[1] != width:
            raise RuntimeError(f"{contender}: batch of shape {tuple(tokens.shape)}")
        slots += tokens.numel()
        if contender == "sl packed":  # counted on a numpy view: torch's reduction costs 0.5 ms
            padding += tokens.numel() - int(np.count_nonzero(batch["segment_ids"].numpy()))
    if contender != "sl packed":
        want = facts["tokens"] // BLOCK * BLOCK
        # litdata drops a chunk's partial last block; it must still cover >= 99%.
        if not want * 0.99 <= slots <= want:
            raise RuntimeError(f"{contender}: {slots} tokens in an epoch, corpus has {want}")
    elif slots - padding != facts["tokens"]:
        raise RuntimeError(
            f"sl packed: {slots - padding} real tokens, corpus has {facts['tokens']}"
        )
    return slots, padding / slots if slots else 0.0


def run_one(args: argparse.Namespace, root: Path) -> None:
    """Child-process mode: time one contender, print one JSON line."""
    dtype, contender, workers = args.one[0], args.one[1], int(args.one[2])
    facts = write(root, dtype, _total(args.quick))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # litdata's own warnings about its environment
        loader = make(contender, facts, workers)
        slots, pad = run_epoch(loader, contender, facts)  # warm-up (page cache, workers)
        seconds = []
        for _ in range(args.repeats or 1):
            start = time.perf_counter()
            run_epoch(loader, contender, facts)
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "slots": slots, "padding": pad}), flush=True)


def _total(quick: bool) -> int:
    return 500_000 if quick else 60_000_000


def measure_in_child(
    args: argparse.Namespace, root: Path, dtype: str, contender: str, workers: int, pss: bool
) -> tuple[dict[str, Any], Any]:
    """Timing run, then (if ``pss``) a separate run with its process tree's PSS sampled."""
    cmd = [sys.executable, __file__, "--one", dtype, contender, str(workers), "--dir", str(root)]
    cmd += ["--quick"] if args.quick else []

    def run(repeats: int, sample: bool) -> tuple[dict[str, Any], Any]:
        proc = subprocess.Popen(
            [*cmd, "--repeats", str(repeats)], stdout=subprocess.PIPE, text=True
        )
        sampler = PeakPss(proc.pid) if sample else None
        with sampler or contextlib.nullcontext():
            out, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{dtype} {contender} w{workers}: child exited {proc.returncode}")
        return json.loads(out.strip().splitlines()[-1]), sampler

    timing, _ = run(1 if args.quick else min(harness.repeats(args), 3), sample=False)
    peak = run(1, sample=True)[1] if pss else None
    return timing, peak


def main() -> None:
    p = harness.parser(__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--dtypes", default="uint16,int32")
    p.add_argument("--workers", default="0,2")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--no-pss", action="store_true", help="skip the separate PSS runs")
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the contender sequence this many times (fresh processes each time) and pool"
        " the timed epochs: ratios that a burst of load on a shared machine cannot decide",
    )
    p.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="sl-tokens-"))
    if args.one:
        run_one(args, root)
        return
    try:
        import litdata  # noqa: F401
    except ImportError:
        print("litdata is not installed: comparing with DL(memmap) only", file=sys.stderr)
        contenders = [c for c in args.contenders.split(",") if c != "litdata"]
    else:
        contenders = args.contenders.split(",")
    results: dict[str, harness.Result] = {}
    extras: dict[str, dict[str, str]] = {}
    for dtype in args.dtypes.split(","):
        # Written in a child so the corpus it builds does not inflate any measured process.
        child = multiprocessing.get_context("fork").Process(
            target=write, args=(root, dtype, _total(args.quick))
        )
        child.start()
        child.join()
        facts = write(root, dtype, _total(args.quick))
        for workers in (int(w) for w in args.workers.split(",")):
            for round_ in range(args.rounds):
                for c in contenders:
                    pss_run = not args.no_pss and round_ == 0
                    timing, pss = measure_in_child(args, root, dtype, c, workers, pss_run)
                    name = f"{dtype} {c} w{workers}"
                    if name not in results:
                        slots = timing["slots"]
                        itemsize = np.dtype(dtype).itemsize
                        params = {"dtype": dtype, "contender": c, "workers": workers}
                        results[name] = harness.Result(name, params, slots, slots * itemsize)
                        extras[name] = {
                            "padding": f"{timing['padding']:.1%}" if c == "sl packed" else "",
                            "non-file PSS MiB": f"{pss.peak_anon_shmem / MiB:.0f}" if pss else "",
                        }
                    res = results[name]
                    res.seconds.extend(timing["seconds"])
                    epoch = min(timing["seconds"])
                    print(
                        f"{name} (round {round_ + 1}/{args.rounds})",
                        f"{res.items / epoch / 1e6:,.1f}M tokens/s",
                        extras[name],
                        flush=True,
                    )
        print(f"{dtype}: {facts['tokens']:,} tokens in {facts['docs']:,} documents", flush=True)
    base_name = "litdata" if "litdata" in contenders else "DL(memmap)"
    base = {
        (r.params["dtype"], r.params["workers"]): r
        for r in results.values()
        if r.params["contender"] == base_name
    }
    blocks = {
        (r.params["dtype"], r.params["workers"]): r
        for r in results.values()
        if r.params["contender"] == "sl blocks"
    }

    def extra(r: harness.Result) -> dict[str, str]:
        key = (r.params["dtype"], r.params["workers"])
        out = {"M tokens/s": f"{r.items_per_s / 1e6:,.1f}"}
        if key in base:
            out[f"x {base_name}"] = f"{r.items_per_s / base[key].items_per_s:.2f}"
        if key in blocks:
            out["x sl blocks"] = f"{r.items_per_s / blocks[key].items_per_s:.2f}"
        return {**out, **extras[r.name]}

    harness.report(
        "Token streams: blocks and packed rows vs litdata TokensLoader",
        list(results.values()),
        args,
        extra=extra,
        timing="each contender in a fresh process, median of its pooled timed epochs",
        notes=f"Block {BLOCK} (packed rows {SEQ_LEN}) x batch {BATCH}, no shuffle, one warm-up "
        "epoch then the median of up to 3 timed epochs, each contender in a fresh process "
        f"({args.rounds} round(s) of the contender sequence, epochs pooled). "
        "Items = token slots. Non-file PSS = peak anonymous + shared memory of the process tree, "
        "from a separate run.",
    )


if __name__ == "__main__":
    main()
