"""StreamLoader yields what torch's DataLoader yields, and leaves the RNGs as DataLoader does.

A matrix over batch_size, drop_last, order (none, shuffle with a generator, shuffle with the global
seed, custom samplers, a batch_sampler) and collate_fn, for a plain map-style Dataset, a plain
IterableDataset and a real StreamingDataset (written with ShardWriter, several shards, every
column kind). Each case runs DataLoader then StreamLoader from the same RNG state and compares
batch by batch (structure, types, dtypes, shapes, values), any error raised (type and message),
and the global torch RNG and generator states afterwards. Where DataLoader refuses random access
on an IterableDataset, StreamLoader over a StreamingDataset is compared with DataLoader over a
map-style view of it (MapView), the documented deliberate difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from streamload import ShardWriter, StreamingDataset, StreamLoader

N = 50
SEED = 1234


# -- comparison -----------------------------------------------------------------------------------


def assert_batches_equal(expected: Any, actual: Any, where: str = "batch") -> None:
    """Same structure, container and leaf types, dtypes, shapes and values, recursively."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype, f"{where}: {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{where}: {actual.shape} != {expected.shape}"
        assert torch.equal(actual, expected), f"{where}: values differ"
        assert actual.is_contiguous() == expected.is_contiguous(), f"{where}: layout differs"
    elif isinstance(expected, np.ndarray | np.generic):
        assert actual.dtype == expected.dtype, f"{where}: {actual.dtype} != {expected.dtype}"
        assert np.shape(actual) == np.shape(expected), f"{where}: shapes differ"
        assert np.array_equal(actual, expected), f"{where}: values differ"
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), f"{where}: keys {list(actual)} != {list(expected)}"
        for key in expected:
            assert_batches_equal(expected[key], actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), f"{where}: length {len(actual)} != {len(expected)}"
        for k, (e, a) in enumerate(zip(expected, actual, strict=True)):
            assert_batches_equal(e, a, f"{where}[{k}]")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


class Run(NamedTuple):
    """What one loader produced: its batches, the error that ended it, the RNG states after."""

    batches: list[Any]
    error: tuple[type[BaseException], str] | None
    global_rng: torch.Tensor
    generator_rng: torch.Tensor | None


def _run(make: Callable[[], Any]) -> Run:
    """Build and exhaust a loader from the fixed global seed; record everything observable."""
    torch.manual_seed(SEED)
    batches: list[Any] = []
    error = None
    loader = None
    try:
        loader = make()
        batches.extend(loader)
    except Exception as exc:
        error = (type(exc), str(exc))
    generator = getattr(loader, "generator", None)
    return Run(
        batches, error, torch.get_rng_state(), None if generator is None else generator.get_state()
    )


def assert_same_runs(expected: Run, actual: Run) -> None:
    """Two runs agree on batches, error and RNG states (error types may be subclasses)."""
    if expected.error is None:
        assert actual.error is None, f"StreamLoader raised {actual.error}"
    else:
        assert actual.error is not None, f"DataLoader raised {expected.error}, StreamLoader did not"
        assert issubclass(actual.error[0], expected.error[0]), (actual.error, expected.error)
    assert len(actual.batches) == len(expected.batches)
    for k, (e, a) in enumerate(zip(expected.batches, actual.batches, strict=True)):
        assert_batches_equal(e, a, f"batch {k}")
    assert torch.equal(actual.global_rng, expected.global_rng), "global RNG state differs"
    if expected.generator_rng is not None:
        assert actual.generator_rng is not None
        assert torch.equal(actual.generator_rng, expected.generator_rng), "generator state differs"


# -- datasets -------------------------------------------------------------------------------------


def _plain_sample(i: int, as_tuple: bool) -> Any:
    vec = np.arange(3, dtype=np.float32) * i
    if as_tuple:
        return (vec, i, f"s{i}", np.int16(i))
    return {"vec": vec, "n": i, "x": i / 4, "s": f"s{i}", "b": bytes([i % 256]) * (i % 3)}


class PlainMap(Dataset[Any]):
    """An ordinary map-style dataset of dicts (or tuples) of numpy arrays, numbers, str, bytes."""

    def __init__(self, as_tuple: bool = False) -> None:
        self.as_tuple = as_tuple

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> Any:
        return _plain_sample(i, self.as_tuple)


class PlainIterable(IterableDataset[Any]):
    """An ordinary iterable dataset with a length."""

    def __len__(self) -> int:
        return N

    def __iter__(self) -> Iterator[Any]:
        return (_plain_sample(i, False) for i in range(N))


