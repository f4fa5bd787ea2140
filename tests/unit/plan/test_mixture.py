"""Mixture apportionment (streamload.mixture): exact counts per step, per prefix and per rank;
every source's draws exactly once per source epoch; independent of ranks, workers and batch
size."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.plan.mixture import (
    MixturePlan,
    Segment,
    SourceOrder,
    advance,
    apportion,
    interleave,
    shares,
    source_windows,
    split_step,
)
from streamload.plan.order import ShuffleSettings

weights = st.lists(
    st.floats(0.001, 1000, allow_nan=False, allow_infinity=False), min_size=1, max_size=7
)


def _floor_ceil(share: int, total: int, size: int) -> tuple[int, int]:
    return share * size // total, -(-share * size // total)


@given(weights)
def test_shares_are_the_weights_exact_ratio(ws: list[float]) -> None:
    """Shares are positive coprime integers in exactly the ratio of the weights as written
    (0.5, 0.3, 0.2 -> 5, 3, 2: w B is what the user means, not a binary approximation)."""
    got = shares(ws)
    assert min(got) > 0 and math.gcd(*got) == 1
    exact = [Fraction(repr(w)) for w in ws]
    assert all(Fraction(a, sum(got)) == e / sum(exact) for a, e in zip(got, exact, strict=True))
    assert shares([0.5, 0.3, 0.2]) == (5, 3, 2) and shares([2, 6]) == (1, 3)


@pytest.mark.parametrize("bad", [[], [1, 0], [1, -2], [1, float("nan")], [1, float("inf")], [True]])
def test_bad_weights_are_a_config_error(bad: list[float]) -> None:
    """No weights, zero, negative, NaN, infinite or boolean weights are refused."""
    with pytest.raises(ConfigError, match="weight"):
        shares(bad)


def _walk(ws: list[float], sizes: list[int]) -> Fraction:
    """Apportion steps of the given sizes; check each step's counts; return the largest lag
    (|count - w x position| over sources, after every step)."""
    w = shares(ws)
    total = sum(w)
    lags = [0] * len(w)
    totals = [0] * len(w)
    position = 0
    worst = Fraction(0)
    for size in sizes:
        counts, lags = apportion(w, total, lags, size)
        assert sum(counts) == size
        for s, c in enumerate(counts):
            assert c in _floor_ceil(w[s], total, size)
        position += size
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        assert lags == [w[s] * position - total * totals[s] for s in range(len(w))]
        worst = max(
            worst, *(abs(t - Fraction(w[s] * position, total)) for s, t in enumerate(totals))
        )
    return worst


@settings(max_examples=60, deadline=None)  # up to 2 x 400 steps of exact Fractions each
@given(
    weights,
    st.integers(1, 600),
    st.integers(1, 8000),
    st.integers(1, 4),
    st.integers(1, 600),
)
def test_every_step_is_floor_or_ceil_and_every_prefix_within_one(
    ws: list[float], batch: int, samples: int, epochs: int, resumed_batch: int
) -> None:
    """A training run's steps (one global batch size, a shorter last step per epoch): each step
    of B positions gives source s floor(w_s B) or ceil(w_s B), the counts sum to B, and after
    every step each source's total is strictly within one item of w_s x positions so far; after
    a resume on another batch size halfway, within two (found: 1.014 after 135 -> 1)."""
    sizes: list[int] = []
    for _ in range(epochs):
        full, tail = divmod(samples, batch)
        sizes += [batch] * full + ([tail] if tail else [])
    assert _walk(ws, sizes[:400]) < 1
    half = len(sizes) // 2
    rest = sum(sizes[half:])
    full, tail = divmod(rest, resumed_batch)
    sizes = sizes[:half] + [resumed_batch] * full + ([tail] if tail else [])
    assert _walk(ws, sizes[:400]) < 2


@settings(max_examples=200, deadline=None)
@given(weights, st.lists(st.integers(1, 700), min_size=1, max_size=60))
def test_any_sequence_of_step_sizes_keeps_exact_steps_and_bounded_lag(
    ws: list[float], sizes: list[int]
) -> None:
    """Step sizes changing arbitrarily at every step (no loader does this) still give
    floor/ceil counts per step and exact totals; the lag stays below two items."""
    assert _walk(ws, sizes) < 2


def test_a_long_run_of_awkward_weights_stays_within_one() -> None:
    """10,000 steps of 7 sources with weights spanning three orders of magnitude on a batch
    that is not a multiple of anything: the lag never reaches one item."""
    w = shares([0.37, 0.21, 0.17, 0.13, 0.07, 0.047, 0.003])
    lags = [0] * 7
    worst = 0
    for _ in range(10_000):
        _counts, lags = apportion(w, sum(w), lags, 251)
        worst = max(worst, *(abs(lag) for lag in lags))
    assert worst < sum(w)


@given(st.lists(st.integers(0, 40), min_size=1, max_size=6), st.integers(1, 8), st.data())
def test_a_step_splits_among_ranks_floor_or_ceil_per_source(
    counts: list[int], world: int, data: st.DataObject
) -> None:
    """Each rank's slice of b positions gets floor or ceil of n_s b / B of every source; rows
    sum to the slices and columns to the step's counts, whichever rank goes first."""
    size = sum(counts)
    if size == 0:
        return
    share, extra = divmod(size, world)
    slices = [share + (1 if r < extra else 0) for r in range(world)]
    first = data.draw(st.integers(0, world - 1))
    split = split_step(counts, slices, first)
    assert split.sum(axis=1).tolist() == slices
    assert split.sum(axis=0).tolist() == counts
    for r in range(world):
        for s, n in enumerate(counts):
            lo, hi = n * slices[r] // size, -(-n * slices[r] // size)
            assert lo <= split[r, s] <= hi


