"""Loader processes reuse freed batch memory instead of page-faulting it back every batch, and
the trainer's malloc stays on glibc's own policy (streamload never calls mallopt there)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")

PROBE = """
import os, resource, sys
from streamload.loader import heap
mode, size = sys.argv[1], int(sys.argv[2])
if mode == "retain":
    assert heap.retain_freed(size)
elif mode == "prime":
    assert heap.prime(size)
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


def _faults(mode: str, size: int = 64 << 20, env: dict[str, str] | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, str(size)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return int(out.stdout.strip())


def test_retained_heap_stops_the_per_batch_page_faults() -> None:
    """With heap_retain (workers), ten batches of 256 x 64 KiB items fault (almost) nothing
    after the first; with malloc's defaults every batch faults its 16 MiB back in."""
    default, retained = _faults("none"), _faults("retain")
    assert default > 20_000  # the problem: every batch faults its 16 MiB back in
    assert retained < 1_000


def test_priming_glibcs_own_thresholds_stops_them_too() -> None:
    """The trainer's priming (one freed batch-sized block, no mallopt) gives the same reuse."""
    assert _faults("prime") < 1_000


def test_priming_leaves_a_users_malloc_settings_alone() -> None:
    """A user who set malloc options (here MALLOC_TRIM_THRESHOLD_) switched glibc's sliding
    thresholds off: priming then changes nothing, the batches fault as the user configured."""
    env = {"MALLOC_TRIM_THRESHOLD_": str(128 << 10)}
    assert _faults("prime", env=env) > 20_000


def test_zero_leaves_malloc_alone() -> None:
    """heap_retain = 0 means: do not touch malloc's settings."""
    from streamload.loader import heap

    assert heap.retain_freed(0) is False
    assert heap.prime(0) is False


RELEASE_PROBE = """
import sys
from streamload.loader import heap
heap.prime(64 << 20)
def dirty():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1]) * 1024
items = [bytes(64 * 1024) for _ in range(512)]  # a 32 MiB batch
base = dirty()
del items
kept = dirty()
heap.release()
print(base, kept, dirty())
"""


def test_release_hands_kept_memory_back() -> None:
    """Freed batch memory a primed process keeps goes back to the system at release()."""
    out = subprocess.run(
        [sys.executable, "-c", RELEASE_PROBE], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    base, kept, released = map(int, out.stdout.split())
    assert kept > base - (8 << 20)  # freed but kept: still dirty
    assert released < kept - (16 << 20)  # handed back (most of it: pages of free chunks)


def test_loader_stats_report_what_was_done_to_the_trainer_heap(tmp_path: Any) -> None:
    """After a multi-worker pass, stats()["heap"] shows the trainer primed, never retained
    (no mallopt in the user's process)."""
    code = f"""
import json
import streamload as sl
with sl.ShardWriter({str(tmp_path)!r}) as w:
    for i in range(64):
        w.write({{"x": i}})
loader = sl.StreamLoader(sl.StreamingDataset({str(tmp_path)!r}), batch_size=8, num_workers=1)
list(loader)
print(json.dumps(loader.stats()["heap"]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import json

    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["glibc"] is True
    assert report["retain_bytes"] == 0
    assert report["primed_bytes"] == 31 << 20  # heap_retain 64 MiB: just below glibc's 32 MiB
