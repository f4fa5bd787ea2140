"""flock(2) locks for the disk cache: held by one process, gone when it dies, never inherited.

The cache coordinates processes with ``flock`` locks on files because the kernel releases them
when the holder dies (a SIGKILLed worker leaves no lock behind) — no lock files to clean, no
pids to trust. Two details make that hold:

- A flock belongs to an *open file description*, which ``fork`` shares with the child: a child
  that kept an inherited descriptor would keep its parent's lock alive after the parent let go
  (for ever, if the child never touches that code again). Every descriptor opened here is
  registered, and the child closes all of them right after ``fork``; a `Pin` made by another
  process is dead in this one (closing it is a no-op, so a reused fd number is never closed).
- Every wait is bounded: `flock_wait` polls with ``LOCK_NB`` and raises `CacheError` after its
  time-out, so a stopped (SIGSTOP) holder cannot hang anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time

from streamload.errors import CacheError

_held: set[int] = set()  # descriptors opened here and not closed yet (this process)
_held_lock = threading.Lock()


def open_fd(path: str, flags: int = os.O_RDONLY) -> int:
    """``os.open`` that registers the descriptor (closed in a forked child)."""
    fd = os.open(path, flags, 0o644)
    with _held_lock:
        _held.add(fd)
    return fd


def close_fd(fd: int) -> None:
    """Close a descriptor from `open_fd` (releases any flock it holds)."""
    with _held_lock:
        _held.discard(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


def try_flock(fd: int, op: int) -> bool:
    """One non-blocking attempt: True if locked."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def flock_wait(fd: int, op: int, timeout: float, path: str) -> None:
    """Lock ``fd`` (``LOCK_SH`` or ``LOCK_EX``), waiting at most ``timeout`` seconds.

    Raises:
        CacheError: still held by another process after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while not try_flock(fd, op):
        if time.monotonic() >= deadline:
            raise CacheError(f"cache lock {path} held by another process for over {timeout:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def lock_is_free(path: str) -> bool:
    """True if nobody holds a lock on ``path`` (or it does not exist)."""
    try:
        fd = open_fd(path)
    except FileNotFoundError:
        return True
    try:
        return try_flock(fd, fcntl.LOCK_EX)
    finally:
        close_fd(fd)  # also drops the probe's lock


def same_inode(fd: int, path: str) -> bool:
    """True if ``path`` still names the file ``fd`` has open (it was not unlinked or replaced)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


class Pin:
    """A shared lock on one published cache file: while it is held the file is never evicted.

    ``path`` stays valid (its bytes unchanged) until `close`. A pin belongs to the process that
    made it: in a forked child it is already closed (see the module docstring).
    """

    def __init__(self, fd: int, path: str) -> None:
        self.path = path
        self._fd: int | None = fd
        self._pid = os.getpid()

    def close(self) -> None:
        """Release the pin (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None and self._pid == os.getpid():
            close_fd(fd)

    @property
    def closed(self) -> bool:
        """True once released (always, in a process other than the one that made it)."""
        return self._fd is None or self._pid != os.getpid()

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Pin({self.path!r}, closed={self.closed})"


def _close_inherited() -> None:
    global _held_lock
    _held_lock = threading.Lock()  # another thread may have held it at fork time
    for fd in _held:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_inherited)
