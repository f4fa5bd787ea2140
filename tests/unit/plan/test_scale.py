"""Plans at corpus scale: a 10^9-item epoch (synthetic shard sizes, no data) is built and stepped
in a few MiB — nothing per item of the epoch in any process, plain or mixed."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from streamload.plan.mixture import MixturePlan, Segment, SourceOrder, shares
from streamload.plan.order import EpochOrder, ShuffleSettings
from streamload.plan.partition import EpochPlan

BILLION = 10**9
MiB = 1 << 20


def _peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """``work()``'s result and the peak bytes Python and numpy allocated while it ran."""
    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mode", ["block", "full", "none"])
def test_a_billion_sample_plan_is_built_and_stepped_in_a_few_mib(mode: str) -> None:
    """10^9 samples in 10^4 shards, 64 ranks of batch 512, 4 workers each: the plan, the first,
    a middle and the last step of a few ranks and one worker's next steps allocate under
    16 MiB (an array of the epoch would be 8 GB); every batch has distinct ids in range and
    the steps partition the positions they cover."""
    settings = ShuffleSettings(mode != "none", 3, "full" if mode == "full" else "block", 16)
    sizes = np.full(10_000, BILLION // 10_000, dtype=np.int64)

    def work() -> tuple[EpochPlan, list[np.ndarray]]:
        plan = EpochPlan(EpochOrder(sizes, settings, 7), 64, 512)
        batches = [
            plan.batch(r, s)
            for s in (0, plan.num_steps // 2, plan.num_steps - 1)
            for r in (0, 31, 63)
        ]
        batches += list(itertools.islice(plan.batches(5, 2, 4), 3))  # worker 2 of 4, rank 5
        return plan, batches

    (plan, batches), peak = _peak(work)
    assert peak < 16 * MiB, peak
    assert plan.num_steps == -(-BILLION // (64 * 512))
    ids = np.concatenate(batches)
    assert ids.min() >= 0 and ids.max() < BILLION and len(np.unique(ids)) == len(ids)


def test_a_billion_sample_mixture_is_planned_anywhere_in_a_few_mib() -> None:
    """Three sources of 6 x 10^8, 3 x 10^8 and 10^8 samples mixed 60/30/10 over a 10^9-position
    epoch: starting mid-run from a state's cursors (a segment there), the next steps of a rank
    and its exact counts cost a few MiB; every source's ids are inside it."""
    sizes = [6 * 10**8, 3 * 10**8, 10**8]
    sources = [
        SourceOrder(np.full(1000, n // 1000, dtype=np.int64), ShuffleSettings(True, s, "block", 16))
        for s, n in enumerate(sizes)
    ]
    cursors = (300_000_123, 150_000_061, 50_000_020)
    segment = Segment(shares([0.6, 0.3, 0.1]), cursors)

    def work() -> list[Any]:
        plan = MixturePlan(BILLION, 32, 1024, False, 500_002_048, cursors, segment, sources)
        return [plan.batch(r, s) for s in range(3) for r in (0, 17, 31)] + [plan]

    result, peak = _peak(work)
    assert peak < 16 * MiB, peak
    *batches, plan = result
    for batch in batches:
        assert len(batch) == 1024
        for s, _where, ids in batch.parts():
            assert ids.min() >= 0 and ids.max() < sizes[s]
    exact = [0.6 * 32768, 0.3 * 32768, 0.1 * 32768]  # 19660.8, 9830.4, 3276.8
    for step in range(3):
        counts = plan.step_counts(step)
        assert sum(counts) == 32768
        assert all(abs(c - e) < 1 for c, e in zip(counts, exact, strict=True))