class MapView(Dataset[Any]):
    """A StreamingDataset seen as a map-style dataset: what DataLoader can shuffle."""

    def __init__(self, ds: StreamingDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


ALL_KINDS = {
    "columns": [
        {"name": "i", "kind": "int"},
        {"name": "f", "kind": "float"},
        {"name": "ok", "kind": "bool"},
        {"name": "text", "kind": "str"},
        {"name": "raw", "kind": "bytes"},
        {"name": "tok", "kind": "ndarray", "dtype": "int32", "shape": [4]},
        {"name": "img", "kind": "ndarray", "dtype": "uint8", "shape": [2, 3]},
        {"name": "w", "kind": "ndarray", "dtype": "float16", "shape": []},
        {"name": "flag", "kind": "ndarray", "dtype": "bool", "shape": []},
        {"name": "small", "kind": "ndarray", "dtype": "int8", "shape": []},
        {"name": "boxes", "kind": "ndarray", "dtype": "float32", "shape": [None, 2]},
    ]
}


def _all_kinds_sample(i: int) -> dict[str, Any]:
    return {
        "i": i * 7 - 100,
        "f": i / 3,
        "ok": i % 3 == 0,
        "text": "é" * (i % 5) + str(i),
        "raw": bytes(range(i % 7)),
        "tok": np.arange(4, dtype=np.int32) * i,
        "img": np.full((2, 3), i, np.uint8),
        "w": np.float16(i / 8),
        "flag": np.bool_(i % 2),
        "small": np.int8(-i),
        "boxes": np.full((2, 2), i, np.float32),  # variable schema, equal shapes: stacks
    }


def _write(
    root: Path, schema: dict[str, Any], make: Callable[[int], dict[str, Any]], shard_size: str
) -> str:
    with ShardWriter(str(root), shard_size=shard_size, schema=schema) as w:
        for i in range(N):
            w.write(make(i))
    return str(root)


@pytest.fixture(scope="module")
def streaming_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _write(tmp_path_factory.mktemp("all_kinds"), ALL_KINDS, _all_kinds_sample, "1KiB")


def _open(url: str, **kwargs: Any) -> StreamingDataset:
    ds = StreamingDataset(url, verify=True, **kwargs)
    assert ds.num_shards > 3, "the test needs batches that cross shards"
    return ds


# -- the matrix -----------------------------------------------------------------------------------

ORDERS = [
    "none",
    "shuffle_generator",
    "shuffle_global",
    "subset_sampler",
    "weighted",
    "batch_sampler",
]


def tagged_collate(samples: Any) -> Any:
    """A custom collate_fn: leaves samples as they are, so per-sample values are compared."""
    return ("custom", samples)


def _loader_kwargs(
    order: str, batch_size: int | None, drop_last: bool, custom: bool
) -> dict[str, Any]:
    """Fresh keyword arguments (samplers and generators carry state, so never share them)."""
    kwargs: dict[str, Any] = {"batch_size": batch_size, "drop_last": drop_last}
    if custom:
        kwargs["collate_fn"] = tagged_collate
    if order == "shuffle_generator":
        kwargs.update(shuffle=True, generator=torch.Generator().manual_seed(7))
    elif order == "shuffle_global":
        kwargs["shuffle"] = True
    elif order == "subset_sampler":
        kwargs["sampler"] = SubsetRandomSampler(list(range(5, N, 2)))
    elif order == "weighted":
        weights = [1.0 + (i % 4) for i in range(N)]
        kwargs["sampler"] = WeightedRandomSampler(weights, num_samples=N + 3)
    elif order == "batch_sampler":
        kwargs.pop("batch_size")
        kwargs.pop("drop_last")
        inner = RandomSampler(range(N), generator=torch.Generator().manual_seed(3))
        kwargs["batch_sampler"] = BatchSampler(inner, batch_size or 2, drop_last)
    return kwargs


MATRIX = pytest.mark.parametrize(
    ("batch_size", "drop_last", "order", "custom"),
    [
        (b, d, o, c)
        for b in (1, 3, 64, None)
        for d in (False, True)
        for o in ORDERS
        for c in (False, True)
    ],
)


@pytest.mark.parametrize("as_tuple", [False, True])
@MATRIX
def test_map_dataset_batches_and_rng_match_dataloader(
    batch_size: int | None, drop_last: bool, order: str, custom: bool, as_tuple: bool
) -> None:
    """Over an ordinary map-style dataset StreamLoader is DataLoader: batches, errors, RNG."""
    ds = PlainMap(as_tuple)
    expected = _run(lambda: DataLoader(ds, **_loader_kwargs(order, batch_size, drop_last, custom)))
    actual = _run(lambda: StreamLoader(ds, **_loader_kwargs(order, batch_size, drop_last, custom)))
    assert_same_runs(expected, actual)


@MATRIX
def test_iterable_dataset_batches_and_rng_match_dataloader(
    batch_size: int | None, drop_last: bool, order: str, custom: bool
) -> None:
    """Over an ordinary IterableDataset StreamLoader batches, refuses and seeds as DataLoader."""
    ds = PlainIterable()
    expected = _run(lambda: DataLoader(ds, **_loader_kwargs(order, batch_size, drop_last, custom)))
    actual = _run(lambda: StreamLoader(ds, **_loader_kwargs(order, batch_size, drop_last, custom)))
    assert_same_runs(expected, actual)


@MATRIX
def test_streaming_dataset_batches_and_rng_match_dataloader(
    streaming_url: str, batch_size: int | None, drop_last: bool, order: str, custom: bool
) -> None:
    """Over a real StreamingDataset (every column kind, many shards) StreamLoader is DataLoader.

    Without a requested order the reference is DataLoader over the dataset itself; with shuffle,
    a sampler or a batch_sampler it is DataLoader over MapView (DataLoader refuses those on an
    IterableDataset).
    """
    ds = _open(streaming_url)
    reference = ds if order == "none" else MapView(ds)
    expected = _run(
        lambda: DataLoader(reference, **_loader_kwargs(order, batch_size, drop_last, custom))
    )
    actual = _run(lambda: StreamLoader(ds, **_loader_kwargs(order, batch_size, drop_last, custom)))
    assert_same_runs(expected, actual)
    if expected.error is None and not (drop_last and (batch_size or 2) > N):
        assert expected.batches, "the case must produce batches to compare"


# -- StreamingDataset specifics -------------------------------------------------------------------

RAGGED = {
    "columns": [
        {"name": "i", "kind": "int"},
        {"name": "boxes", "kind": "ndarray", "dtype": "float32", "shape": [None, 2]},
    ]
}
UINT64_SCALAR = {
    "columns": [
        {"name": "i", "kind": "int"},
        {"name": "u", "kind": "ndarray", "dtype": "uint64", "shape": []},
    ]
}
FAILING = {
    "ragged": (RAGGED, lambda i: {"i": i, "boxes": np.full((i % 3, 2), i, np.float32)}),
    "uint64_scalar": (UINT64_SCALAR, lambda i: {"i": i, "u": np.uint64(2**63 + i)}),
}


@pytest.mark.parametrize("case", sorted(FAILING))
@pytest.mark.parametrize("batch_size", [1, 3, None])
@pytest.mark.parametrize("order", ["none", "shuffle_generator"])
def test_columns_default_collate_rejects_fail_identically(
    tmp_path: Path, case: str, batch_size: int | None, order: str
) -> None:
    """Ragged arrays and numpy uint64 scalars fail (or pass) exactly where DataLoader's do."""
    schema, make = FAILING[case]
    ds = _open(_write(tmp_path, schema, make, "128B"))
    reference = ds if order == "none" else MapView(ds)
    expected = _run(
        lambda: DataLoader(reference, **_loader_kwargs(order, batch_size, False, False))
    )
    actual = _run(lambda: StreamLoader(ds, **_loader_kwargs(order, batch_size, False, False)))
    assert_same_runs(expected, actual)
    if expected.error is not None:
        assert actual.error == expected.error, "the error message should be torch's own"


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_dataset_shuffle_and_epoch_follow_the_dataset_order(
    streaming_url: str, batch_size: int
) -> None:
    """With the dataset's own shuffle, each epoch's batches equal DataLoader's for that epoch."""
    ds = _open(streaming_url, shuffle=True, seed=11)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        expected = _run(lambda: DataLoader(ds, batch_size=batch_size))
        actual = _run(lambda: StreamLoader(ds, batch_size=batch_size))
        assert_same_runs(expected, actual)


@pytest.mark.parametrize("order", ["none", "shuffle_global"])
@pytest.mark.parametrize("batch_size", [3, None])
def test_transform_takes_the_per_sample_path_like_dataloader(
    streaming_url: str, order: str, batch_size: int | None
) -> None:
    """A dataset transform is applied per sample, as DataLoader sees it."""

    def transform(sample: dict[str, Any]) -> dict[str, Any]:
        return {"tok2": sample["tok"] * 2, "text": sample["text"].upper()}

    ds = _open(streaming_url, transform=transform)
    reference = ds if order == "none" else MapView(ds)
    expected = _run(
        lambda: DataLoader(reference, **_loader_kwargs(order, batch_size, False, False))
    )
    actual = _run(lambda: StreamLoader(ds, **_loader_kwargs(order, batch_size, False, False)))
    assert_same_runs(expected, actual)
    assert list(expected.batches[0]) == ["tok2", "text"]


def test_column_projection_matches_dataloader(streaming_url: str) -> None:
    """A dataset opened with a subset of columns batches the same subset, in schema order."""
    ds = _open(streaming_url, columns=["boxes", "text", "i"])
    expected = _run(lambda: DataLoader(ds, batch_size=8))
    actual = _run(lambda: StreamLoader(ds, batch_size=8))
    assert_same_runs(expected, actual)
    assert list(actual.batches[0]) == ["i", "text", "boxes"]
