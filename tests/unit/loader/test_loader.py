"""StreamLoader's DataLoader surface: len, validation, epochs, RNG timing, routes, the worker seam."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from streamload import ShardWriter, StreamingDataset, StreamLoader
from streamload.errors import ConfigError
from streamload.pipeline.fetch import Route

N = 40


class Squares(Dataset[Any]):
    """A map-style dataset of small dicts."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": i * i, "v": np.full(2, i, np.float32)}


class Counter(IterableDataset[Any]):
    """An iterable dataset whose ``__len__`` can be made to lie."""

    def __init__(self, n: int = N, claimed: int | None = None) -> None:
        self.n, self.claimed = n, claimed

    def __len__(self) -> int:
        return self.n if self.claimed is None else self.claimed

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))


SCHEMA = {
    "columns": [
        {"name": "i", "kind": "int"},
        {"name": "text", "kind": "str"},
        {"name": "tok", "kind": "ndarray", "dtype": "int32", "shape": [3]},
    ]
}


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("ds")
    with ShardWriter(str(root), shard_size="512B", schema=SCHEMA) as w:
        for i in range(N):
            w.write({"i": i, "text": f"t{i}", "tok": np.arange(3, dtype=np.int32) + i})
    return str(root)


def _open(url: str, **kwargs: Any) -> StreamingDataset:
    return StreamingDataset(url, verify=True, **kwargs)


def _ids(batches: list[Any], key: str = "i") -> list[list[int]]:
    return [b[key].tolist() for b in batches]


# -- len and attributes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_size", "drop_last"),
    [(b, d) for b in (1, 3, 7, 40, 64) for d in (False, True)] + [(None, False)],
)
@pytest.mark.parametrize("kind", ["map", "iterable", "streaming"])
def test_len_is_dataloaders_len(
    url: str, kind: str, batch_size: int | None, drop_last: bool
) -> None:
    """len(loader) equals DataLoader's for every dataset kind, batch size and drop_last."""
    ds: Any = {"map": Squares, "iterable": Counter}.get(kind, lambda: _open(url))()
    kwargs = {"batch_size": batch_size, "drop_last": drop_last}
    loader = StreamLoader(ds, **kwargs)
    assert len(loader) == len(DataLoader(ds, **kwargs))
    assert len(loader) == len(list(loader))


def test_attributes_mirror_dataloader(url: str) -> None:
    """dataset, batch_size, drop_last, sampler and batch_sampler have DataLoader's types and values."""
    for ds, kwargs in [
        (Squares(), {"batch_size": 4, "shuffle": True}),
        (Counter(), {"batch_size": 4, "drop_last": True}),
        (_open(url), {"batch_size": 4}),
        (Squares(), {"batch_size": None}),
    ]:
        ours, theirs = StreamLoader(ds, **kwargs), DataLoader(ds, **kwargs)
        assert ours.dataset is ds
        assert (ours.batch_size, ours.drop_last) == (theirs.batch_size, theirs.drop_last)
        assert type(ours.sampler) is type(theirs.sampler)
        assert type(ours.batch_sampler) is type(theirs.batch_sampler)
        assert ours.collate_fn is theirs.collate_fn
        assert (ours.num_workers, ours.prefetch_factor, ours.timeout) == (0, None, 0)


def test_streaming_dataset_with_shuffle_gets_map_style_samplers(url: str) -> None:
    """shuffle=True over a StreamingDataset uses torch's RandomSampler inside a BatchSampler."""
    loader = StreamLoader(_open(url), batch_size=8, shuffle=True)
    assert isinstance(loader.sampler, RandomSampler)
    assert isinstance(loader.batch_sampler, BatchSampler)
    assert len(loader) == 5


@pytest.mark.parametrize(
    "attribute", ["batch_size", "batch_sampler", "sampler", "drop_last", "dataset"]
)
def test_sampling_attributes_cannot_change_after_construction(attribute: str) -> None:
    """Setting a sampling attribute later raises ValueError, as DataLoader does."""
    with pytest.raises(ValueError):
        setattr(DataLoader(Squares()), attribute, None)
    with pytest.raises(ValueError):
        setattr(StreamLoader(Squares()), attribute, None)


