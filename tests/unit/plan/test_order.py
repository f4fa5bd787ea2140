"""The global order of an epoch (`streamload.plan.order`): a seeded permutation evaluated lazily
at any positions, block windows, shuffle quality, memory that never scales with the item count."""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.plan import order as lazy_order
from streamload.plan.order import EpochOrder, ShuffleSettings, global_order

shard_sizes = st.lists(st.integers(0, 30), min_size=0, max_size=12)
shuffles = st.builds(
    ShuffleSettings,
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    mode=st.sampled_from(["full", "block"]),
    block=st.integers(1, 5),
)


@given(shard_sizes, shuffles, st.integers(0, 5))
def test_an_epoch_order_is_a_permutation_of_all_ids(
    sizes: list[int], shuffle: ShuffleSettings, epoch: int
) -> None:
    """ids(0, N) holds every id of [0, N) exactly once; without shuffle it is arange(N)."""
    order = EpochOrder(sizes, shuffle, epoch)
    ids = order.ids(0, len(order))
    assert len(order) == sum(sizes) and ids.dtype == np.int64
    assert sorted(ids.tolist()) == list(range(sum(sizes)))
    if not shuffle.shuffle:
        assert ids.tolist() == list(range(sum(sizes)))


@given(shard_sizes, shuffles, st.integers(0, 3), st.integers(1, 9), st.data())
def test_any_positions_evaluate_to_the_same_ids_as_the_whole_order(
    sizes: list[int], shuffle: ShuffleSettings, epoch: int, chunk: int, data: st.DataObject
) -> None:
    """at(positions), slices and fresh instances agree with the whole order, whatever chunk
    the cache uses and whether a query spans one chunk, two, or many (evaluated uncached)."""
    whole = EpochOrder(sizes, shuffle, epoch).ids(0, sum(sizes))
    if not len(whole):
        return
    positions = np.array(
        data.draw(st.lists(st.integers(0, len(whole) - 1), max_size=25)), dtype=np.int64
    )
    start = data.draw(st.integers(0, len(whole)))
    saved = lazy_order.CHUNK
    lazy_order.CHUNK = chunk
    try:
        order = EpochOrder(sizes, shuffle, epoch)
        assert order.at(positions).tolist() == whole[positions].tolist()
        assert (
            order[start : start + 2 * chunk].tolist() == whole[start : start + 2 * chunk].tolist()
        )
        assert order[start:].tolist() == whole[start:].tolist()
    finally:
        lazy_order.CHUNK = saved


@given(shard_sizes, st.integers(0, 2**32), st.integers(1, 5), st.integers(0, 3))
def test_block_order_keeps_at_most_block_shards_live(
    sizes: list[int], seed: int, block: int, epoch: int
) -> None:
    """In block mode, at any point of the order at most `block` shards have been started and not
    yet finished: read-ahead and cache need only one window of shards."""
    order = EpochOrder(sizes, ShuffleSettings(True, seed, "block", block), epoch)
    live = live_shards(sizes, order.ids(0, len(order)))
    assert max(live, default=0) <= block


def live_shards(sizes: list[int], order: np.ndarray) -> list[int]:
    """For each position, how many shards have ids both at or before it and at or after it."""
    shard_of = np.searchsorted(np.cumsum([0, *sizes]), order, "right") - 1
    delta = np.zeros(len(order) + 1, dtype=np.int64)
    for shard in np.unique(shard_of):
        where = np.flatnonzero(shard_of == shard)
        delta[where[0]] += 1
        delta[where[-1] + 1] -= 1
    return np.cumsum(delta)[:-1].tolist()


def test_full_order_keeps_many_shards_live() -> None:
    """The full permutation touches nearly every shard at once (what block mode avoids)."""
    sizes = [100] * 20
    order = EpochOrder(sizes, ShuffleSettings(True, 0, "full"), 0)
    assert max(live_shards(sizes, order.ids(0, 2000))) >= 18


