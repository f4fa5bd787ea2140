"""Mixture apportionment (streamload.mixture): exact counts per step, per prefix and per rank;
every source's draws exactly once per source epoch; independent of ranks, workers and batch
size."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.mixture import (
    SCALE,
    MixturePlan,
    Segment,
    SourceOrder,
    advance,
    apportion,
    interleave,
    quantize,
    split_step,
)
from streamload.plan import ShuffleSettings

weights = st.lists(
    st.floats(0.001, 1000, allow_nan=False, allow_infinity=False), min_size=1, max_size=7
)


def _floor_ceil(share: int, size: int) -> tuple[int, int]:
    return share * size // SCALE, -(-share * size // SCALE)


@given(weights)
def test_quantized_weights_sum_to_the_scale_and_keep_the_proportions(ws: list[float]) -> None:
    """Shares are positive integers summing to SCALE, each within one unit of its exact share."""
    shares = quantize(ws)
    assert sum(shares) == SCALE and min(shares) > 0
    total = sum(ws)
    assert all(abs(s - w / total * SCALE) <= 1 for s, w in zip(shares, ws, strict=True))


@pytest.mark.parametrize("bad", [[], [1, 0], [1, -2], [1, float("nan")], [1, float("inf")], [True]])
def test_bad_weights_are_a_config_error(bad: list[float]) -> None:
    """No weights, zero, negative, NaN, infinite or boolean weights are refused."""
    with pytest.raises(ConfigError, match="weight"):
        quantize(bad)


@settings(max_examples=300, deadline=None)
@given(weights, st.lists(st.integers(1, 700), min_size=1, max_size=60))
def test_every_step_is_floor_or_ceil_and_every_prefix_within_one(
    ws: list[float], sizes: list[int]
) -> None:
    """Each step of B positions gives source s floor(w_s B) or ceil(w_s B), the counts sum to
    B, and after every step each source's total is within one item of w_s x positions so far
    (steps of any, changing, sizes: a resume on another batch size changes them)."""
    shares = quantize(ws)
    lags = [0] * len(shares)
    totals = [0] * len(shares)
    position = 0
    for size in sizes:
        counts, lags = apportion(shares, SCALE, lags, size)
        assert sum(counts) == size
        for s, c in enumerate(counts):
            assert c in _floor_ceil(shares[s], size)
        position += size
        totals = [t + c for t, c in zip(totals, counts, strict=True)]
        for s, t in enumerate(totals):
            ideal = Fraction(shares[s] * position, SCALE)
            assert abs(t - ideal) < 1, (s, t, float(ideal))
        assert lags == [shares[s] * position - SCALE * totals[s] for s in range(len(shares))]


def test_a_long_run_of_awkward_weights_stays_within_one() -> None:
    """10,000 steps of 7 sources with weights spanning three orders of magnitude on a batch
    that is not a multiple of anything: the lag never reaches one item."""
    shares = quantize([0.37, 0.21, 0.17, 0.13, 0.07, 0.047, 0.003])
    lags = [0] * 7
    worst = 0
    for _ in range(10_000):
        _counts, lags = apportion(shares, SCALE, lags, 251)
        worst = max(worst, *(abs(lag) for lag in lags))
    assert worst < SCALE


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
    shares = quantize(ws)
    cursors = cursors if cursors is not None else (0,) * len(ws)
    segment = segment or Segment(shares, (0,) * len(ws))
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


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=1, max_size=4),
    st.integers(0, 120),
    st.integers(1, 4),
    st.integers(1, 6),
    st.booleans(),
)
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
    shares = quantize(ws)
    for s, e in enumerate(end):
        assert abs(e - Fraction(shares[s] * samples, SCALE)) < 1


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
    shares = quantize([0.1, 0.3, 0.6])
    new = _plan(
        [50, 50, 50],
        [0.1, 0.3, 0.6],
        1000,
        2,
        8,
        start=old.position_after(20),
        cursors=cursors,
        segment=Segment(shares, cursors),
    )
    assert new.cursors_at(0) == cursors
    for step in range(new.num_steps):
        counts = new.step_counts(step)
        size = new.step_size(step)
        assert all(c in _floor_ceil(shares[s], size) for s, c in enumerate(counts))
    end = new.cursors_at(new.num_steps)
    moved = 1000 - old.position_after(20)
    for s in range(3):
        assert abs(end[s] - cursors[s] - Fraction(shares[s] * moved, SCALE)) < 1


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
