"""The process heap: let glibc malloc keep freed memory for the next batch instead of faulting.

Loading allocates and frees about one batch of memory per batch: a worker builds columns, the
trainer copies each batch out of the ring (and a 64 KiB bytes item is one malloc). With glibc's
defaults a process hands the freed top of its heap back to the kernel as soon as more than
128 KiB is free, and takes page faults to get it back for the next batch: measured 160,000
faults and 390 ms per 39 batches of 256 x 64 KiB items, against 21 ms when freed memory is kept.
glibc raises its thresholds by itself only after freeing a large mmapped block, which fresh
workers (new every epoch without persistent_workers) never get to.

``retain_freed(n)`` sets the trim threshold to ``n`` bytes (at most ``n`` of idle heap is kept per
arena) and the mmap threshold to glibc's own dynamic ceiling (32 MiB), so batch-sized blocks are
reused rather than mapped and unmapped every time. It is applied in every worker and, when a
multi-worker pass starts, in the trainer (config ``heap_retain``; 0 leaves malloc alone). Not
glibc (musl, macOS): a no-op.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 << 20

_applied: int | None = None


def retain_freed(nbytes: int) -> bool:
    """Keep up to ``nbytes`` of freed heap for reuse (0: leave malloc's defaults).

    Returns:
        True if the setting is in effect in this process.
    """
    global _applied
    if nbytes <= 0:
        return False
    if _applied == nbytes:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_TRIM_THRESHOLD, int(nbytes)))
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, min(_MMAP_THRESHOLD_BYTES, int(nbytes)))) and ok
    except (OSError, AttributeError):
        return False
    if ok:
        _applied = nbytes
    return ok
