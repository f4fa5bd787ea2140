"""Tests of the process-tree PSS samplers (``streamload bench``, the demo and benchmarks/)."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from streamload.cli import pss

pytestmark = pytest.mark.skipif(not pss.available(), reason="needs /proc/self/smaps_rollup")


def test_tree_pss_counts_this_process() -> None:
    """The process-tree PSS of the running interpreter is positive, anonymous memory included."""
    total = pss.tree_pss(os.getpid())
    assert total["Pss"] > 0 and total["Pss_Anon"] > 0


@pytest.mark.skipif(not pss.available(), reason="needs /proc/self/smaps_rollup")
def test_memory_sampler_sees_anonymous_growth() -> None:
    """Memory allocated and held inside the block shows up as anonymous peak growth."""
    with pss.PeakPss(interval=0.01) as memory:
        held = np.ones(64 * 2**20, np.uint8)  # touched pages, so they are resident
    assert memory.peak_anon_shmem - memory.base_anon_shmem >= 48 * 2**20
    del held


def test_child_sampler_records_a_curve_of_this_tree() -> None:
    """The sampling child writes timestamped PSS samples of the tree while the block runs."""
    with pss.ChildSampler(0.05) as sampler:
        sampler.sample_now()
        time.sleep(0.5)
    samples = sampler.samples()
    assert len(samples) >= 2
    assert all(b > 0 for _, b in samples)
    assert [t for t, _ in samples] == sorted(t for t, _ in samples)
