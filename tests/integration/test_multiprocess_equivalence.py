"""StreamLoader(num_workers>0) yields exactly DataLoader's batches, in DataLoader's order and seeding."""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, IterableDataset, get_worker_info

import streamload as sl
from streamload.loader.loader import StreamLoader


class _MapData(Dataset[Any]):
    def __init__(self, n: int = 23) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return {
            "x": np.arange(3, dtype=np.float32) + i,
            "t": (i, float(i) / 2),
            "s": f"s{i}",
            "b": bytes([i % 256]) * 2,
            "r": (random.random(), float(np.random.rand()), torch.rand(1).item()),
        }


class _ShardedIterable(IterableDataset[Any]):
    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for i in range(wid, self.n, nw):
            yield {"i": i, "w": wid}


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def _both(dataset: Any, seed: int = 0, **kwargs: Any) -> tuple[list[Any], list[Any]]:
    gen_seed = kwargs.pop("generator_seed", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "too many workers" on 2 cores
        torch.manual_seed(seed)
        if gen_seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(gen_seed)
        expected = list(DataLoader(dataset, **kwargs))
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        if gen_seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(gen_seed)
        got = list(StreamLoader(dataset, **kwargs))
        assert torch.equal(state, torch.get_rng_state())
    return expected, got


@pytest.mark.parametrize("num_workers", [1, 2, 3])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 4},
        {"batch_size": 5, "shuffle": True, "drop_last": True},
        {"batch_size": None},
        {"batch_sampler": BatchSampler(range(23), 6, False)},
    ],
)
def test_map_dataset_batches_equal_dataloader(num_workers: int, kwargs: dict[str, Any]) -> None:
    """Map-style batches (values, dtypes, worker RNG draws) match DataLoader's in order."""
    expected, got = _both(
        _MapData(), num_workers=num_workers, multiprocessing_context="fork", **kwargs
    )
    assert len(expected) == len(got) > 0
    _same(expected, got)


def test_generator_and_sampler_drive_the_same_order() -> None:
    """A shuffle generator and an explicit sampler give DataLoader's batches."""
    kwargs = {"num_workers": 2, "multiprocessing_context": "fork", "batch_size": 3}
    expected, got = _both(_MapData(), shuffle=True, generator_seed=7, **kwargs)
    _same(expected, got)
    expected, got = _both(_MapData(), sampler=[5, 1, 9, 2, 2, 0, 22], **kwargs)
    _same(expected, got)


@pytest.mark.parametrize("n", [12, 13])
@pytest.mark.parametrize("num_workers", [2, 3])
def test_iterable_dataset_sharded_by_worker_info(n: int, num_workers: int) -> None:
    """An IterableDataset sharding itself by get_worker_info yields DataLoader's batches."""
    expected, got = _both(
        _ShardedIterable(n), num_workers=num_workers, multiprocessing_context="fork", batch_size=2
    )
    _same(expected, got)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_other_start_methods_match(method: str) -> None:
    """forkserver and spawn workers give the same batches (seeding included)."""
    expected, got = _both(_MapData(9), num_workers=2, multiprocessing_context=method, batch_size=4)
    _same(expected, got)


def _init_record(worker_id: int) -> None:
    info = get_worker_info()
    assert info is not None and info.id == worker_id
    torch.manual_seed(1000 + worker_id)  # visible in the batches: init ran once, with this id


class _SeedProbe(Dataset[Any]):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> Any:
        info = get_worker_info()
        return {"w": info.id if info else -1, "r": torch.randint(0, 1 << 30, ()).item()}


def test_worker_init_fn_and_persistent_workers_over_two_epochs() -> None:
    """worker_init_fn runs once per worker with its id; persistent workers keep RNG state."""
    kwargs: dict[str, Any] = {
        "num_workers": 2,
        "multiprocessing_context": "fork",
        "batch_size": 2,
        "worker_init_fn": _init_record,
        "persistent_workers": True,
    }
    torch.manual_seed(3)
    dl = DataLoader(_SeedProbe(), **kwargs)
    expected = [list(dl), list(dl)]
    torch.manual_seed(3)
    loader = StreamLoader(_SeedProbe(), **kwargs)
    got = [list(loader), list(loader)]
    _same(expected, got)
    assert [int(b["w"][0]) for b in got[0]] == [0, 1, 0, 1]


