"""StreamingDataset: random access, order, projection, workers, and write->read round trips."""

from __future__ import annotations

import gc
import math
import os
import pickle
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.utils.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamload import ShardWriter, StreamingDataset
from streamload.dataset.inspect import describe, verify_dataset
from streamload.errors import ConfigError, FormatError, StateError
from streamload.plan.order import ShuffleSettings, global_order


def _sample(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "text": f"t{i}" * (i % 4),
        "tokens": np.arange(4, dtype=np.int32) + i,
        "var": np.full((i % 3, 2), i, np.float32),
    }


VAR_SCHEMA = {
    "columns": [
        {"name": "id", "kind": "int"},
        {"name": "text", "kind": "str"},
        {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [4]},
        {"name": "var", "kind": "ndarray", "dtype": "float32", "shape": [None, 2]},
    ]
}


@pytest.fixture(scope="module")
def dataset_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("ds")
    with ShardWriter(str(root), shard_size="2KiB", schema=VAR_SCHEMA) as w:
        for i in range(400):
            w.write(_sample(i))
    return str(root)


def _same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to NaN and compares arrays by dtype, shape and bits."""
    if isinstance(a, np.ndarray | np.generic) or isinstance(b, np.ndarray | np.generic):
        a_arr, b_arr = np.asarray(a), np.asarray(b)
        return (
            a_arr.dtype == b_arr.dtype
            and a_arr.shape == b_arr.shape
            and np.array_equal(a_arr, b_arr, equal_nan=a_arr.dtype.kind == "f")
        )
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return type(a) is type(b) and a == b


def test_random_access_supports_negative_indices_and_bounds(dataset_url: str) -> None:
    """ds[i], ds[-1] work; ds[len] and ds[-len-1] raise IndexError."""
    ds = StreamingDataset(dataset_url, verify=True)
    assert len(ds) == 400 and ds.num_shards > 5
    assert ds[0]["id"] == 0 and ds[-1]["id"] == 399 and ds[-400]["id"] == 0
    for bad in (400, -401, 10**12):
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(TypeError):
        ds[1.5]  # type: ignore[index]
    assert list(ds[5]) == ["id", "text", "tokens", "var"]


def test_iteration_yields_index_order_and_equals_random_access(dataset_url: str) -> None:
    """Without shuffle, iteration is ds[0], ds[1], ... exactly."""
    ds = StreamingDataset(dataset_url, verify=True)
    samples = list(ds)
    assert len(samples) == 400
    for i, sample in enumerate(samples):
        want = ds[i]
        assert list(sample) == list(want)
        assert all(_same(sample[k], want[k]) for k in want)


def test_shuffle_is_a_deterministic_permutation_that_changes_with_epoch(dataset_url: str) -> None:
    """The shuffled order is a permutation, a pure function of (seed, epoch)."""
    ds = StreamingDataset(dataset_url, shuffle=True, seed=7, verify=True)
    order0 = ds.sample_order()
    assert sorted(order0.tolist()) == list(range(400)) and order0.dtype == np.int64
    assert [s["id"] for s in ds] == order0.tolist()
    again = StreamingDataset(dataset_url, shuffle=True, seed=7, verify=True)
    assert np.array_equal(again.sample_order(), order0)
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert not np.array_equal(ds.sample_order(), order0)
    assert np.array_equal(ds.sample_order(0), order0)
    assert [s["id"] for s in ds] == ds.sample_order(1).tolist()
    other_seed = StreamingDataset(dataset_url, shuffle=True, seed=8, verify=True)
    assert not np.array_equal(other_seed.sample_order(), order0)
    assert np.array_equal(
        StreamingDataset(dataset_url, verify=True).sample_order(5), np.arange(400)
    )


@pytest.mark.parametrize(("n", "seed", "epoch"), [(0, 0, 0), (1, 3, 2), (1000, 2**40, 7)])
def test_epoch_order_is_pure(n: int, seed: int, epoch: int) -> None:
    """epoch_order depends only on its arguments."""
    a = global_order([n], ShuffleSettings(True, seed), epoch)
    b = global_order([n], ShuffleSettings(True, seed), epoch)
    assert np.array_equal(a, b) and sorted(a.tolist()) == list(range(n))


def test_bad_seed_and_epoch_are_config_errors(dataset_url: str) -> None:
    """Negative or non-int seeds and epochs are refused with the setting named."""
    with pytest.raises(ConfigError, match="seed"):
        StreamingDataset(dataset_url, seed=-1, verify=True)
    ds = StreamingDataset(dataset_url, verify=True)
    with pytest.raises(ConfigError, match="epoch"):
        ds.set_epoch(-1)


def test_get_batch_preserves_id_order_across_shards_with_duplicates(dataset_url: str) -> None:
    """get_batch returns rows in the order of ids, across shards, duplicates included."""
    ds = StreamingDataset(dataset_url, verify=True)
    ids = np.array([399, 0, 200, 200, 5, 398, 1, 0])
    batch = ds.get_batch(ids)
    assert batch["id"].tolist() == ids.tolist()
    assert batch["tokens"].shape == (8, 4) and batch["tokens"].dtype == np.int32
    assert batch["text"] == [_sample(i)["text"] for i in ids]
    assert [v.shape for v in batch["var"]] == [(i % 3, 2) for i in ids]
    with pytest.raises(IndexError):
        ds.get_batch(np.array([0, 400]))
    with pytest.raises(IndexError):
        ds.get_batch(np.array([-1]))


def test_columns_select_and_transform_applies_to_samples_not_batches(dataset_url: str) -> None:
    """columns= projects (schema order), transform runs on ds[i] and iteration only."""
    ds = StreamingDataset(
        dataset_url, columns=["tokens", "id"], transform=lambda s: s["id"] * 2, verify=True
    )
    assert ds.schema.names == ("id", "tokens")
    assert ds[21] == 42
    assert list(ds)[:3] == [0, 2, 4]
    assert list(ds.get_batch(np.array([3]))) == ["id", "tokens"]
    with pytest.raises(FormatError, match=r"unknown column\(s\) \['nope'\]"):
        StreamingDataset(dataset_url, columns=["nope"], verify=True)


def test_dataloader_workers_yield_each_sample_once_in_single_process_order(
    dataset_url: str,
) -> None:
    """With 2 workers and batch_size=1 the DataLoader yields exactly the num_workers=0 order."""
    ds = StreamingDataset(dataset_url, shuffle=True, seed=3, columns=["id"], verify=True)
    ds.set_epoch(2)
    ds[0]  # open a reader in the parent: workers must not reuse its mmap
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, timeout=60)
    got = [int(b["id"][0]) for b in loader]
    assert got == ds.sample_order().tolist()
    batched = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, timeout=60)
    ids = [i for b in batched for i in b["id"].tolist()]
    assert sorted(ids) == list(range(400))


def test_forked_child_reopens_its_own_readers(dataset_url: str) -> None:
    """After fork the child drops the parent's readers and reads correctly."""
    ds = StreamingDataset(dataset_url, verify=True)
    assert ds[10]["id"] == 10
    parent_reader = ds._shards._readers[next(iter(ds._shards._readers))]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        ok = ds[10]["id"] == 10 and all(
            r is not parent_reader for r in ds._shards._readers.values()
        )
        os.write(write_fd, b"1" if ok else b"0")
        os._exit(0)
    os.close(write_fd)
    result = os.read(read_fd, 1)
    os.close(read_fd)
    os.waitpid(pid, 0)
    assert result == b"1"


