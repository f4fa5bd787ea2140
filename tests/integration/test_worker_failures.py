"""Worker failures surface as WorkerError in the trainer, at the right batch, never as a hang or leak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest
from torch.utils.data import Dataset

from streamload.errors import WorkerError
from streamload.loader.loader import StreamLoader

pytestmark = pytest.mark.timeout(60)


class _Data(Dataset[Any]):
    def __init__(self, n: int = 40, fail_at: int = -1, nbytes: int = 8) -> None:
        self.n, self.fail_at, self.nbytes = n, fail_at, nbytes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if i == self.fail_at:
            raise KeyError(f"sample {i} is broken on purpose")
        return np.full(self.nbytes, i, dtype=np.uint8)


def _loader(ds: Any, **kwargs: Any) -> StreamLoader:
    kwargs.setdefault("num_workers", 2)
    kwargs.setdefault("multiprocessing_context", "fork")
    kwargs.setdefault("batch_size", 4)
    return StreamLoader(ds, **kwargs)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_worker_exception_raises_at_its_batch_with_traceback() -> None:
    """An exception in a worker is raised in order, at the failing batch, with its traceback."""
    it = iter(_loader(_Data(fail_at=13)))
    seen = [next(it) for _ in range(3)]
    assert [int(b[0, 0]) for b in seen] == [0, 4, 8]
    with pytest.raises(WorkerError, match=r"(?s)KeyError.*sample 13 is broken on purpose"):
        next(it)
    assert int(next(it)[0, 0]) == 16  # DataLoader keeps going after a worker exception


def test_sigkilled_worker_raises_naming_pid_and_signal() -> None:
    """SIGKILL of a worker mid-epoch raises WorkerError naming pid and signal within ~1 s."""
    it = iter(_loader(_Data()))
    next(it)
    proc = it._pool.procs[1]  # type: ignore[attr-defined]
    os.kill(proc.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(
        WorkerError,
        match=rf"^DataLoader worker \(pid\(s\) {proc.pid}\) exited unexpectedly .*worker 1"
        rf" \(pid {proc.pid}\) was killed by signal SIGKILL",
    ):
        for _ in it:
            pass
    assert time.monotonic() - start < 2.0


def test_stopped_worker_with_timeout_raises_timed_out() -> None:
    """A SIGSTOPped worker with timeout=1 raises a 'timed out' WorkerError (without a timeout
    the trainer keeps waiting on the live-but-stopped worker, as DataLoader does)."""
    loader = _loader(_Data(n=400), timeout=1, prefetch_factor=1)
    it = iter(loader)
    next(it)
    pid = it._pool.procs[1].pid  # type: ignore[attr-defined]
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(WorkerError, match=r"^DataLoader timed out after 1 seconds"):
            for _ in it:
                pass
        assert time.monotonic() - start < 3.0
    finally:
        os.kill(pid, signal.SIGCONT)
        it.shutdown()  # type: ignore[attr-defined]
    assert _gone(pid)


def test_break_out_of_loop_leaves_no_worker_and_no_fd() -> None:
    """Breaking out of the loop stops every worker and closes every fd the pass opened."""
    baseline = _fd_count()
    it = iter(_loader(_Data()))
    next(it)
    pids = [p.pid for p in it._pool.procs]  # type: ignore[attr-defined]
    del it
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)
    assert _fd_count() == baseline


def test_zero_copy_batch_too_big_for_ring_names_ring_size() -> None:
    """With zero_copy a batch is one record: one larger than half the ring raises WorkerError
    naming ring_size."""
    loader = _loader(_Data(n=8, nbytes=64 * 1024), ring_size=64 * 1024, zero_copy=True)
    with pytest.raises(WorkerError, match="ring_size"):
        list(loader)


def test_copying_pass_streams_batches_far_larger_than_the_ring() -> None:
    """The copying default streams a batch through the ring in chunks: 256 KiB batches cross
    16 KiB rings intact and in order."""
    loader = _loader(_Data(n=16, nbytes=64 * 1024), ring_size=16 * 1024)
    batches = list(loader)
    assert [b.shape for b in batches] == [(4, 64 * 1024)] * 4
    assert [int(b[0, 0]) for b in batches] == [0, 4, 8, 12]
    assert all(bool((b[:, -1] == b[:, 0]).all()) for b in batches)


_TRAINER = textwrap.dedent(
    """
    import sys, numpy as np
    from torch.utils.data import Dataset
    from streamload.loader.loader import StreamLoader

    class D(Dataset):
        def __len__(self): return 10**6
        def __getitem__(self, i): return np.zeros(4)

    if __name__ == "__main__":
        loader = StreamLoader(D(), batch_size=2, num_workers=2, multiprocessing_context=sys.argv[1])
        it = iter(loader)
        next(it)
        print(" ".join(str(p.pid) for p in it._pool.procs), flush=True)
        sys.stdin.read()
    """
)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_sigkilled_trainer_takes_its_workers_along(method: str, tmp_path: Any) -> None:
    """When the trainer is SIGKILLed its workers exit within a few seconds."""
    script = tmp_path / "trainer.py"
    script.write_text(_TRAINER)
    with subprocess.Popen(
        [sys.executable, str(script), method],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as trainer:
        assert trainer.stdout is not None
        pids = [int(p) for p in trainer.stdout.readline().split()]
        assert len(pids) == 2
        trainer.kill()
        trainer.wait()
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(p) for p in pids)