@given(st.lists(st.integers(0, 30), min_size=1, max_size=6))
def test_interleave_places_every_item_and_spreads_each_source(counts: list[int]) -> None:
    """A slice holds exactly c_s positions of source s; each source's positions are spread over
    the slice (every prefix within two items of its proportional share)."""
    order = interleave(counts)
    assert Counter(order.tolist()) == Counter({s: c for s, c in enumerate(counts) if c})
    b = len(order)
    for s, c in enumerate(counts):
        prefix = np.cumsum(order == s)
        ideal = c * np.arange(1, b + 1) / max(b, 1)
        assert np.all(np.abs(prefix - ideal) < 2)


def _plan(
    n_items: list[int],
    ws: list[float],
    samples: int,
    world: int,
    batch: int,
    drop_last: bool = False,
    start: int = 0,
    cursors: tuple[int, ...] | None = None,
    segment: Segment | None = None,
    shuffle: bool = True,
) -> MixturePlan:
    cursors = cursors if cursors is not None else (0,) * len(ws)
    segment = segment or Segment(shares(ws), (0,) * len(ws))
    sources = [
        SourceOrder([n // 2, n - n // 2], ShuffleSettings(shuffle, 11 + s, "block", 1))
        for s, n in enumerate(n_items)
    ]
    return MixturePlan(samples, world, batch, drop_last, start, cursors, segment, sources)


def _draws(plan: MixturePlan, rank: int, step: int) -> list[tuple[int, int]]:
    """(source, draw index) of each real (not padded) position of a rank's batch."""
    split, cursors = plan.rank_split(step)
    if not split[rank].sum():
        return []
    before = split[:rank].sum(axis=0)
    return [
        (s, cursors[s] + int(before[s]) + t)
        for s in range(split.shape[1])
        for t in range(int(split[rank, s]))
    ]


def _plan_cases(min_samples: int) -> Any:
    """Sources' item counts, run length, world size, batch size, drop_last."""
    return given(
        st.lists(st.integers(1, 12), min_size=1, max_size=4),
        st.integers(min_samples, 120),
        st.integers(1, 4),
        st.integers(1, 6),
        st.booleans(),
    )


@settings(max_examples=60, deadline=None)
@_plan_cases(min_samples=0)
def test_plan_draws_each_source_contiguously_exactly_once(
    n_items: list[int], samples: int, world: int, batch: int, drop_last: bool
) -> None:
    """Across all ranks and steps, source s uses draws 0..k_s-1 exactly once (padding aside),
    so within each source epoch no item repeats and none is skipped; batches have the
    EpochPlan's sizes and ids are the source orders' at those draws."""
    ws = [1.0 + i for i in range(len(n_items))]
    plan = _plan(n_items, ws, samples, world, batch, drop_last)
    used: Counter[tuple[int, int]] = Counter()
    for step in range(plan.num_steps):
        for rank in range(world):
            got = plan.batch(rank, step)
            assert len(got) == len(plan.steps.batch(rank, step))
            draws = _draws(plan, rank, step)
            used.update(draws)
            if draws:
                by_source = sorted(draws)
                ids = [int(plan.sources[s].ids(d, 1)[0]) for s, d in by_source]  # type: ignore[index]
                pairs = zip(got.source.tolist(), got.ids.tolist(), strict=True)
                assert sorted(pairs) == sorted(zip([s for s, _ in by_source], ids, strict=True))
    end = plan.cursors_at(plan.num_steps)
    assert set(used.values()) <= {1}
    assert sorted(used) == [(s, d) for s in range(len(n_items)) for d in range(end[s])]
    assert sum(end) == plan.end


@settings(max_examples=60, deadline=None)
@_plan_cases(min_samples=1)
def test_source_counts_are_what_each_batch_holds_without_building_it(
    n_items: list[int], samples: int, world: int, batch: int, drop_last: bool
) -> None:
    """What the trainer's stats ask per batch, from a plan that builds no batch (one rank or
    many, padded ranks included): source_counts is each source's count in that rank's batch,
    and sources_of its source per position."""
    ws = [1.0 + i for i in range(len(n_items))]
    built = _plan(n_items, ws, samples, world, batch, drop_last)
    counted = _plan(n_items, ws, samples, world, batch, drop_last)
    for rank in range(world):
        for step in range(built.num_steps):
            got = built.batch(rank, step)
            want = np.bincount(got.source, minlength=len(n_items)).tolist()
            assert list(counted.source_counts(rank, step)) == want
            assert counted.sources_of(rank, step).tolist() == got.source.tolist()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(3, 9), min_size=2, max_size=4),
    st.integers(1, 4),
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 5),
    st.data(),
)
def test_resume_on_another_topology_continues_every_source(
    n_items: list[int], world_a: int, batch_a: int, world_b: int, batch_b: int, data: st.DataObject
) -> None:
    """Stopping after k steps on one world size and batch size, then planning the rest from
    (position, cursors) on another, continues every source's draws without a gap or repeat,
    and the counts stay within one of w x position over the whole epoch."""
    ws = [float(i + 1) for i in range(len(n_items))]
    samples = 97
    first = _plan(n_items, ws, samples, world_a, batch_a)
    k = data.draw(st.integers(0, first.num_steps))
    cursors = first.cursors_at(k)
    second = _plan(
        n_items, ws, samples, world_b, batch_b, start=first.position_after(k), cursors=cursors
    )
    used: Counter[tuple[int, int]] = Counter()
    for plan, steps in ((first, range(k)), (second, range(second.num_steps))):
        for step in steps:
            for rank in range(plan.world_size):
                used.update(_draws(plan, rank, step))
    end = second.cursors_at(second.num_steps)
    assert set(used.values()) == {1}
    assert sorted(used) == [(s, d) for s in range(len(n_items)) for d in range(end[s])]
    w = shares(ws)
    for s, e in enumerate(end):
        assert abs(e - Fraction(w[s] * samples, sum(w))) < 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 60), st.integers(1, 4), st.integers(1, 5), st.integers(1, 4))