# -- validation -----------------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any]]] = [
    ("map", {"num_workers": -1}),
    ("map", {"timeout": -1}),
    ("map", {"prefetch_factor": 2}),
    ("map", {"num_workers": 1, "prefetch_factor": -1}),
    ("map", {"persistent_workers": True}),
    ("map", {"multiprocessing_context": "spawn"}),
    ("map", {"num_workers": 1, "multiprocessing_context": "no-such-method"}),
    ("map", {"num_workers": 1, "multiprocessing_context": 5}),
    ("map", {"batch_size": 0}),
    ("map", {"batch_size": -2}),
    ("map", {"batch_size": True}),
    ("map", {"batch_size": 2.0}),
    ("map", {"drop_last": "yes"}),
    ("map", {"batch_size": None, "drop_last": True}),
    ("map", {"shuffle": True, "sampler": SequentialSampler(range(N))}),
    ("map", {"batch_sampler": [[0, 1]], "batch_size": 2}),
    ("map", {"batch_sampler": [[0, 1]], "shuffle": True}),
    ("map", {"batch_sampler": [[0, 1]], "drop_last": True}),
    ("map", {"batch_sampler": [[0, 1]], "sampler": [0, 1]}),
    ("iterable", {"shuffle": True}),
    ("iterable", {"sampler": [0, 1]}),
    ("iterable", {"batch_sampler": [[0, 1]]}),
    ("streaming", {"shuffle": True, "sampler": [0, 1]}),
    ("streaming", {"batch_sampler": [[0, 1]], "batch_size": 3}),
]


@pytest.mark.parametrize(("kind", "kwargs"), INVALID)
def test_invalid_arguments_raise_dataloaders_exception_type(
    url: str, kind: str, kwargs: dict[str, Any]
) -> None:
    """Each invalid setting is refused at construction with DataLoader's exception type."""
    ds: Any = {"map": Squares, "iterable": Counter}.get(kind, lambda: _open(url))()
    with pytest.raises(Exception) as theirs:
        DataLoader(ds, **kwargs)
    with pytest.raises(theirs.type):
        StreamLoader(ds, **kwargs)


def test_own_validation_errors_are_config_errors_naming_the_setting() -> None:
    """Refusals StreamLoader makes itself are ConfigError (a ValueError) naming the setting."""
    with pytest.raises(ConfigError, match="num_workers"):
        StreamLoader(Squares(), num_workers=-1)
    with pytest.raises(ConfigError, match="shuffle"):
        StreamLoader(Counter(), shuffle=True)


def test_timeout_without_workers_is_refused_when_iterating() -> None:
    """timeout > 0 with num_workers=0 constructs (as DataLoader) but iter() refuses it."""
    loader = StreamLoader(Squares(), timeout=5)
    with pytest.raises(ConfigError, match="timeout"):
        iter(loader)


def test_pin_memory_without_accelerator_warns_like_dataloader() -> None:
    """pin_memory=True with no accelerator warns, then yields unpinned batches."""
    if torch.accelerator.is_available():
        pytest.skip("this machine has an accelerator")
    with pytest.warns(UserWarning, match="no accelerator"):
        expected = list(DataLoader(Squares(), batch_size=8, pin_memory=True))
    with pytest.warns(UserWarning, match="no accelerator"):
        actual = list(StreamLoader(Squares(), batch_size=8, pin_memory=True))
    assert [b["x"].tolist() for b in actual] == [b["x"].tolist() for b in expected]


def test_iterable_longer_than_its_len_warns_like_dataloader() -> None:
    """After len(loader), yielding more batches than the dataset claimed warns (once per extra)."""
    loader = StreamLoader(Counter(n=5, claimed=3), batch_size=None)
    assert len(loader) == 3
    with pytest.warns(UserWarning, match="Length of IterableDataset"):
        assert list(loader) == list(range(5))


# -- workers seam ---------------------------------------------------------------------------------


def test_num_workers_above_zero_iterates_like_num_workers_zero(url: str) -> None:
    """Worker settings validate at construction; a worker pass yields the single-process batches."""
    loader = StreamLoader(_open(url), batch_size=4, num_workers=1, multiprocessing_context="fork")
    assert loader.prefetch_factor == 2
    assert len(loader) == 10
    single = StreamLoader(_open(url), batch_size=4)
    assert _ids(list(loader)) == _ids(list(single))


def test_fetch_spec_and_plan_reproduce_the_single_process_pass(url: str) -> None:
    """The seam: a pickled FetchSpec's fetcher run over the plan gives what iter() gives."""
    generator = torch.Generator()
    loader = StreamLoader(_open(url), batch_size=6, shuffle=True, generator=generator)
    generator.manual_seed(5)
    direct = list(loader)
    generator.manual_seed(5)
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # the base seed iter() draws
    spec = pickle.loads(pickle.dumps(loader.fetch_spec()))
    assert spec.route is Route.COLUMNAR
    fetcher = spec.build(loader.dataset)
    by_hand = [fetcher.finish(fetcher.fetch(item)) for item in loader.batch_plan(spec.route)]
    assert _ids(by_hand) == _ids(direct)
    assert len(direct) == 7


# -- epochs, RNG timing ---------------------------------------------------------------------------


@pytest.mark.parametrize("generator", [False, True])
def test_two_epochs_shuffle_differently_and_exactly_like_dataloader(
    url: str, generator: bool
) -> None:
    """Consecutive epochs give different permutations, the same ones DataLoader gives."""

    def epochs(make: Any) -> list[list[list[int]]]:
        torch.manual_seed(3)
        gen = torch.Generator().manual_seed(9) if generator else None
        loader = make(gen)
        return [_ids(list(loader)) for _ in range(2)]

    ds = _open(url)
    ours = epochs(lambda g: StreamLoader(ds, batch_size=8, shuffle=True, generator=g))
    theirs = epochs(lambda g: DataLoader(_MapView(ds), batch_size=8, shuffle=True, generator=g))
    assert ours == theirs
    assert ours[0] != ours[1]
    assert sorted(i for batch in ours[0] for i in batch) == list(range(N))


