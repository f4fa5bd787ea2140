"""Trainer-side worker pool pieces: control messages, ring geometry, pin_memory, persistence."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from streamload.loader.loader import StreamLoader
from streamload.loader.pool import _ring_capacity


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


def test_auto_ring_size_follows_the_batches_the_dataset_makes(tmp_path: Any) -> None:
    """ring_size=auto: small rows get a small ring, 256 x 64 KiB rows one that holds 1.5x a batch."""
    from streamload.loader.pool import auto_ring_capacity

    small = _blob_dataset(tmp_path / "small", 100)
    big = _blob_dataset(tmp_path / "big", 64 * 1024)
    small_loader = StreamLoader(small, batch_size=256, num_workers=1)
    big_loader = StreamLoader(big, batch_size=256, num_workers=1)
    assert (
        auto_ring_capacity(small_loader.dataset, small_loader.batch_size, small_loader.fetch_spec())
        == 4 << 20
    )
    capacity = auto_ring_capacity(
        big_loader.dataset, big_loader.batch_size, big_loader.fetch_spec()
    )
    assert capacity // 2 - 64 >= 1.5 * 256 * 64 * 1024
    assert capacity == 64 << 20
    transformed = StreamLoader(
        _blob_dataset(tmp_path / "t", 100), batch_size=256, num_workers=1, collate_fn=lambda b: b
    )
    assert (
        auto_ring_capacity(transformed.dataset, transformed.batch_size, transformed.fetch_spec())
        == 64 << 20
    )


def test_auto_sized_rings_carry_every_batch(tmp_path: Any) -> None:
    """With the auto-sized (small) ring, an epoch arrives whole and in order."""
    ds = _blob_dataset(tmp_path / "ds", 3000, n=500)
    loader = StreamLoader(ds, batch_size=100, num_workers=2)
    batches = list(loader)
    assert [b["id"].tolist() for b in batches] == [
        list(range(k, k + 100)) for k in range(0, 500, 100)
    ]
    assert all(ring.capacity == 4 << 20 for ring in loader._spare_rings)


def test_record_too_large_says_what_the_user_set_as_ring_size(tmp_path: Any) -> None:
    """ring_size="1MB" with 700 KB batches: the error names '1MB' and where it came from, the
    1000000 bytes it means and the 524288-byte ring it became, not just the ring's size."""
    import streamload as sl

    ds = _blob_dataset(tmp_path / "ds", 350_000, n=8)
    loader = StreamLoader(ds, batch_size=2, num_workers=1, ring_size="1MB")
    with pytest.raises(sl.WorkerError) as info:
        next(iter(loader))
    message = str(info.value)
    assert "RecordTooLarge" in message
    assert "ring_size is set to '1MB' (argument) = 1000000 bytes" in message
    assert "524288 bytes" in message
