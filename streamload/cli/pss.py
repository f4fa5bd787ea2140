"""Process-tree memory: PSS of a process and all its descendants, sampled while work runs.

PSS (proportional set size) splits shared pages between the processes mapping them, so summing
it over the trainer and its workers counts a shared-memory ring or a mapped shard once, not once
per worker. ``/proc/PID/smaps_rollup`` gives ``Pss``, ``Pss_Anon``, ``Pss_Shmem`` and
``Pss_File`` per process; `tree_pss` sums them over the tree.

Two samplers, one per use:

- `PeakPss` samples from a thread of this process and keeps peaks (and the first sample, the
  baseline): for the demo and the benchmarks, which measure a tree from outside or a quiet
  single process.
- `ChildSampler` samples from a separate child process (started with ``python -c``, no torch)
  and records a curve. Reading smaps_rollup takes the target's mmap lock, which a thread of
  the target would contend for while its workers fault pages in; ``streamload bench`` uses it.

Invariant: a process that exits between listing and reading is skipped, never an error; a
machine without smaps_rollup (Linux < 4.14) reads as all zeros and `available` says so.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FIELDS = ("Pss", "Pss_Anon", "Pss_Shmem", "Pss_File")


def available() -> bool:
    """Whether this machine reports per-process PSS (``/proc/self/smaps_rollup``)."""
    return os.path.exists("/proc/self/smaps_rollup")


def descendants(pid: int) -> list[int]:
    """``pid`` and every live descendant (via ``/proc/*/task/*/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def tree_pss(pid: int) -> dict[str, int]:
    """The summed ``Pss``/``Pss_Anon``/``Pss_Shmem``/``Pss_File`` (bytes) of ``pid``'s tree."""
    total = dict.fromkeys(FIELDS, 0)
    for p in descendants(pid):
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key in total:
                total[key] += int(rest.split()[0]) * 1024
    return total


class PeakPss:
    """Samples `tree_pss` from a thread while the ``with`` block runs.

    After the block: ``peak_anon_shmem`` and ``peak_file`` (bytes), and ``base_anon_shmem`` and
    ``base_file`` (the first sample, taken on entry).
    """

    def __init__(self, pid: int | None = None, interval: float = 0.03) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_anon_shmem = 0
        self.peak_file = 0
        self.base_anon_shmem = 0
        self.base_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamload-pss", daemon=True)

    def _sample(self) -> tuple[int, int]:
        m = tree_pss(self.pid)
        anon, file = m["Pss_Anon"] + m["Pss_Shmem"], m["Pss_File"]
        self.peak_anon_shmem = max(self.peak_anon_shmem, anon)
        self.peak_file = max(self.peak_file, file)
        return anon, file

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakPss:
        self.base_anon_shmem, self.base_file = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


# Run as `python -c` so the sampler starts in milliseconds without importing torch/streamload.
# argv: root pid, interval seconds, output path. Writes "monotonic_seconds pss_bytes" lines
# (CLOCK_MONOTONIC is system-wide, so the parent aligns them with its own samples).
_SAMPLER = r"""
import os, sys, time
root, interval, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
me = os.getpid()
def tree(pid):
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return [p for p in seen if p != me]
with open(out, "w") as f:
    while os.path.exists(f"/proc/{root}"):
        total = 0
        for p in tree(root):
            try:
                with open(f"/proc/{p}/smaps_rollup") as r:
                    for line in r:
                        if line.startswith("Pss:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                pass
        f.write(f"{time.monotonic():.4f} {total}\n")
        f.flush()
        time.sleep(interval)
"""


class ChildSampler:
    """Samples the PSS of this process tree from a child process (see the module docstring).

    ``samples()`` after the block: ``(seconds since entry, PSS bytes)`` pairs, sorted.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        # Closed in `samples()`: the sampler process writes to it by name meanwhile.
        self._file = tempfile.NamedTemporaryFile(prefix="streamload-pss-", suffix=".pss")  # noqa: SIM115
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChildSampler:
        self._started = time.monotonic()
        self.extra: list[tuple[float, int]] = []
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, str(os.getpid()), str(self.interval), self._file.name]
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)

    def sample_now(self) -> None:
        """One sample taken here (the child may not have started on a short run)."""
        self.extra.append((time.monotonic() - self._started, tree_pss(os.getpid())["Pss"]))

    def samples(self) -> list[tuple[float, int]]:
        out = list(self.extra)
        for line in Path(self._file.name).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((float(parts[0]) - self._started, int(parts[1])))
        self._file.close()
        return sorted(out)
