"""Loader processes reuse freed batch memory instead of page-faulting it back every batch."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import os, resource, sys
from streamload.loader import heap
if sys.argv[1] != "0":
    assert heap.retain_freed(int(sys.argv[1]))
src = os.urandom(64 * 1024)
def batch_faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        items = [bytes(bytearray(src)) for _ in range(256)]  # one 16 MiB batch of 64 KiB items
        del items
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
batch_faults()
print(batch_faults())
"""


def _faults(retain: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(retain)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_retained_heap_stops_the_per_batch_page_faults() -> None:
    """With heap_retain, ten batches of 256 x 64 KiB items fault (almost) nothing after the first."""
    default, retained = _faults(0), _faults(64 << 20)
    assert default > 20_000  # the problem: every batch faults its 16 MiB back in
    assert retained < 1_000


def test_zero_leaves_malloc_alone() -> None:
    """heap_retain = 0 means: do not touch malloc's settings."""
    from streamload.loader import heap

    assert heap.retain_freed(0) is False