def test_workers_rebuild_the_rank_batches_in_any_number(
    samples: int, world: int, batch: int, workers: int
) -> None:
    """Worker k's steps k, k+n, ... (each worker with its own plan object) read round-robin
    give the rank's batches: batch contents do not depend on the worker count."""
    make = lambda: _plan([5, 8, 13], [0.5, 0.3, 0.2], samples, world, batch)  # noqa: E731
    for rank in range(world):
        expected = [(b.source.tolist(), b.ids.tolist()) for b in make().batches(rank)]
        streams = [list(make().batches(rank, k, workers)) for k in range(workers)]
        merged = [streams[s % workers][s // workers] for s in range(len(expected))]
        assert [(b.source.tolist(), b.ids.tolist()) for b in merged] == expected


def test_a_weight_change_starts_a_segment_and_continues_every_cursor() -> None:
    """New weights from (position, cursors): the new steps follow the new weights within one
    item of w' x positions since the change; every source continues at its cursor."""
    old = _plan([50, 50, 50], [0.6, 0.3, 0.1], 1000, 2, 8)
    cursors = old.cursors_at(20)
    w = shares([0.1, 0.3, 0.6])
    new = _plan(
        [50, 50, 50],
        [0.1, 0.3, 0.6],
        1000,
        2,
        8,
        start=old.position_after(20),
        cursors=cursors,
        segment=Segment(w, cursors),
    )
    assert new.cursors_at(0) == cursors
    for step in range(new.num_steps):
        counts = new.step_counts(step)
        size = new.step_size(step)
        assert all(c in _floor_ceil(w[s], sum(w), size) for s, c in enumerate(counts))
    end = new.cursors_at(new.num_steps)
    moved = 1000 - old.position_after(20)
    for s in range(3):
        assert abs(end[s] - cursors[s] - Fraction(w[s] * moved, sum(w))) < 1


def test_each_source_keeps_its_own_epochs() -> None:
    """A small source wraps into new epochs (each a permutation of its items, a new one each
    time) while a large one is still in its first: exhaustion never ends the run."""
    plan = _plan([6, 500], [0.5, 0.5], 200, 1, 10)
    small: list[int] = []
    for step in range(plan.num_steps):
        got = plan.batch(0, step)
        small += got.ids[got.source == 0].tolist()
    assert len(small) == 100
    epochs = [small[i : i + 6] for i in range(0, 96, 6)]
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1


def test_source_order_without_shuffle_reads_in_index_order_epoch_after_epoch() -> None:
    """shuffle=False: draws 0..n-1 are items 0..n-1, then again from 0."""
    order = SourceOrder([3, 4], ShuffleSettings(False))
    assert order.ids(5, 5).tolist() == [5, 6, 0, 1, 2]


def test_advance_matches_the_plan_walk() -> None:
    """`advance` over the step sizes of a plan gives the plan's cursors at its end."""
    plan = _plan([9, 9, 9], [0.2, 0.3, 0.5], 77, 3, 4)
    sizes = [plan.step_size(s) for s in range(plan.num_steps)]
    assert advance(plan.segment, (0, 0, 0), sizes) == plan.cursors_at(plan.num_steps)


@given(st.integers(1, 200), st.lists(st.integers(1, 10_000), min_size=1, max_size=9))
def test_source_windows_split_the_budget_by_weight_with_one_shard_each_at_least(
    budget: int, ws: list[int]
) -> None:
    """A budget of shards split by integer weights: every source gets >= 1 shard, the windows
    sum to the budget (or to the source count when that is larger), and when every source's
    ideal share is at least one shard each window is within one of budget x w / total."""
    windows = source_windows(budget, ws)
    assert len(windows) == len(ws) and min(windows) >= 1
    assert sum(windows) == max(budget, len(ws))
    total = sum(ws)
    if all(budget * w >= total for w in ws):
        assert all(
            abs(k - Fraction(budget * w, total)) < 1 for k, w in zip(windows, ws, strict=True)
        )
    assert source_windows(budget, ws) == windows  # pure


def test_source_windows_examples_and_refusals() -> None:
    """16 shards at 5/3/2 are 8/5/3; a tiny share still gets one shard; bad input: ConfigError."""
    assert source_windows(16, [5, 3, 2]) == [8, 5, 3]
    assert source_windows(4, [100, 1, 1]) == [2, 1, 1]
    assert source_windows(2, [1, 1, 1]) == [1, 1, 1]
    for budget, ws in ((0, [1]), (4, []), (4, [1, 0])):
        with pytest.raises(ConfigError):
            source_windows(budget, ws)
