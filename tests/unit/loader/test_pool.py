"""Trainer-side worker pool pieces: control messages, ring geometry, pin_memory, persistence."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from streamload.loader.loader import StreamLoader
from streamload.loader.pool import _ring_capacity, ring_geometry
from streamload.transport.ring import record_size


@pytest.mark.parametrize(("size", "capacity"), [(64 << 20, 64 << 20), (100_000, 65536), (1, 4096)])
def test_ring_capacity_is_a_power_of_two_not_above_ring_size(size: int, capacity: int) -> None:
    """ring_size is rounded down to the power of two the native ring needs (at least 4 KiB)."""
    assert _ring_capacity(size) == capacity


class _Tiny(Dataset[Any]):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> Any:
        return torch.tensor([i])


def test_pin_memory_without_accelerator_warns_like_dataloader() -> None:
    """pin_memory=True without CUDA warns (as DataLoader) and still yields the batches."""
    loader = StreamLoader(
        _Tiny(), batch_size=2, num_workers=1, pin_memory=True, multiprocessing_context="fork"
    )
    with pytest.warns(UserWarning, match="no accelerator is found"):
        batches = list(loader)
    assert [b.tolist() for b in batches] == [[[0], [1]], [[2], [3]]]


def test_persistent_workers_keep_their_pids_across_epochs() -> None:
    """With persistent_workers the second epoch runs on the same processes."""
    loader = StreamLoader(
        _Tiny(),
        batch_size=1,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",
    )
    first = iter(loader)
    pids = [p.pid for p in first._pool.procs]  # type: ignore[attr-defined]
    assert len(list(first)) == 4
    second = iter(loader)
    assert [p.pid for p in second._pool.procs] == pids  # type: ignore[attr-defined]
    assert len(list(second)) == 4
    second.shutdown()  # type: ignore[attr-defined]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_columnar_passes_reuse_their_workers_without_persistent_workers(tmp_path: Any) -> None:
    """Non-persistent passes over a StreamingDataset's columnar route run on the same workers
    (no user code runs there) and yield exactly the batches of fresh workers and of in-process
    loading, epoch after epoch; the workers go when the loader goes."""
    import gc

    import streamload as sl

    with sl.ShardWriter(str(tmp_path), shard_size="4KiB") as w:
        for i in range(200):
            w.write({"x": i, "s": f"row {i}"})
    ds = sl.StreamingDataset(str(tmp_path), shuffle=True, seed=3)
    loader = StreamLoader(ds, batch_size=16, num_workers=2, multiprocessing_context="fork")
    reference = StreamLoader(ds, batch_size=16)
    pids = None
    for epoch in range(3):
        ds.set_epoch(epoch)
        it = iter(loader)
        got = [(b["x"].tolist(), b["s"]) for b in it]
        want = [(b["x"].tolist(), b["s"]) for b in reference]
        assert got == want
        now = [p.pid for p in it._pool.procs]  # type: ignore[attr-defined]
        assert pids is None or now == pids
        pids = now
    assert pids is not None and all(_alive(p) for p in pids)
    del loader, it
    gc.collect()
    assert not any(_alive(p) for p in pids)


def test_passes_with_user_code_in_workers_start_fresh_workers(tmp_path: Any) -> None:
    """A transform, a worker_init_fn or a map-style dataset means fresh workers every pass, as
    DataLoader starts them; a transform set between passes also retires a reusable pool."""
    import streamload as sl

    with sl.ShardWriter(str(tmp_path), shard_size="4KiB") as w:
        for i in range(64):
            w.write({"x": i})
    ds = sl.StreamingDataset(str(tmp_path))
    loaders = [
        StreamLoader(_Tiny(), batch_size=1, num_workers=2, multiprocessing_context="fork"),
        StreamLoader(
            ds,
            batch_size=8,
            num_workers=2,
            multiprocessing_context="fork",
            worker_init_fn=lambda _: None,
        ),
        StreamLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork"),
    ]
    for n, loader in enumerate(loaders):
        first = iter(loader)
        old = [p.pid for p in first._pool.procs]  # type: ignore[attr-defined]
        list(first)
        if n == 2:  # reusable until the dataset gains a transform
            ds.transform = lambda row: row
        second = iter(loader)
        new = [p.pid for p in second._pool.procs]  # type: ignore[attr-defined]
        list(second)
        assert set(old).isdisjoint(new)
        assert not any(_alive(p) for p in old)
    ds.transform = None


_START_METHOD_PROBE = """
import threading
import streamload as sl
from streamload.loader.pool import default_context

def batches():
    loader = sl.StreamLoader(list(range(8)), batch_size=4, num_workers=1)
    return [b.tolist() for b in loader]