def test_pickled_dataset_drops_open_readers(dataset_url: str) -> None:
    """A dataset pickles (spawned workers) without its mmaps and reads after unpickling."""
    ds = StreamingDataset(dataset_url, verify=True)
    ds[3]
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone._shards._readers) == 0 and clone[3]["id"] == 3


def test_verify_and_describe_report_every_shard(tmp_path: Path, dataset_url: str) -> None:
    """verify_dataset flags a flipped byte and a missing shard; describe summarises the index."""
    copy = tmp_path / "copy"
    shutil.copytree(dataset_url, copy)
    checks = verify_dataset(str(copy))
    assert all(c.ok for c in checks) and len(checks) == describe(str(copy))["num_shards"]
    target = copy / checks[1].shard
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    (copy / checks[2].shard).unlink()
    seen: list[Any] = []
    checks = verify_dataset(str(copy), on_shard=seen.append)
    assert seen == checks
    assert [c.ok for c in checks[:3]] == [True, False, False]
    assert checks[1].actual not in (None, checks[1].expected) and checks[2].actual is None
    info = describe(dataset_url)
    assert info["num_samples"] == 400 and info["format"] == "arrow" and info["schema"] == VAR_SCHEMA
    assert info["bytes"] == sum(os.path.getsize(os.path.join(dataset_url, c.shard)) for c in checks)


