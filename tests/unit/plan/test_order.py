"""The global order of an epoch (`streamload.plan.order`): a seeded permutation, block windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.plan.order import ShuffleSettings, global_order

shard_sizes = st.lists(st.integers(0, 30), min_size=0, max_size=12)
shuffles = st.builds(
    ShuffleSettings,
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    mode=st.sampled_from(["full", "block"]),
    block=st.integers(1, 5),
)


@given(shard_sizes, shuffles, st.integers(0, 5))
def test_global_order_is_a_seeded_permutation(
    sizes: list[int], shuffle: ShuffleSettings, epoch: int
) -> None:
    """Every epoch's order is a permutation of all ids, the same every time it is computed."""
    order = global_order(sizes, shuffle, epoch)
    assert order.dtype == np.int64
    assert sorted(order.tolist()) == list(range(sum(sizes)))
    assert np.array_equal(order, global_order(sizes, shuffle, epoch))
    if not shuffle.shuffle:
        assert np.array_equal(order, np.arange(sum(sizes)))


def test_shuffled_orders_change_with_epoch_and_seed() -> None:
    """Shuffled orders differ across epochs and seeds, in both modes."""
    sizes = [50] * 20
    for mode in ("full", "block"):
        base = global_order(sizes, ShuffleSettings(True, 3, mode, 4), 0)
        assert not np.array_equal(base, global_order(sizes, ShuffleSettings(True, 3, mode, 4), 1))
        assert not np.array_equal(base, global_order(sizes, ShuffleSettings(True, 4, mode, 4), 0))


@given(shard_sizes, st.integers(0, 2**32), st.integers(1, 5), st.integers(0, 3))
def test_block_order_keeps_at_most_block_shards_live(
    sizes: list[int], seed: int, block: int, epoch: int
) -> None:
    """In block mode, at any point of the order at most `block` shards have been started and not
    yet finished: read-ahead and cache need only one window of shards."""
    order = global_order(sizes, ShuffleSettings(True, seed, "block", block), epoch)
    live = live_shards(sizes, order)
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
    order = global_order(sizes, ShuffleSettings(True, 0, "full"), 0)
    assert max(live_shards(sizes, order)) >= 18


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