print(default_context("auto").get_start_method())
stop = threading.Event()
t = threading.Thread(target=stop.wait)
t.start()
ctx = default_context("auto")
print(ctx.get_start_method())
import multiprocessing.forkserver as forkserver
print("torch" in forkserver._forkserver._preload_modules)
print(batches())
stop.set()
t.join()
"""


def test_auto_start_method_forks_only_while_the_trainer_is_single_threaded() -> None:
    """'auto' forks a single-threaded trainer, and uses forkserver (torch preloaded) once another thread runs."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _START_METHOD_PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.splitlines()
    assert out[:3] == ["fork", "forkserver", "True"]
    assert out[3] == "[[0, 1, 2, 3], [4, 5, 6, 7]]"  # workers started under forkserver work


def test_explicit_start_methods_are_honoured() -> None:
    """A configured start method other than auto is used as given."""
    from streamload.loader.pool import default_context

    for method in ("fork", "spawn", "forkserver"):
        assert default_context(method).get_start_method() == method


def _blob_dataset(root: Any, sample_bytes: int, n: int = 64) -> Any:
    import streamload as sl

    with sl.ShardWriter(str(root), shard_size="1GB") as w:
        for i in range(n):
            w.write({"id": i, "data": bytes(sample_bytes)})
    return sl.StreamingDataset(str(root))


def _geometry(loader: StreamLoader, ring_size: int = 0) -> tuple[int, int | None]:
    spec = loader.fetch_spec()
    return ring_geometry(loader.dataset, loader.batch_size, spec, ring_size, loader.zero_copy)


def test_copying_passes_get_a_small_ring_whatever_the_batch(tmp_path: Any) -> None:
    """ring_size=auto without zero_copy: a 4 MiB ring of four chunk records, the same for
    100-byte and 64 KiB rows (batches stream through it), for any route."""
    small = _blob_dataset(tmp_path / "small", 100)
    big = _blob_dataset(tmp_path / "big", 64 * 1024)
    loaders = [
        StreamLoader(small, batch_size=256, num_workers=1),
        StreamLoader(big, batch_size=256, num_workers=1),
        StreamLoader(big, batch_size=256, num_workers=1, collate_fn=lambda b: b),
    ]
    for loader in loaders:
        capacity, chunk = _geometry(loader)
        assert (capacity, chunk) == (4 << 20, (1 << 20) - 64)
        assert 4 * record_size(chunk) == capacity  # four chunk records fill it exactly
    assert _geometry(loaders[1], 1 << 16) == (1 << 16, 16320)


def test_zero_copy_rings_hold_whole_batches_sized_from_the_data(tmp_path: Any) -> None:
    """ring_size=auto with zero_copy: small rows get a 4 MiB ring, 256 x 64 KiB rows one whose
    record limit holds 1.5x a batch, unknown batches (custom collate) 64 MiB."""
    small = _blob_dataset(tmp_path / "small", 100)
    big = _blob_dataset(tmp_path / "big", 64 * 1024)
    small_loader = StreamLoader(small, batch_size=256, num_workers=1, zero_copy=True)
    big_loader = StreamLoader(big, batch_size=256, num_workers=1, zero_copy=True)
    assert _geometry(small_loader) == (4 << 20, None)
    capacity, chunk = _geometry(big_loader)
    assert chunk is None and capacity // 2 - 64 >= 1.5 * 256 * 64 * 1024
    assert capacity == 64 << 20
    transformed = StreamLoader(
        _blob_dataset(tmp_path / "t", 100),
        batch_size=256,
        num_workers=1,
        collate_fn=lambda b: b,
        zero_copy=True,
    )
    assert _geometry(transformed) == (64 << 20, None)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_auto_sized_rings_carry_every_batch(tmp_path: Any, zero_copy: bool) -> None:
    """With the auto-sized ring, an epoch of 16 MiB batches arrives whole and in order, streamed
    through 4 MiB rings or (zero_copy) as whole records."""
    ds = _blob_dataset(tmp_path / "ds", 64 * 1024, n=600)
    loader = StreamLoader(ds, batch_size=256, num_workers=2, zero_copy=zero_copy)
    batches = [{"id": b["id"].clone(), "n": len(b["data"])} for b in loader]
    assert [b["id"].tolist() for b in batches] == [
        list(range(k, min(k + 256, 600))) for k in range(0, 600, 256)
    ]
    expected = 4 << 20 if not zero_copy else 64 << 20
    assert all(ring.capacity == expected for ring in loader._spare_rings)


def test_record_too_large_says_what_the_user_set_as_ring_size(tmp_path: Any) -> None:
    """ring_size="1MB" with 700 KB zero-copy batches (which must fit half a ring: copying passes
    stream any batch): the error names '1MB' and where it came from, the 1000000 bytes it means
    and the 524288-byte ring it became, not just the ring's size."""
    import streamload as sl

    ds = _blob_dataset(tmp_path / "ds", 350_000, n=8)
    loader = StreamLoader(ds, batch_size=2, num_workers=1, ring_size="1MB", zero_copy=True)
    with pytest.raises(sl.WorkerError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "RecordTooLarge" in message
    assert "ring_size is set to '1MB' (argument) = 1000000 bytes" in message
    assert "524288 bytes" in message