class _MapView(Dataset[Any]):
    def __init__(self, ds: StreamingDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


@pytest.mark.parametrize("kind", ["map", "streaming", "streaming_shuffled"])
def test_base_seed_is_drawn_at_iter_not_at_first_batch(url: str, kind: str) -> None:
    """iter(loader) alone moves the global RNG exactly as iter(DataLoader) does."""
    ds: Any = Squares() if kind == "map" else _open(url)
    shuffle = kind != "streaming"
    torch.manual_seed(0)
    iter(DataLoader(_MapView(ds) if kind == "streaming_shuffled" else ds, shuffle=shuffle))
    after_theirs = torch.get_rng_state()
    torch.manual_seed(0)
    iter(StreamLoader(ds, shuffle=shuffle))
    assert torch.equal(torch.get_rng_state(), after_theirs)
    assert not torch.equal(after_theirs, torch.manual_seed(0).get_state())


# -- routes ---------------------------------------------------------------------------------------


def test_columnar_path_builds_no_per_sample_dicts(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unshuffled, shuffled and sampled passes never call __getitem__ or __iter__."""
    ds = _open(url)
    expected = _ids(list(DataLoader(ds, batch_size=6)))

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the columnar path touched a per-sample API")

    monkeypatch.setattr(StreamingDataset, "__getitem__", refuse)
    monkeypatch.setattr(StreamingDataset, "__iter__", refuse)
    assert _ids(list(StreamLoader(ds, batch_size=6))) == expected
    shuffled = _ids(list(StreamLoader(ds, batch_size=6, shuffle=True)))
    assert sorted(i for batch in shuffled for i in batch) == list(range(N))
    sampled = _ids(list(StreamLoader(ds, batch_size=4, sampler=[3, -1, 0, 7, 7])))
    assert sampled == [[3, N - 1, 0, 7], [7]]
    batched = _ids(list(StreamLoader(ds, batch_sampler=[[5, 2], [9]])))
    assert batched == [[5, 2], [9]]


def test_transform_or_custom_collate_goes_through_samples(url: str) -> None:
    """A transform or a custom collate_fn sees per-sample dicts, as in DataLoader."""
    seen: list[Any] = []

    def collate(samples: list[dict[str, Any]]) -> int:
        seen.extend(samples)
        return len(samples)

    assert list(StreamLoader(_open(url), batch_size=16, collate_fn=collate)) == [16, 16, 8]
    assert [s["i"] for s in seen] == list(range(N))
    ds = _open(url, transform=lambda s: s["i"] * 10)
    assert [b.tolist() for b in StreamLoader(ds, batch_size=20)] == [
        list(range(0, 200, 10)),
        list(range(200, 400, 10)),
    ]


def test_map_dataset_getitems_is_used_like_dataloader() -> None:
    """A dataset with __getitems__ is fetched a batch at a time, as DataLoader does."""

    class Batched(Squares):
        calls = 0

        def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
            type(self).calls += 1
            return [self[i] for i in indices]

    assert len(list(StreamLoader(Batched(), batch_size=10))) == 4
    assert Batched.calls == 4


def test_empty_batch_from_a_batch_sampler_fails_like_dataloader(url: str) -> None:
    """An empty index list is refused with DataLoader's exception type on every route."""
    for ds, reference in [(Squares(), Squares()), (_open(url), _MapView(_open(url)))]:
        with pytest.raises(Exception) as theirs:
            list(DataLoader(reference, batch_sampler=[[1], []]))
        with pytest.raises(theirs.type):
            list(StreamLoader(ds, batch_sampler=[[1], []]))


def test_out_of_range_sampler_index_raises_index_error(url: str) -> None:
    """A sampler index past the end raises IndexError on the columnar route too."""
    with pytest.raises(IndexError):
        list(StreamLoader(_open(url), batch_size=2, sampler=[0, N]))


def test_iteration_does_not_copy_numeric_columns_twice(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tensors of a columnar batch share memory with get_batch's arrays (zero extra copy)."""
    ds = _open(url)
    arrays: list[np.ndarray] = []
    original = StreamingDataset.get_batch

    def spy(self: StreamingDataset, ids: np.ndarray, strings: str = "list") -> dict[str, Any]:
        out = original(self, ids, strings)
        arrays.append(out["tok"])
        return out

    monkeypatch.setattr(StreamingDataset, "get_batch", spy)
    batch = next(iter(StreamLoader(ds, batch_size=5)))
    assert batch["tok"].data_ptr() == arrays[0].ctypes.data
