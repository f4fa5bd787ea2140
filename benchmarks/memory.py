"""Process-tree memory sampler: peak PSS of a process and all its descendants.

PSS (proportional set size) splits shared pages between the processes mapping them, so summing
it over the trainer and its workers counts a shared-memory ring or an mmapped shard once, not once
per worker. `/proc/PID/smaps_rollup` gives Pss_Anon, Pss_Shmem and Pss_File per process; a
background thread sums them over the tree every `interval` seconds and keeps the peaks.
Invariant: a process that exits between listing and reading is skipped, never an error.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_FIELDS = ("Pss_Anon", "Pss_Shmem", "Pss_File")


def descendants(pid: int) -> list[int]:
    """Return `pid` and every live descendant (via /proc/*/task/*/children)."""
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
    """Return the summed Pss_Anon/Pss_Shmem/Pss_File (bytes) of `pid` and its descendants."""
    total = dict.fromkeys(_FIELDS, 0)
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
    """Context manager sampling `tree_pss` in a thread; `.peak_anon_shmem` and `.peak_file` after."""

    def __init__(self, pid: int | None = None, interval: float = 0.03) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak_anon_shmem = 0
        self.peak_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        m = tree_pss(self.pid)
        self.peak_anon_shmem = max(self.peak_anon_shmem, m["Pss_Anon"] + m["Pss_Shmem"])
        self.peak_file = max(self.peak_file, m["Pss_File"])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakPss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()
