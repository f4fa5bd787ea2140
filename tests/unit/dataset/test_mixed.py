"""MixedDataset (streamload.dataset.mixed): construction checks, epochs, states, weights, access."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streamload as sl
from streamload.dataset.streaming import ShardTable, take_sources
from streamload.format.blobs import BlobColumn


def _write(root: Path, name: str, n: int, offset: int) -> str:
    with sl.ShardWriter(str(root / name), shard_size="1KiB") as w:
        for i in range(n):
            w.write({"id": offset + i, "tok": np.full(2, i, dtype=np.int32)})
    return str(root / name)


@pytest.fixture(scope="module")
def urls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("mixed")
    return {"a": _write(root, "a", 30, 0), "b": _write(root, "b", 11, 1000)}


def _mix(urls: dict[str, str], **kwargs: Any) -> sl.MixedDataset:
    kwargs.setdefault("weights", {"a": 2, "b": 1})
    return sl.MixedDataset({n: sl.StreamingDataset(u) for n, u in urls.items()}, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"weights": {"a": 1}}, sl.ConfigError, r"no weight for \['b'\]"),
        ({"weights": {"a": 1, "b": 1, "c": 1}}, sl.ConfigError, r"no source named \['c'\]"),
        ({"weights": {"a": 1, "b": 0}}, sl.ConfigError, "weight 1 must be"),
        ({"samples": 0}, sl.ConfigError, "samples"),
        ({"seed": -1}, sl.ConfigError, "seed"),
        ({"source_column": "id"}, sl.ConfigError, "source_column"),
        ({"rank": 2, "world_size": 2}, sl.ConfigError, "rank"),
        ({"shuffle_block": 0}, sl.ConfigError, "shuffle_block"),
        ({"shuffle_block": "8"}, sl.ConfigError, "shuffle_block"),
        ({"shuffle_block": {"a": 2}}, sl.ConfigError, r"missing \['b'\]"),
        ({"shuffle_block": {"a": 2, "b": 0}}, sl.ConfigError, r"bad \{'b': 0\}"),
    ],
)
def test_bad_arguments_name_what_is_wrong(
    urls: dict[str, str], kwargs: dict[str, Any], error: type, message: str
) -> None:
    """Unknown or missing weights, bad samples, seed, source_column, rank or shuffle_block:
    ConfigError."""
    with pytest.raises(error, match=message):
        _mix(urls, **kwargs)


def test_sources_must_be_named_streaming_datasets(urls: dict[str, str]) -> None:
    """No sources, a non-str name or a source of another type are refused."""
    with pytest.raises(sl.ConfigError, match="non-empty"):
        sl.MixedDataset({})
    with pytest.raises(sl.ConfigError, match="names"):
        sl.MixedDataset({"": sl.StreamingDataset(urls["a"])})
    with pytest.raises(TypeError, match="'x'"):
        sl.MixedDataset({"x": [1, 2, 3]})  # type: ignore[dict-item]


def test_length_weights_and_schema(urls: dict[str, str]) -> None:
    """len is samples (default: the sources' total); weights read back normalised and exact;
    the schema is the common one plus source_column."""
    mix = _mix(urls, source_column="src")
    assert len(mix) == 41 and len(_mix(urls, samples=7)) == 7
    assert mix.weights == {"a": 2 / 3, "b": 1 / 3}
    assert mix.schema.names == ("id", "tok", "src")
    assert "a=0.6667" in repr(mix)


def test_the_start_of_an_epoch_continues_the_cursors_of_the_epoch_before(
    urls: dict[str, str],
) -> None:
    """A fresh mixture set to epoch 3 starts every source where three whole epochs of the same
    steps leave it (walked without data), as a loader reading those epochs does."""
    mix = _mix(urls, samples=25)
    loader = sl.StreamLoader(mix, batch_size=4)
    for epoch in range(3):
        mix.set_epoch(epoch)
        assert sum(len(b["id"]) for b in loader) == 25
    walked = loader.state_dict()
    fresh = _mix(urls, samples=25)
    assert fresh.epoch_start(3, 4, False, 1) == tuple(walked["cursors"].values())
    assert sum(fresh.epoch_start(3, 4, False, 1)) == 75


def test_a_state_round_trips_and_is_small(urls: dict[str, str]) -> None:
    """state_dict -> JSON -> load_state_dict -> state_dict is the same dict, a few hundred
    bytes however long the run; set_weights adds a segment at the resume point."""
    mix = _mix(urls, samples=25)
    loader = sl.StreamLoader(mix, batch_size=4)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = json.loads(json.dumps(loader.state_dict()))
    other = _mix(urls, samples=25)
    other.load_state_dict(state)
    assert other.state_dict() == state
    assert len(json.dumps(state)) < 1500
    other.set_weights({"a": 1, "b": 3})
    segments = other.state_dict()["segments"]
    assert len(segments) == 2 and segments[1]["position"] == 8
    assert segments[1]["weights"] == {"a": 1, "b": 3}
    assert segments[1]["cursors"] == state["cursors"]


def test_shuffle_windows_are_apportioned_once_and_recorded_in_the_state(
    urls: dict[str, str],
) -> None:
    """Block-mode sources share a budget of shards (default: the largest source shuffle_block)
    split by the weights given at construction; an int sets the budget, a mapping each window;
    a source not shuffled in blocks has no window; set_weights changes no window; the state
    records them."""
    assert _mix(urls).windows == {"a": 11, "b": 5}  # 16 shards at 2:1
    assert _mix(urls, shuffle_block=6).windows == {"a": 4, "b": 2}
    assert _mix(urls, shuffle_block={"a": 3, "b": 7}).windows == {"a": 3, "b": 7}
    full = sl.MixedDataset(
        {
            "a": sl.StreamingDataset(urls["a"], shuffle_mode="full"),
            "b": sl.StreamingDataset(urls["b"]),
        },
        weights={"a": 2, "b": 1},
    )
    assert full.windows == {"a": None, "b": 16}
    assert _mix(urls, shuffle=False).windows == {"a": None, "b": None}
    mix = _mix(urls, samples=25)
    mix.set_weights({"a": 1, "b": 5})
    assert mix.windows == {"a": 11, "b": 5}
    state = json.loads(json.dumps(mix.state_dict()))
    assert state["version"] == 2 and state["windows"] == {"a": 11, "b": 5}


def test_a_loaded_state_brings_its_windows_and_an_explicit_other_window_is_refused(
    urls: dict[str, str],
) -> None:
    """A state's windows replace the ones a mixture of other weights would choose (and reach
    the workers through the plan's start); a mapping shuffle_block that contradicts them is a
    StateError naming the source; a version-1 state (before windows) loads with each source's
    own shuffle_block, as version 1 shuffled; a version-2 state without a window for a
    block-mode source is refused."""
    state = _mix(urls, samples=25).state_dict()
    other = _mix(urls, samples=25, weights={"a": 1, "b": 9})
    assert other.windows == {"a": 2, "b": 14}
    other.load_state_dict(state)
    assert other.windows == {"a": 11, "b": 5}
    assert other.plan_start(other.epoch_plan(4))["windows"] == [11, 5]
    worker_copy = _mix(urls, samples=25, weights={"a": 1, "b": 9})
    worker_copy.epoch_plan(4, start=other.plan_start(other.epoch_plan(4)))
    assert worker_copy.windows == {"a": 11, "b": 5}
    with pytest.raises(sl.StateError, match=r"'a': state 11, now 3"):
        _mix(urls, samples=25, shuffle_block={"a": 3, "b": 5}).load_state_dict(state)
    old = dict(state, version=1)
    del old["windows"]
    legacy = _mix(urls, samples=25)
    legacy.load_state_dict(old)
    assert legacy.windows == {"a": 16, "b": 16}
    assert legacy.state_dict()["windows"] == {"a": 16, "b": 16}
    with pytest.raises(sl.StateError, match="no shuffle window for"):
        _mix(urls, samples=25).load_state_dict(dict(state, windows={"a": None, "b": 5}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(kind="plain"), "not a mixture state"),
        (lambda s: s.update(version=9), "version 9"),
        (lambda s: s.update(version=True), "version True"),
        (lambda s: s.pop("segments"), "keys"),
        (lambda s: s.pop("windows"), "keys"),
        (lambda s: s.update(version=1), "keys"),  # version 1 had no windows
        (lambda s: s["windows"].update(a=0), "windows must be ints >= 1"),
        (lambda s: s["cursors"].update(b=-1), "cursors must be ints"),
        (lambda s: s.update(position=999), "past the end"),
        (lambda s: s["segments"][0]["weights"].update(a=0), "must be positive"),
        (lambda s: s["fingerprint"].update(samples=3), "samples: state has 3"),
    ],
)
def test_malformed_states_are_state_errors(urls: dict[str, str], change: Any, message: str) -> None:
    """Another kind or version, missing keys, bad cursors, positions or weights: StateError."""
    state = _mix(urls, samples=25).state_dict()
    change(state)
    with pytest.raises(sl.StateError, match=message):
        _mix(urls, samples=25).load_state_dict(state)


def test_get_batch_merges_sources_in_batch_order_with_source_names(urls: dict[str, str]) -> None:
    """A mixed batch's rows come back in its order (ids name their source), with the source
    column as a list, or as one BlobColumn for a worker's ring."""
    mix = _mix(urls, samples=20, source_column="src", shuffle=False)
    batch = mix.epoch_plan(12).batch(0, 0)
    columns = mix.get_batch(batch)
    names = ["a" if i < 1000 else "b" for i in columns["id"].tolist()]
    assert columns["src"] == names == [mix.names[s] for s in batch.source.tolist()]
    blob = mix.get_batch(batch, strings="blob")["src"]
    assert isinstance(blob, BlobColumn) and bytes(blob.data) == "".join(names).encode()
    samples = mix.get_samples(batch)
    assert [s["src"] for s in samples] == names


def test_a_mixture_is_freed_as_soon_as_it_is_dropped_after_a_pass(urls: dict[str, str]) -> None:
    """With the cyclic garbage collector off, a mixture read by a loader (its sources follow
    the mixed plan) and its sources are freed when the last reference goes."""
    gc.disable()
    try:
        mix = _mix(urls, samples=25)
        assert sum(len(b["id"]) for b in sl.StreamLoader(mix, batch_size=4)) == 25
        assert len(list(mix)) == 25
        refs = [weakref.ref(mix), *(weakref.ref(s) for s in mix.sources.values())]
        del mix
        assert all(r() is None for r in refs)
    finally:
        gc.enable()


@pytest.fixture(scope="module")
def token_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("mixed-tokens")
    with sl.ShardWriter(str(root / "t"), shard_size="256B") as w:
        for i in range(40):
            w.write({"tokens": np.arange(i * 3, i * 3 + 3, dtype=np.int32)})
    return str(root / "t")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_take_sources_gives_each_position_the_row_its_own_dataset_gives(
    urls: dict[str, str], token_url: str, data: st.DataObject
) -> None:
    """`take_sources` (every source's shards numbered as one, one sort per batch) puts at each
    position exactly the row that position's own dataset returns for its id: sources with many
    shards, a subset, two views of one dataset, a token stream; any ids, repeats allowed."""
    datasets = [
        sl.StreamingDataset(urls["a"]),
        sl.StreamingDataset(urls["b"], subset=[(2, 9)]),
        sl.StreamingDataset(urls["a"], subset=7, seed=1),
        sl.StreamingDataset(token_url, tokens="tokens", block_size=4),
    ]
    table = ShardTable(datasets)
    drawn = [
        data.draw(st.lists(st.integers(0, len(ds) - 1), max_size=12), label=f"ids of {s}")
        for s, ds in enumerate(datasets)
    ]
    n = sum(len(ids) for ids in drawn)
    spots = data.draw(st.permutations(range(n)), label="positions")
    parts, at = [], 0
    for s, ids in enumerate(drawn):
        if ids:  # a batch's parts: the sources present, positions ascending
            where = np.sort(np.array(spots[at : at + len(ids)], np.int64))
            parts.append((s, where, np.array(ids, np.int64)))
        at += len(ids)
    expected: dict[int, dict[str, Any]] = {}
    for s, where, ids in parts:
        rows = datasets[s].get_batch(ids)
        for j, position in enumerate(where.tolist()):
            expected[position] = {k: np.asarray(v)[j] for k, v in rows.items()}
    got: dict[int, dict[str, Any]] = {}
    for positions, columns in take_sources(table, parts):
        for j, position in enumerate(np.arange(n)[positions].tolist()):
            assert position not in got
            got[position] = {k: np.asarray(v)[j] for k, v in columns.items()}
    assert got.keys() == expected.keys()
    for position, row in expected.items():
        assert got[position].keys() == row.keys()
        assert all(np.array_equal(got[position][k], v) for k, v in row.items())