def test_verify_default_comes_from_config(
    dataset_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """verify=None takes config verify_local."""
    monkeypatch.delenv("STREAMLOAD_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STREAMLOAD_VERIFY_LOCAL", "false")
    assert StreamingDataset(dataset_url).verify is False
    monkeypatch.setenv("STREAMLOAD_VERIFY_LOCAL", "true")
    assert StreamingDataset(dataset_url).verify is True


# -- property test: every kind round-trips through ds[i] and get_batch --------------------------

_DTYPES = ["bool", "int8", "uint16", "int32", "int64", "uint64", "float16", "float32", "float64"]


@st.composite
def _column_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    kinds = draw(
        st.lists(
            st.sampled_from(["int", "float", "bool", "str", "bytes", "ndarray"]),
            min_size=1,
            max_size=5,
        )
    )
    columns = []
    for k, kind in enumerate(kinds):
        col: dict[str, Any] = {"name": f"c{k}", "kind": kind}
        if kind == "ndarray":
            col["dtype"] = draw(st.sampled_from(_DTYPES))
            col["shape"] = draw(st.lists(st.one_of(st.none(), st.integers(0, 3)), max_size=3))
        columns.append(col)
    return columns


def _value(draw: st.DrawFn, col: dict[str, Any]) -> Any:
    kind = col["kind"]
    if kind == "int":
        return draw(st.integers(-(2**63), 2**63 - 1))
    if kind == "float":
        return draw(st.floats(allow_nan=True, allow_infinity=True))
    if kind == "bool":
        return draw(st.booleans())
    if kind == "str":
        return draw(st.text(max_size=20))
    if kind == "bytes":
        return draw(st.binary(max_size=20))
    shape = tuple(draw(st.integers(0, 3)) if d is None else d for d in col["shape"])
    dtype = np.dtype(col["dtype"])
    raw = draw(
        st.binary(
            min_size=dtype.itemsize * math.prod(shape), max_size=dtype.itemsize * math.prod(shape)
        )
    )
    array = np.frombuffer(raw, dtype=np.uint8).copy().view(dtype).reshape(shape)
    if dtype == np.bool_:
        array = array.view(np.uint8).astype(bool)  # only 0/1 bytes are valid bools
    return array[()] if not shape else array  # shape [] -> numpy scalar


@st.composite
def _datasets(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    columns = draw(_column_specs())
    n = draw(st.integers(0, 40))
    samples = [{c["name"]: _value(draw, c) for c in columns} for _ in range(n)]
    return columns, samples


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=_datasets(),
    ids=st.lists(st.integers(0, 10**6), max_size=30),
    compression=st.sampled_from([None, "zstd"]),
)
def test_every_kind_round_trips_through_getitem_and_get_batch(
    data: tuple[list[dict[str, Any]], list[dict[str, Any]]], ids: list[int], compression: str | None
) -> None:
    """Random samples of every kind read back identically (NaN-aware) by ds[i] and get_batch."""
    columns, samples = data
    root = tempfile.mkdtemp(prefix="sl-prop-")
    url = root if len(samples) % 2 else f"memory://prop-{uuid.uuid4().hex}"
    try:
        with ShardWriter(
            url, shard_size=300, compression=compression, schema={"columns": columns}
        ) as w:
            for sample in samples:
                w.write(sample)
        ds = StreamingDataset(url, verify=True)
        assert len(ds) == len(samples)
        for i, want in enumerate(samples):
            got = ds[i]
            assert list(got) == [c["name"] for c in columns]
            for key, value in want.items():
                expected = (
                    value.item()
                    if isinstance(value, np.generic) and _kind(columns, key) != "ndarray"
                    else value
                )
                assert _same(got[key], expected), (i, key, got[key], expected)
        if samples:
            picked = np.array([i % len(samples) for i in ids], np.int64)
            batch = ds.get_batch(picked)
            for col in columns:
                values = batch[col["name"]]
                assert len(values) == len(picked)
                for k, i in enumerate(picked.tolist()):
                    want = samples[i][col["name"]]
                    got = values[k]
                    if col["kind"] in ("int", "float", "bool"):
                        got = got.item()
                    assert _same(got, want), (col, i, got, want)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _kind(columns: list[dict[str, Any]], name: str) -> str:
    return next(c["kind"] for c in columns if c["name"] == name)


# -- subsets ----------------------------------------------------------------------------------------


def test_a_subset_is_a_smaller_dataset_of_real_rows(dataset_url: str) -> None:
    """subset=N: len is N; ds[i], get_batch and iteration number the subset's rows (real rows
    of the dataset, distinct), the same for a seed; another seed picks others; ranges take
    exactly those ids."""
    full = StreamingDataset(dataset_url)
    ds = StreamingDataset(dataset_url, subset=50, seed=3, shuffle=True)
    assert len(ds) == 50
    ids = [ds[i]["id"] for i in range(50)]
    assert len(set(ids)) == 50 and all(full[i]["id"] == i for i in ids[:3])
    assert ds.get_batch(np.arange(50))["id"].tolist() == ids
    assert sorted(s["id"] for s in ds) == sorted(ids)
    again = StreamingDataset(dataset_url, subset=50, seed=3)
    assert [again[i]["id"] for i in range(50)] == ids
    assert {StreamingDataset(dataset_url, subset=50, seed=4)[i]["id"] for i in range(50)} != set(
        ids
    )
    ranges = StreamingDataset(dataset_url, subset=[(390, 400), (0, 5)])
    assert [s["id"] for s in ranges] == [0, 1, 2, 3, 4, *range(390, 400)]
    assert len(StreamingDataset(dataset_url, subset=0.25)) == 100


def test_a_subset_is_part_of_the_resume_fingerprint(dataset_url: str) -> None:
    """A state of the whole dataset does not load into a subset of it, nor one subset's into
    another's (StateError naming subset)."""
    whole = StreamingDataset(dataset_url).state_dict()
    with pytest.raises(StateError, match="subset"):
        StreamingDataset(dataset_url, subset=10).load_state_dict(whole)
    ten = StreamingDataset(dataset_url, subset=10).state_dict()
    with pytest.raises(StateError, match="subset"):
        StreamingDataset(dataset_url, subset=11).load_state_dict(ten)


def test_a_bad_subset_is_a_config_error(dataset_url: str) -> None:
    """subset past the dataset's size or of another type: ConfigError naming subset."""
    with pytest.raises(ConfigError, match="subset"):
        StreamingDataset(dataset_url, subset=401)
    with pytest.raises(ConfigError, match="subset"):
        StreamingDataset(dataset_url, subset="all")  # type: ignore[arg-type]


def test_states_of_the_order_before_issue_12_are_refused(dataset_url: str) -> None:
    """A state whose fingerprint has no order version (numpy permutations) is a StateError
    naming the order, not a silent change of sequence."""
    state = StreamingDataset(dataset_url, shuffle=True).state_dict()
    del state["fingerprint"]["order"]
    with pytest.raises(StateError, match="order"):
        StreamingDataset(dataset_url, shuffle=True).load_state_dict(state)


def test_a_dataset_is_freed_as_soon_as_it_is_dropped_after_passes(dataset_url: str) -> None:
    """With the cyclic garbage collector off, a dataset that was iterated and read by a loader
    (both register their read plan) is freed when its last reference goes: no cycle keeps its
    shards (an LMDB environment can be open only once per process) alive."""
    from streamload import StreamLoader

    gc.disable()
    try:
        ds = StreamingDataset(dataset_url, shuffle=True, columns=["id", "tokens"])
        assert sum(len(b["id"]) for b in StreamLoader(ds, batch_size=64)) == 400
        assert len(list(ds)) == 400
        ref = weakref.ref(ds)
        del ds
        assert ref() is None
    finally:
        gc.enable()
