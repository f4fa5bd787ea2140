"""Transport benchmark: one producer process streams payloads to this (consumer) process.

For each payload size (1 KiB, 64 KiB, 1 MiB, 16 MiB) it compares:

* ring copy-out   -- streamload ring + batch codec: producer `send(ring, tensor)` writes straight
                     into the ring; consumer `decode(record, copy=True)` (one copy into a fresh
                     tensor, record released at once). The default loader path.
* ring zero-copy  -- same, consumer `decode(record, copy=False)`: a tensor viewing ring memory,
                     dropped right away (which releases the record).
* ring streamed   -- the loader's copying default: a 4 MiB ring whatever the payload, each
                     payload streamed through it in records of at most 1 MiB
                     (`send(..., chunk=)`), the consumer copying each into the tensor as it
                     arrives (`decode(record, more=ring.get)`).
* ring raw        -- `ring.put(bytes-like)` / `ring.get()` + release, no codec: the transport floor.
* mp.Queue        -- `multiprocessing.Queue(maxsize=4)` carrying a numpy array (pickled).
* DataLoader      -- `torch.utils.data.DataLoader(num_workers=1, batch_size=None)` over an
                     IterableDataset yielding a fresh tensor per item, allocated in shared memory
                     as default_collate does in a worker (torch's shared-memory fd passing).

Producers are forked (the platform default, as DataLoader uses) and stream continuously; the
consumer times `items` consecutive receives per repeat after a warm-up repeat. Throughput is
items/s and GB/s of payload; the last column is the speed-up over mp.Queue at the same size.

    python benchmarks/transport.py [--quick] [--repeats N] [--json out.json] [--results-md]
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

from streamload.transport.codec import decode, encoded_size, send
from streamload.transport.ring import Ring, RingHandle, capacity_for

KiB, MiB = 1 << 10, 1 << 20
SIZES = [KiB, 64 * KiB, MiB, 16 * MiB]
QUICK_SIZES = [KiB, MiB]
CTX = mp.get_context("fork")
TIMEOUT = 120.0  # seconds any single receive may take before the run is declared hung

Consume = Callable[[int], None]


def items_per_repeat(size: int, quick: bool) -> int:
    """Enough items for a measurable repeat: ~256 MiB of payload (quick: ~4 MiB), clamped."""
    target, low, high = (4 * MiB, 4, 500) if quick else (256 * MiB, 16, 50_000)
    return max(low, min(high, target // size))


def payload_tensor(size: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8))


# ---------------------------------------------------------------- producers (forked children)


STREAM_RING = 4 * MiB
STREAM_CHUNK = STREAM_RING // 4 - 64


def _ring_producer(handle: RingHandle, size: int, total: int, mode: str) -> None:
    ring = Ring.attach(handle, "producer")
    tensor = payload_tensor(size)
    array = tensor.numpy()
    for _ in range(total):
        if mode == "raw":
            ring.put(array, timeout=TIMEOUT)
        else:
            chunk = STREAM_CHUNK if mode == "stream" else None
            send(ring, tensor, timeout=TIMEOUT, chunk=chunk)
    ring.close(timeout=TIMEOUT)


def _queue_producer(queue: Any, size: int, total: int) -> None:
    array = payload_tensor(size).numpy()
    for _ in range(total):
        queue.put(array, timeout=TIMEOUT)


class _Payloads(IterableDataset[torch.Tensor]):
    def __init__(self, size: int, total: int) -> None:
        self.size, self.total = size, total

    def __iter__(self) -> Iterator[torch.Tensor]:
        tensor = payload_tensor(self.size)
        for _ in range(self.total):
            # A fresh batch per item, allocated the way default_collate does in a worker (straight
            # into a new shared-memory storage, one copy). Yielding the same tensor every time
            # would let torch move it to shared memory once and then only re-send its handle.
            storage = tensor._typed_storage()._new_shared(tensor.numel(), device=tensor.device)
            yield tensor.new(storage).resize_(tensor.shape).copy_(tensor)


# ---------------------------------------------------------------- streams (consumer side)


@contextmanager
def ring_stream(size: int, total: int, mode: str) -> Iterator[Consume]:
    if mode == "stream":
        capacity = STREAM_RING
    else:
        capacity = capacity_for(encoded_size(payload_tensor(size)), records=4)
    ring = Ring.create(capacity)
    proc = CTX.Process(target=_ring_producer, args=(ring.handle(), size, total, mode))
    proc.start()
    ring.set_producer_pid(proc.pid or 0)

    def more() -> Any:
        return ring.get(timeout=TIMEOUT)

    def consume(n: int) -> None:
        for _ in range(n):
            record = ring.get(timeout=TIMEOUT)
            if mode == "raw":
                record.release()
            else:
                tensor = decode(record, copy=mode != "view", more=more)
                del record, tensor  # zero-copy: dropping the tensor releases the record

    try:
        yield consume
    finally:
        ring.close()
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()


@contextmanager
def queue_stream(size: int, total: int) -> Iterator[Consume]:
    queue = CTX.Queue(maxsize=4)
    proc = CTX.Process(target=_queue_producer, args=(queue, size, total))
    proc.start()

    def consume(n: int) -> None:
        for _ in range(n):
            queue.get(timeout=TIMEOUT)

    try:
        yield consume
    finally:
        proc.join(TIMEOUT)
        if proc.is_alive():
            proc.kill()
        queue.close()


@contextmanager
def dataloader_stream(size: int, total: int) -> Iterator[Consume]:
    loader = DataLoader(_Payloads(size, total), batch_size=None, num_workers=1, timeout=TIMEOUT)
    iterators = [iter(loader)]

    def consume(n: int) -> None:
        for _ in range(n):
            next(iterators[0])

    try:
        yield consume
    finally:
        iterators.clear()  # dropping the iterator shuts its worker down


TRANSPORTS: dict[str, Callable[[int, int], Any]] = {
    "ring copy-out": lambda size, total: ring_stream(size, total, "copy"),
    "ring zero-copy": lambda size, total: ring_stream(size, total, "view"),
    "ring streamed": lambda size, total: ring_stream(size, total, "stream"),
    "ring raw": lambda size, total: ring_stream(size, total, "raw"),
    "mp.Queue": queue_stream,
    "DataLoader": dataloader_stream,
}


def main() -> None:
    args = harness.parser(__doc__.splitlines()[0]).parse_args()
    repeats = harness.repeats(args)
    warmup = 1
    results: list[harness.Result] = []
    for size in QUICK_SIZES if args.quick else SIZES:
        items = items_per_repeat(size, args.quick)
        total = items * (warmup + repeats)
        for name, stream in TRANSPORTS.items():
            with stream(size, total) as consume:
                result = harness.measure(
                    name,
                    functools.partial(consume, items),
                    items=items,
                    nbytes=items * size,
                    params={"payload_bytes": size},
                    warmup=warmup,
                    repeats=repeats,
                )
            results.append(result)
            print(
                f"  {name:15s} {size:>9d} B  {result.gb_per_s:7.3f} GB/s  {result.items_per_s:12,.0f} items/s",
                flush=True,
            )

    queue_speed = {
        r.params["payload_bytes"]: r.items_per_s for r in results if r.name == "mp.Queue"
    }

    def speedup(r: harness.Result) -> dict[str, str]:
        return {"x mp.Queue": f"{r.items_per_s / queue_speed[r.params['payload_bytes']]:.1f}"}

    notes = (
        "ring copy-out = decode(copy=True) into a fresh tensor (a ring of 4 payloads); zero-copy "
        "= decode(copy=False); streamed = copy-out through a 4 MiB ring in records of <= 1 MiB "
        "(the loader's default); raw = put/get without the codec. One forked producer process, "
        "consumer in the parent."
    )
    harness.report(
        "Transport: one producer process -> consumer", results, args, extra=speedup, notes=notes
    )


if __name__ == "__main__":
    main()
