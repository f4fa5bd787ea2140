"""Dataset subsets as virtual shards (streamload.subset): exact sizes, fixed per seed, shard-local."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.plan.subset import make_subset

shard_sizes = st.lists(st.integers(0, 40), min_size=1, max_size=10).filter(lambda s: sum(s) > 0)


def _real_shard(sizes: list[int], ids: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.cumsum([0, *sizes]), ids, "right") - 1


@given(shard_sizes, st.integers(0, 2**32), st.data())
def test_a_count_subset_has_that_many_distinct_ids_spread_over_the_shards(
    sizes: list[int], seed: int, data: st.DataObject
) -> None:
    """subset=N: N distinct real ids; each virtual shard's ids lie in its own real shard; shard
    k gives floor or ceil of N n_k / n of them; the same seed gives the same subset."""
    n = sum(sizes)
    count = data.draw(st.integers(1, n))
    subset = make_subset(sizes, count, seed)
    real = subset.to_real(np.arange(count))
    assert len(subset) == count and len(np.unique(real)) == count
    assert real.min() >= 0 and real.max() < n
    virtual_shard = np.searchsorted(subset.offsets, np.arange(count), "right") - 1
    assert np.array_equal(_real_shard(sizes, real), subset.shard[virtual_shard])
    for k, size in enumerate(sizes):
        assert count * size // n <= subset.sizes[k] <= -(-count * size // n)
    assert np.array_equal(make_subset(sizes, count, seed).to_real(np.arange(count)), real)


def test_seeds_pick_different_subsets_and_fractions_round() -> None:
    """Two seeds pick different ids; a fraction takes round(f n) ids."""
    sizes = [100] * 10
    a = set(make_subset(sizes, 0.1, 1).to_real(np.arange(100)).tolist())
    b = set(make_subset(sizes, 0.1, 2).to_real(np.arange(100)).tolist())
    assert a != b
    assert len(make_subset(sizes, 0.1, 1)) == 100
    assert len(make_subset([3, 4], 0.5, 0)) == 4  # 3.5 rounds up
    assert len(make_subset(sizes, 1.0, 0)) == 1000


@given(shard_sizes, st.data())
def test_id_ranges_are_exactly_those_ids_cut_at_shard_boundaries(
    sizes: list[int], data: st.DataObject
) -> None:
    """subset=[(a, b), ...]: virtual ids map to the ranges' ids in id order; no virtual shard
    crosses a real shard boundary."""
    n = sum(sizes)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, n), min_size=2, max_size=8))))
    ranges = [(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=False) if a < b]
    if not ranges:
        return
    subset = make_subset(sizes, list(reversed(ranges)), 0)
    expected = [i for a, b in ranges for i in range(a, b)]
    real = subset.to_real(np.arange(len(expected)))
    assert real.tolist() == expected
    virtual_shard = np.searchsorted(subset.offsets, np.arange(len(expected)), "right") - 1
    assert np.array_equal(_real_shard(sizes, real), subset.shard[virtual_shard])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (0, "count must be in"),
        (101, "count must be in"),
        (0.0, "fraction must be in"),
        (1.5, "fraction must be in"),
        (0.001, "is none"),
        ([(5, 5)], "must satisfy"),
        ([(0, 101)], "must satisfy"),
        ([(0, 10), (5, 20)], "overlap"),
        ([(1, 2, 3)], "int pairs"),
        ([], "no id ranges"),
        ("half", "expected a count"),
        (True, "expected a count"),
    ],
)
def test_bad_subsets_are_config_errors_naming_the_value(spec: Any, message: str) -> None:
    """Out-of-range counts and fractions, bad or overlapping ranges, other types: ConfigError."""
    with pytest.raises(ConfigError, match=message):
        make_subset([50, 50], spec, 0)


def test_ids_outside_the_subset_raise_index_error() -> None:
    """Virtual ids past the subset's end are refused."""
    subset = make_subset([10, 10], 5, 0)
    with pytest.raises(IndexError):
        subset.to_real(np.array([5]))