def test_shuffled_orders_change_with_epoch_and_seed() -> None:
    """Shuffled orders differ across epochs and seeds, in both modes."""
    sizes = [50] * 20

    def ids(seed: int, mode: str, epoch: int) -> np.ndarray:
        return EpochOrder(sizes, ShuffleSettings(True, seed, mode, 4), epoch).ids(0, 1000)

    for mode in ("full", "block"):
        base = ids(3, mode, 0)
        assert not np.array_equal(base, ids(3, mode, 1))
        assert not np.array_equal(base, ids(4, mode, 0))
        assert np.array_equal(base, ids(3, mode, 0))


@pytest.mark.parametrize(
    "shuffle", [ShuffleSettings(True, 5, "full"), ShuffleSettings(True, 5, "block", 4)]
)
def test_shuffle_quality_position_and_decile(shuffle: ShuffleSettings) -> None:
    """Full mode looks uniform over the epoch; block mode looks uniform inside each window
    (|Spearman| within 4 standard errors; chi-square of id decile x position decile below the
    0.1% critical value) and its windows come in a shuffled shard order."""
    sizes = [500] * 40
    order = EpochOrder(sizes, shuffle, 2)
    ids = order.ids(0, len(order))
    if shuffle.mode == "full":
        spans = [(0, len(ids))]
    else:
        window = 4 * 500
        spans = [(a, a + window) for a in range(0, len(ids), window)]
        first_shard = [int(ids[a:b].min()) // 500 for a, b in spans]
        assert first_shard != sorted(first_shard)
    for a, b in spans:
        part = ids[a:b]
        ranks = np.argsort(np.argsort(part))  # ids of this span relabelled 0..len-1
        positions = np.arange(len(part))
        assert abs(np.corrcoef(positions, ranks)[0, 1]) < 4 / np.sqrt(len(part))
        table = np.zeros((10, 10))
        np.add.at(table, (positions * 10 // len(part), ranks * 10 // len(part)), 1)
        expected = len(part) / 100
        assert float(((table - expected) ** 2 / expected).sum()) < 126.0  # chi2(81), p=0.001


@settings(max_examples=5, deadline=None)
@given(st.sampled_from(["full", "block"]), st.integers(0, 2**32))
def test_a_billion_item_order_is_evaluated_without_an_array_of_the_epoch(
    mode: str, seed: int
) -> None:
    """10^9 items in 10^4 shards: building the order and reading batches at its start, middle
    and end allocates a few MiB (shard order, one cached chunk), never the 8 GB an array of the
    epoch would take; the batches hold distinct ids inside the epoch."""
    sizes = np.full(10_000, 100_000, dtype=np.int64)
    tracemalloc.start()
    try:
        order = EpochOrder(sizes, ShuffleSettings(True, seed, mode, 16), 3)
        batches = [order[p : p + 512] for p in (0, 512, 500_000_000, 10**9 - 512)]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(order) == 10**9
    assert peak < 16 * 2**20, peak
    ids = np.concatenate(batches)
    assert len(np.unique(ids)) == len(ids) and ids.min() >= 0 and ids.max() < 10**9


def test_an_order_is_a_read_only_sequence_of_its_ids() -> None:
    """order[i], negative indices, position arrays, iteration, tolist and np.asarray all read
    the same ids as global_order (which materialises the epoch)."""
    settings = ShuffleSettings(True, 4, "block", 2)
    order = EpochOrder([3, 0, 4, 5], settings, 1)
    whole = global_order([3, 0, 4, 5], settings, 1)
    assert [order[i] for i in range(12)] == whole.tolist() == list(order) == order.tolist()
    assert order[-1] == whole[-1] and order[np.array([5, 2])].tolist() == whole[[5, 2]].tolist()
    assert np.array_equal(np.asarray(order), whole)
    with pytest.raises(IndexError):
        order[12]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed"),
        ({"mode": "window"}, "shuffle_mode"),
        ({"block": 0}, "shuffle_block"),
    ],
)
def test_bad_shuffle_settings_name_the_setting(kwargs: dict[str, Any], message: str) -> None:
    """Invalid shuffle settings raise ConfigError naming the setting."""
    with pytest.raises(ConfigError, match=message):
        ShuffleSettings(True, **kwargs).validated()
