"""The process heap: reuse freed batch memory instead of page-faulting it back every batch.

Loading allocates and frees about one batch of memory per batch: a worker builds columns, the
trainer copies each batch out of the ring (a 64 KiB bytes item is one malloc). With glibc's
defaults a process hands the freed top of its heap back to the kernel as soon as more than
128 KiB is free, and takes page faults to get it back for the next batch: measured 2,000 faults
per 16 MiB batch of 256 x 64 KiB items (~10 ms), against ~150 when freed memory is kept.

Two processes, two policies (config ``heap_retain``, default 64 MiB; 0 leaves malloc alone):

* **Workers** are streamload's own processes: ``retain_freed(n)`` sets glibc's trim threshold
  to ``n`` (at most ``n`` of idle heap kept per arena) and the mmap threshold to its dynamic
  ceiling (32 MiB), so batch-sized blocks are reused rather than mapped and unmapped each time.
* **The trainer** is the user's process: streamload never calls ``mallopt`` there. glibc
  already slides both thresholds up by itself whenever the program frees a large mmapped block
  (any batch-sized numpy array does it); ``prime(n)`` frees one block of ``n / 2`` bytes so
  that sliding policy starts where the first batch would have taken it (mmap threshold ``n /
  2``, trim threshold ``n``, glibc's ceiling 32 / 64 MiB), and it stays glibc's policy: it keeps
  adapting, and a user who set malloc options (``mallopt``, ``MALLOC_*_`` variables) switched
  the sliding off, so priming changes nothing for them. ``release()`` hands the kept memory
  back (``malloc_trim``) when a multi-worker pass ends and before workers are forked, so idle
  trainers and new workers do not carry it. ``report()`` says what was done (``loader.stats()
  ["heap"]``).

Not glibc (musl, macOS): every function is a no-op that reports so.
"""

from __future__ import annotations

import ctypes
from typing import Any

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20

_retained: int | None = None  # retain_freed applied in this process (workers)
_primed = 0  # bytes this process's sliding thresholds were primed with (trainer)
_releases = 0
_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt  # noqa: B018  (glibc only)
            libc.malloc_trim  # noqa: B018
            libc.malloc.restype = ctypes.c_void_p
            libc.malloc.argtypes = [ctypes.c_size_t]
            libc.free.argtypes = [ctypes.c_void_p]
            libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc = libc
        except (OSError, AttributeError):
            _libc = False
    return _libc


def retain_freed(nbytes: int) -> bool:
    """Keep up to ``nbytes`` of freed heap for reuse (0: leave malloc's defaults). For
    streamload's worker processes only: it fixes malloc settings for the whole process.

    Returns:
        True if the setting is in effect in this process.
    """
    global _retained
    if nbytes <= 0:
        return False
    if _retained == nbytes:
        return True
    libc = _glibc()
    if not libc:
        return False
    ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, int(nbytes)))
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, min(_MMAP_THRESHOLD_BYTES, int(nbytes)))) and ok
    if ok:
        _retained = nbytes
    return ok


def prime(nbytes: int) -> bool:
    """Start glibc's own sliding thresholds at keeping ``nbytes`` of freed heap (the trainer).

    Frees one mmapped block of ``nbytes / 2`` (below glibc's 32 MiB ceiling), which is what
    freeing one batch-sized array does in any program. Once per process and size.

    Returns:
        True if the priming block was freed (whether glibc moved its thresholds is its call).
    """
    global _primed
    if nbytes <= 0:
        return False
    # glibc slides only for blocks up to its 32 MiB ceiling, chunk header and page rounding
    # included: stay a little below it.
    block = min(int(nbytes) // 2, _MMAP_THRESHOLD_BYTES - (1 << 20))
    if block <= _primed:
        return True
    libc = _glibc()
    if not libc:
        return False
    ptr = libc.malloc(block)
    if not ptr:
        return False
    libc.free(ptr)
    _primed = block
    return True


def release() -> None:
    """Hand freed heap back to the system now (glibc ``malloc_trim(0)``)."""
    global _releases
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
        _releases += 1


def report() -> dict[str, Any]:
    """What streamload did to this process's heap: ``glibc`` (whether any of it applies),
    ``retain_bytes`` (``retain_freed``: workers), ``primed_bytes`` (``prime``: the block freed
    to start glibc's sliding thresholds; 0 = untouched), ``releases`` (``malloc_trim`` calls)."""
    return {
        "glibc": bool(_glibc()),
        "retain_bytes": _retained or 0,
        "primed_bytes": _primed,
        "releases": _releases,
    }
