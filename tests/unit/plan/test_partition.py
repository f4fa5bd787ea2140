"""Per-rank steps (`streamload.plan.partition`): every id once, equal steps, worker shares, resume."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from conformance import check_plan_resume
from hypothesis import given
from hypothesis import strategies as st

from streamload.errors import ConfigError
from streamload.plan.order import ShuffleSettings, global_order
from streamload.plan.partition import EpochPlan, count_steps

shard_sizes = st.lists(st.integers(0, 30), min_size=0, max_size=12)
shuffles = st.builds(
    ShuffleSettings,
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32),
    mode=st.sampled_from(["full", "block"]),
    block=st.integers(1, 5),
)


def _steps(plan: EpochPlan) -> list[list[np.ndarray]]:
    """Every step as the list of each rank's batch."""
    return [
        [plan.batch(rank, step) for rank in range(plan.world_size)]
        for step in range(plan.num_steps)
    ]


@given(
    shard_sizes,
    shuffles,
    st.integers(1, 6),
    st.integers(1, 7),
    st.booleans(),
    st.data(),
)
def test_steps_consume_the_global_order_exactly_once_on_any_world_size(
    sizes: list[int],
    shuffle: ShuffleSettings,
    world_size: int,
    batch_size: int,
    drop_last: bool,
    data: st.DataObject,
) -> None:
    """Ranks' batches, read step by step and rank by rank (padding aside), are exactly the
    global order from the start position: every id once, none invented, whatever the topology."""
    order = global_order(sizes, shuffle, 0)
    start = data.draw(st.integers(0, len(order)))
    plan = EpochPlan(order, world_size, batch_size, drop_last, start)
    consumed = [
        i for step in range(plan.num_steps) for r in range(world_size) for i in _real(plan, r, step)
    ]
    assert consumed == order[start : plan.end].tolist()
    if not drop_last:
        assert plan.end == len(order)
    else:
        assert len(order) - plan.end < world_size * batch_size


@given(st.integers(0, 80), st.integers(1, 9), st.integers(1, 9), st.booleans(), st.data())
def test_every_rank_takes_the_same_number_of_nonempty_steps(
    n: int, world_size: int, batch_size: int, drop_last: bool, data: st.DataObject
) -> None:
    """Each rank gets exactly num_steps batches, none empty, none larger than batch_size, and
    the last step's batches differ in size by at most one."""
    start = data.draw(st.integers(0, n))
    plan = EpochPlan(np.arange(n, dtype=np.int64), world_size, batch_size, drop_last, start)
    for rank in range(world_size):
        batches = list(plan.batches(rank))
        assert len(batches) == plan.num_steps
        assert all(1 <= len(b) <= batch_size for b in batches)
    if plan.num_steps:
        last = [len(b) for b in _steps(plan)[-1]]
        assert max(last) - min(last) <= 1


@given(st.integers(0, 80), st.integers(1, 9), st.integers(1, 9), st.data())
def test_padding_is_the_fewest_repeats_that_give_equal_steps(
    n: int, world_size: int, batch_size: int, data: st.DataObject
) -> None:
    """Repeats happen only when the tail has fewer ids than ranks, one per empty rank; the
    multiset of yielded ids is the remaining order plus exactly `padding` repeated tail ids."""
    start = data.draw(st.integers(0, n))
    plan = EpochPlan(np.arange(n, dtype=np.int64), world_size, batch_size, False, start)
    tail = (n - start) % (world_size * batch_size)
    assert plan.padding == (world_size - tail if 0 < tail < world_size else 0)
    assert plan.padding == sum(plan.padded(r) for r in range(world_size))
    counts = Counter(i for r in range(world_size) for b in plan.batches(r) for i in b.tolist())
    assert set(counts) == set(range(start, n))
    assert sum(counts.values()) == n - start + plan.padding