class _MapView(Dataset[Any]):
    """DataLoader refuses shuffle on an IterableDataset: the map-style view it would see."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


def test_streaming_dataset_matches_dataloader(tmp_path: Any) -> None:
    """Over a real StreamingDataset: shuffled batches equal DataLoader's; unshuffled ones are the
    pure order cut into batches (DataLoader's num_workers=0 batches, independent of workers)."""
    with sl.ShardWriter(str(tmp_path), shard_size="4KiB") as w:
        for i in range(50):
            w.write({"x": i, "b": bytes([i]) * (i % 7)})
    ds = sl.StreamingDataset(str(tmp_path))
    torch.manual_seed(5)
    expected = list(DataLoader(_MapView(ds), batch_size=8, shuffle=True, num_workers=2))
    torch.manual_seed(5)
    got = list(
        StreamLoader(ds, batch_size=8, shuffle=True, num_workers=2, multiprocessing_context="fork")
    )
    _same(expected, got)
    for num_workers in (2, 3):
        for drop_last in (False, True):
            expected = list(DataLoader(ds, batch_size=8, drop_last=drop_last))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                loader = StreamLoader(
                    ds,
                    batch_size=8,
                    drop_last=drop_last,
                    num_workers=num_workers,
                    multiprocessing_context="fork",
                )
                got = list(loader)
            _same(expected, got)


def test_persistent_workers_follow_set_epoch(tmp_path: Any) -> None:
    """A persistent pool over a StreamingDataset sees set_epoch calls made after it started."""
    with sl.ShardWriter(str(tmp_path), shard_size="4KiB") as w:
        for i in range(40):
            w.write({"x": i})
    ds = sl.StreamingDataset(str(tmp_path), shuffle=True)
    loader = StreamLoader(
        ds, batch_size=8, num_workers=2, persistent_workers=True, multiprocessing_context="fork"
    )
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        got = [int(v) for b in loader for v in b["x"]]
        assert got == ds.sample_order(epoch).tolist()


def test_zero_copy_batches_equal_copied_ones_and_outlive_ring_reuse(tmp_path: Any) -> None:
    """zero_copy=True yields the same batches as the copying default, and a batch the user keeps
    stays intact while later batches cycle through the (small) ring."""
    with sl.ShardWriter(str(tmp_path), shard_size="64KiB") as w:
        for i in range(400):
            w.write({"x": i, "tok": np.full(64, i, dtype=np.int32)})
    ds = sl.StreamingDataset(str(tmp_path))
    kwargs: dict[str, Any] = {"batch_size": 16, "num_workers": 2, "multiprocessing_context": "fork"}
    copied = list(StreamLoader(ds, **kwargs))
    zero = StreamLoader(ds, zero_copy=True, ring_size=64 * 1024, timeout=30, **kwargs)
    kept = None
    got = []
    for n, batch in enumerate(zero):
        if n == 1:
            kept = batch  # held while ~24 more batches pass through 64 KiB rings
        got.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
    _same(copied, got)
    assert kept is not None
    assert torch.equal(kept["x"], copied[1]["x"]) and torch.equal(kept["tok"], copied[1]["tok"])


def test_zero_copy_batches_hold_ring_space_until_they_die(tmp_path: Any) -> None:
    """With zero_copy=True kept batches pin their ring records: keeping every batch of a ring too
    small for them stalls the worker (a timed-out WorkerError, not a hang), while the copying
    default finishes the same pass."""
    with sl.ShardWriter(str(tmp_path), shard_size="64KiB") as w:
        for i in range(400):
            w.write({"x": i, "tok": np.full(64, i, dtype=np.int32)})
    ds = sl.StreamingDataset(str(tmp_path))
    kwargs: dict[str, Any] = {
        "batch_size": 16,
        "num_workers": 1,
        "multiprocessing_context": "fork",
        "ring_size": 32 * 1024,
        "timeout": 1,
    }
    kept = list(StreamLoader(ds, **kwargs))
    assert sum(len(b["x"]) for b in kept) == 400
    kept = []
    with pytest.raises(sl.WorkerError, match="timed out"):
        for batch in StreamLoader(ds, zero_copy=True, **kwargs):
            kept.append(batch)
    assert 0 < len(kept) < 25
