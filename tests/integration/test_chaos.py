"""Chaos: random SIGKILL/SIGSTOP of workers never hangs, duplicates, loses or leaks anything."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import threading
import time
from typing import Any

import numpy as np
import pytest
from torch.utils.data import Dataset

import streamload as sl
from streamload.errors import WorkerError
from streamload.loader.loader import StreamLoader

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.filterwarnings("ignore:StreamLoader will create:UserWarning"),
]

_ROUNDS = 6
_ROUND_DEADLINE_S = 10.0


class _Data(Dataset[Any]):
    def __len__(self) -> int:
        return 600

    def __getitem__(self, i: int) -> Any:
        return {"id": i, "x": np.full(64, i % 251, dtype=np.uint8)}


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[1] == me and fields[0] != "Z":
            found.add(int(entry))
    return found


def _chaos(pids: list[int], rng: random.Random, stop: threading.Event) -> None:
    if stop.wait(rng.uniform(0.0, 0.3)):
        return
    pid = rng.choice(pids)
    try:
        if rng.random() < 0.5:
            os.kill(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGSTOP)
            stop.wait(rng.uniform(0.05, 0.3))
            os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _one_round(dataset: Any, expected: set[int], rng: random.Random) -> None:
    loader = StreamLoader(
        dataset,
        batch_size=16,
        num_workers=rng.choice([2, 3]),
        multiprocessing_context="fork",
        timeout=5,
    )
    it = iter(loader)
    pids = [p.pid for p in it._pool.procs]  # type: ignore[attr-defined]
    stop = threading.Event()
    controller = threading.Thread(target=_chaos, args=(pids, rng, stop))
    controller.start()
    seen: list[int] = []
    start = time.monotonic()
    try:
        for batch in it:
            key = "id" if "id" in batch else "x"
            seen.extend(int(v) for v in batch[key].reshape(-1))
            assert time.monotonic() - start < _ROUND_DEADLINE_S
        assert sorted(seen) == sorted(expected)
    except WorkerError:
        assert len(seen) == len(set(seen)) and set(seen) <= expected
    finally:
        stop.set()
        controller.join()
        it.shutdown()  # type: ignore[attr-defined]
    assert time.monotonic() - start < _ROUND_DEADLINE_S


def test_random_kills_and_stops_deliver_exactly_once_or_raise(tmp_path: Any) -> None:
    """Each round delivers every sample once, or raises WorkerError after valid unique samples;
    no fd, /dev/shm entry or child process survives."""
    with sl.ShardWriter(str(tmp_path), shard_size="16KiB") as w:
        for i in range(2000):
            w.write({"x": i})
    streaming = sl.StreamingDataset(str(tmp_path))
    baseline_fds = len(os.listdir("/proc/self/fd"))
    baseline_active = multiprocessing.active_children()
    baseline_children = _children()  # e.g. a forkserver or resource tracker started earlier
    rng = random.Random(1234)
    for round_no in range(_ROUNDS):
        if round_no % 2:
            _one_round(streaming, set(range(2000)), rng)
        else:
            _one_round(_Data(), set(range(600)), rng)
    assert len(os.listdir("/proc/self/fd")) == baseline_fds
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("streamload")]
    assert multiprocessing.active_children() == baseline_active
    assert _children() <= baseline_children