@given(st.integers(0, 60), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5))
def test_workers_rebuild_the_rank_batches_in_any_number(
    n: int, world_size: int, batch_size: int, num_workers: int
) -> None:
    """Worker k's steps k, k+n, ... read round-robin give the rank's batches: batch contents do
    not depend on the worker count; rank_positions gives those steps' positions at once."""
    plan = EpochPlan(np.arange(n, dtype=np.int64)[::-1].copy(), world_size, batch_size)
    for rank in range(world_size):
        streams = [list(plan.batches(rank, k, num_workers)) for k in range(num_workers)]
        merged = [streams[s % num_workers][s // num_workers] for s in range(plan.num_steps)]
        expected = list(plan.batches(rank))
        assert [b.tolist() for b in merged] == [b.tolist() for b in expected]
        ids = np.concatenate(expected) if expected else np.empty(0, np.int64)
        order = plan.order
        assert order[plan.rank_positions(rank, 0, plan.num_steps)].tolist() == ids.tolist()
        for k in range(num_workers):  # a worker's share of many steps at once
            share = [i for b in streams[k] for i in b.tolist()]
            assert (
                order[plan.rank_positions(rank, k, plan.num_steps, num_workers)].tolist() == share
            )


@given(st.integers(1, 80), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6), st.data())
def test_position_after_k_steps_resumes_on_another_world_size(
    n: int, world_a: int, world_b: int, batch_size: int, data: st.DataObject
) -> None:
    """Stopping after k steps on one world size and restarting at position_after(k) on another
    covers the rest of the epoch with no id lost or repeated (padding aside)."""
    order = global_order([n], ShuffleSettings(True, 9), 2)
    first = EpochPlan(order, world_a, batch_size)
    k = data.draw(st.integers(0, first.num_steps))
    before = [i for s in range(k) for r in range(world_a) for i in _real(first, r, s)]
    second = EpochPlan(order, world_b, batch_size, start=first.position_after(k))
    after = [
        i for s in range(second.num_steps) for r in range(world_b) for i in _real(second, r, s)
    ]
    assert before + after == order.tolist()


@given(
    shard_sizes,
    shuffles,
    st.integers(0, 3),
    st.integers(1, 5),
    st.integers(1, 7),
    st.booleans(),
)
def test_plan_resume_conformance_after_every_step(
    sizes: list[int],
    settings: ShuffleSettings,
    epoch: int,
    world_size: int,
    batch_size: int,
    drop_last: bool,
) -> None:
    """The shared conformance check, on the plan itself: a plan started at the position after
    step k yields the original plan's steps from k on, for every rank and every k."""
    order = global_order(sizes, settings, epoch)
    check_plan_resume(
        lambda start: EpochPlan(order, world_size, batch_size, drop_last, start), world_size
    )


def _real(plan: EpochPlan, rank: int, step: int) -> list[int]:
    """The batch without its padded repeat."""
    if step == plan.num_steps - 1 and plan.padded(rank):
        return []
    return plan.batch(rank, step).tolist()


def test_tail_smaller_than_world_size_is_padded_by_repeats() -> None:
    """10 ids on 4 ranks of batch 4 split 3/3/2/2; 2 ids on 4 ranks pad two ranks with a repeat."""
    plan = EpochPlan(np.arange(10), 4, 4)
    assert [len(plan.batch(r, 0)) for r in range(4)] == [3, 3, 2, 2] and plan.padding == 0
    plan = EpochPlan(np.arange(10), 4, 2)  # one full step of 8, then a tail of 2
    assert plan.num_steps == 2 and plan.padding == 2
    assert [plan.batch(r, 1).tolist() for r in range(4)] == [[8], [9], [8], [9]]
    assert [plan.padded(r) for r in range(4)] == [0, 0, 1, 1]


def test_plan_refuses_bad_arguments() -> None:
    """A start past the end or a world size/batch size below one is a ConfigError; a step or
    rank outside the plan is an IndexError."""
    with pytest.raises(ConfigError, match="start position"):
        EpochPlan(np.arange(5), 1, 1, start=6)
    with pytest.raises(ConfigError, match="batch_size"):
        EpochPlan(np.arange(5), 1, 0)
    plan = EpochPlan(np.arange(5), 2, 2)
    with pytest.raises(IndexError):
        plan.batch(0, plan.num_steps)
    with pytest.raises(IndexError):
        plan.batch(2, 0)


@given(st.integers(0, 100), st.integers(1, 6), st.integers(1, 6), st.booleans(), st.data())
def test_count_steps_matches_the_plan(
    n: int, world_size: int, batch_size: int, drop_last: bool, data: st.DataObject
) -> None:
    """count_steps (what len(loader) reports) equals the plan's step count without building it."""
    start = data.draw(st.integers(0, n))
    plan = EpochPlan(np.arange(n), world_size, batch_size, drop_last, start)
    assert count_steps(n, world_size, batch_size, drop_last, start) == plan.num_steps
