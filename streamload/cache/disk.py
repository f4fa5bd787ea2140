"""DiskCache: a byte-limited directory of verified shard copies, shared by every process on a node.

``<cache_dir>/.lock`` is the admission lock (flock, held for milliseconds); one directory per
dataset URL holds its shards, their single-flight locks and downloads in progress
(`streamload.cache_layout`); `streamload.eviction` chooses what to evict; `streamload.file_locks`
has the locks and `Pin`.

Invariants, all from flock(2) locks (released by the kernel when a holder dies, so a SIGKILLed
process leaves nothing that blocks the others):

- **Single flight**: only the holder of a shard's ``.lock`` (LOCK_EX) downloads it; others wait
  for the lock (with a stall time-out: the temp file must keep growing) and then find the file.
- **No torn reads**: bytes land in the temp file, are checked against index.json (size and
  checksum; a mismatch is fetched once more, then `FormatError`), then renamed into place. A
  reader only ever opens a published name.
- **Pins**: a reader holds ``flock(LOCK_SH)`` on an fd of the published file for as long as it
  uses it (`Pin`); the evictor takes ``LOCK_EX | LOCK_NB`` and skips the file if that fails. A pin
  re-checks after locking that the path still names its inode (the evictor may have unlinked it).
- **Byte limit**: admission (scan, evict, create the temp file at its full size) happens under
  the cache-wide ``.lock``, and usage is always measured from the directory itself: published
  files, live temp files at their expected size, and every small file the cache writes beside
  them (plan files, index.json copies, ``SOURCE``; index copies are admitted like shards,
  `keep_small`). What a dead process left (a temp file whose shard lock is free, a plan file
  whose lock is free) is deleted by the scan, which also runs when a process opens the cache.
  So the cache never exceeds ``cache_limit``; a SIGKILL mid-download costs nothing but the
  partial file, gone when the next process starts.
- **Working sets** (`join`): each reading process publishes how many bytes it may pin at once;
  one whose working set does not fit beside the live processes' is refused at its first read
  with the sizes, instead of all of them waiting for room the others hold.
- **Eviction order** (`eviction_order`, pure): files nobody needs first, least recently used
  (mtime, set on every pin) first; then files whose next use is furthest away (Belady), using
  the plans every reading process publishes; a file another live process still needs is evicted
  only after waiting ``others_wait`` for it to move on. Pinned files are never evicted; when the
  limit cannot be met the caller waits (bounded) for pins to go, then gets `CacheError`.

Disk full (ENOSPC) or an unwritable directory raise `CacheError` naming the directory; the temp
file is removed first, so nothing partial is ever visible and the next run works.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO

from streamload import telemetry
from streamload.cache.eviction import CacheEntry, PlanBoard, eviction_order
from streamload.cache.layout import (
    SIZE_ONLY,
    ShardKey,
    dataset_dirs,
    make_dataset_dir,
    scan,
    temps_of,
)
from streamload.cache.locks import (
    Pin,
    close_fd,
    flock_wait,
    open_fd,
    same_inode,
    try_flock,
)
from streamload.errors import CacheError, FormatError
from streamload.format.checksum import new_hasher
from streamload.sizes import format_size

log = logging.getLogger(__name__)

OTHERS_WAIT_S = 5.0  # wait this long for other processes to pass a shard before evicting it
STALL_TIMEOUT_S = 120.0  # a download whose temp file does not grow for this long is abandoned
ROOM_TIMEOUT_S = 120.0  # how long to wait for pins to go when the limit cannot be met
_LOCK_TIMEOUT_S = 60.0  # the admission lock and pin locks are held for milliseconds
_WARN_AFTER_S = 10.0  # a wait for room this long is logged (processes may be starving)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_HASH_CHUNK = 4 * 2**20

# Published files whose checksum this process (or its fork parent) has checked: (path, inode,
# size). Only this cache writes these names, and every file it writes was verified; the check on
# first use per process catches what happened on disk since (bit rot, a hand edit, a crash).
_VERIFIED: set[tuple[str, int, int]] = set()

Fetch = Callable[[IO[bytes]], None]


class ShardBusy(CacheError):
    """``pin(nowait=True)``: another thread or process is downloading that shard right now."""


class DiskCache:
    """A shard cache directory with a byte limit (see the module docstring)."""

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        cache_limit: int,
        *,
        verify: bool = True,
        stall_timeout: float = STALL_TIMEOUT_S,
        room_timeout: float = ROOM_TIMEOUT_S,
        others_wait: float = OTHERS_WAIT_S,
    ) -> None:
        """Open (create) a cache directory.

        Args:
            cache_dir: the directory (created if missing); shared by every process on the node.
            cache_limit: the most bytes of shard files it may hold.
            verify: hash a cached shard on its first use in each process (a size check is
                always made); False is the cheap mode that trusts files this cache published.
            stall_timeout: seconds a waiter lets another process's download go without growth.
            room_timeout: seconds to wait for pinned shards to be released when the limit is met.
            others_wait: seconds to wait for other processes to read a shard they announced
                before evicting it anyway (which costs them a second download).

        Raises:
            CacheError: the directory cannot be created or written.
        """
        self.cache_dir = os.path.abspath(os.fspath(cache_dir))
        self.cache_limit = int(cache_limit)
        self.verify = verify
        self.stall_timeout = stall_timeout
        self.room_timeout = room_timeout
        self.others_wait = others_wait
        self._board = PlanBoard()
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd = os.open(os.path.join(self.cache_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            os.close(fd)
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.cache_dir!r} is not writable: {exc.strerror or exc}"
            ) from exc
        with self._admission():  # what dead processes left goes now, not at the next download
            scan(self.cache_dir)

    def __repr__(self) -> str:
        return f"DiskCache({self.cache_dir!r}, cache_limit={self.cache_limit})"

    # -- the one entry point -------------------------------------------------------------------

    def pin(
        self,
        key: ShardKey,
        fetch: Fetch,
        *,
        next_use: Callable[[], Mapping[str, int]] | None = None,
        room_timeout: float | None = None,
        protect: int | None = None,
        nowait: bool = False,
    ) -> Pin:
        """A pinned, verified local copy of one shard, downloading it if it is not cached.

        Args:
            key: the shard.
            fetch: writes the shard's bytes into the given binary file (it may retry; it must
                not close the file). Called at most twice per download (once more on mismatch).
            next_use: gives ``path -> distance`` of cached files this process needs soon (for
                Belady eviction); files not in it are evicted first, least recently used first.
            room_timeout: override of how long to wait for pinned files to go when full.
            protect: never evict files whose next use is at most this far away (read-ahead of
                a shard needed at distance d must not evict one needed sooner).
            nowait: read-ahead mode: never wait for room, and raise `ShardBusy` at once if
                another thread or process is downloading this shard (fetch the next one).

        Returns:
            A `Pin`; ``pin.path`` is a complete, verified file until ``pin.close()``.

        Raises:
            FormatError: the downloaded bytes do not match index.json twice in a row.
            CacheError: cache_limit cannot make room even after waiting, disk full, unwritable
                directory, or another process's download of this shard stalled.
            StoreError: (from ``fetch``) the download failed.
        """
        if key.bytes > self.cache_limit:
            raise CacheError(
                f"cache_limit = {format_size(self.cache_limit)} cannot hold shard {key.name} of"
                f" {key.url} ({format_size(key.bytes)}); raise cache_limit"
            )
        directory = self._dataset_dir(key.url)
        path = os.path.join(directory, key.file_name)
        for _ in range(3):  # a corrupt cached copy is dropped and fetched again, at most twice
            pin = self._try_pin(path)
            telemetry.CACHE.add("hits" if pin is not None else "misses")
            if pin is None:
                if nowait:
                    room_timeout = 0
                pin = self._fetch_single_flight(
                    key, path, fetch, next_use, room_timeout, protect, nowait
                )
            if self._intact(pin, key):
                return pin
            log.warning("cached shard %s is corrupt: discarding and fetching again", pin.path)
            pin.close()
            self._discard(path)
        raise CacheError(f"shard {key.name} of {key.url}: cached copy keeps failing verification")

    # -- plans shared between processes ---------------------------------------------------------

    def announce(self, url: str, upcoming: list[str] | None, position: int) -> None:
        """Publish which shards this process will open, so other processes' evictions spare them.

        Args:
            url: the dataset URL.
            upcoming: the cache file names (`ShardKey.file_name`) of this process's plan for the
                current epoch, or None to keep the last one published (only the position moved).
            position: index in that plan of the shard being read now.
        """
        directory = self._dataset_dir(url)
        with self._admission():  # readers of plan files hold it too: no torn reads
            self._board.announce(directory, upcoming, position)

    def withdraw(self) -> None:
        """Remove this process's plan files (the process stops reading)."""
        self._board.withdraw()

    def join(self, url: str, reserve: int, what: str, plan_bytes: int = 0) -> None:
        """Start reading through the cache: publish that this process may pin up to
        ``reserve`` bytes at once, after checking that it fits beside every live process already
        reading through this cache directory (any dataset) and the small files the cache keeps.

        Processes that do not know of each other (separate jobs, ranks without
        ``LOCAL_WORLD_SIZE``) would otherwise each wait for room the others hold, then fail; so
        the one that does not fit fails now, with the sizes, before downloading anything.

        Args:
            url: the dataset URL.
            reserve: bytes this process may pin (open shards + read-ahead, plus its plan file).
            what: how ``reserve`` was computed, for the message.
            plan_bytes: the size of this process's plan file (part of ``reserve``; it is
                written at that size now, so what it takes never grows past its admission).

        Raises:
            CacheError: the live processes' reserves plus this one exceed ``cache_limit``.
        """
        directory = self._dataset_dir(url)
        with self._admission():
            entries = scan(self.cache_dir)  # also deletes what dead processes left
            small = sum(e.bytes for e in entries if e.fixed and "/.plan." not in e.path)
            others = self._board.others_reserves(dataset_dirs(self.cache_dir))
            total = reserve + sum(others.values()) + small
            if others and total > self.cache_limit:
                shown = ", ".join(
                    f"pid {pid}: {format_size(n)}" for pid, n in sorted(others.items())[:8]
                )
                raise CacheError(
                    f"cache_limit = {format_size(self.cache_limit)} in {self.cache_dir} cannot"
                    f" hold the working sets of every process reading through it: this process"
                    f" (pid {os.getpid()}) may pin {format_size(reserve)} ({what}), {len(others)}"
                    f" other process(es) already reserved {format_size(sum(others.values()))}"
                    f" ({shown}), index copies and plans take {format_size(small)}: together"
                    f" {format_size(total)}. Raise cache_limit to at least {format_size(total)},"
                    " read with fewer processes, or give each job its own cache_dir"
                )
            # The plan file is admitted like a shard: unpinned shards nobody needs make room
            # (they can: what is pinned lies within the other processes' reserves).
            if not self._make_room(entries, plan_bytes):
                raise CacheError(
                    f"cache_limit = {format_size(self.cache_limit)} in {self.cache_dir}: no room"
                    f" for this process's {format_size(plan_bytes)} plan file; raise cache_limit"
                )
            self._board.announce(directory, [], 0, reserve=reserve, size=plan_bytes or None)

    def keep_small(self, url: str, files: Mapping[str, bytes]) -> bool:
        """Store small files (an index.json copy) in the dataset's directory within
        ``cache_limit``: unpinned shards nobody needs are evicted first if they must be.

        Returns:
            False (nothing written) when even that leaves no room, or the disk refuses.
        """
        try:
            directory = self._dataset_dir(url)
        except CacheError:
            return False
        need = sum(len(data) for data in files.values())
        with self._admission():
            replaced = {os.path.join(directory, name) for name in files}
            entries = [e for e in scan(self.cache_dir) if e.path not in replaced]
            if not self._make_room(entries, need):
                return False
            try:
                for name, data in files.items():
                    path = os.path.join(directory, name)
                    tmp = f"{path}.{os.getpid()}.tmp"
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, path)
            except OSError:
                for name in files:  # half a copy must not stay: the next reader trusts it
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(directory, name))
                return False
        return True

    def _make_room(self, entries: list[CacheEntry], need: int) -> bool:
        """Evict unpinned shards nobody needs soon until ``need`` more bytes fit (caller holds
        the admission lock; ``entries`` is its scan). False if they still do not fit."""
        used = sum(e.bytes for e in entries)
        candidates = [e for e in entries if not (e.temp or e.fixed)]
        plans = self._board.others_next_use(dataset_dirs(self.cache_dir))
        now, later = eviction_order(candidates, {}, [needs for needs, _ in plans])
        for entry in now + later:
            if used + need <= self.cache_limit:
                break
            if self._evict(entry):
                used -= entry.bytes
        return used + need <= self.cache_limit

    # -- inspection (CLI) ----------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every shard file and live download in the cache (stale temp files are removed)."""
        with self._admission():
            return scan(self.cache_dir)

    def usage(self) -> int:
        """Bytes the cache holds now (published files plus downloads in progress)."""
        return sum(e.bytes for e in self.entries())

    def datasets(self) -> dict[str, str]:
        """Per-dataset directory -> dataset URL."""
        out = {}
        for entry in dataset_dirs(self.cache_dir):
            try:
                with open(os.path.join(entry.path, "SOURCE"), encoding="utf-8") as f:
                    out[entry.path] = f.read().strip()
            except OSError:
                out[entry.path] = "?"
        return out

    def clear(self) -> tuple[int, int]:
        """Delete every unpinned shard (pinned ones and live downloads stay).

        Returns:
            ``(files deleted, bytes freed)``.
        """
        removed = freed = 0
        with self._admission():
            for entry in scan(self.cache_dir):
                if not (entry.temp or entry.fixed) and self._evict(entry):
                    removed += 1
                    freed += entry.bytes
        return removed, freed

    def check_working_set(self, shard_bytes: int, pins: int, what: str) -> None:
        """Refuse a configuration whose pinned shards alone would not fit.

        Args:
            shard_bytes: size of the largest shard.
            pins: shards that may be pinned at once on this node (readers plus read-ahead, for
                every worker of every local rank).
            what: how ``pins`` was computed, for the message.

        Raises:
            CacheError: ``cache_limit < shard_bytes * pins``.
        """
        need = shard_bytes * pins
        if need > self.cache_limit:
            raise CacheError(
                f"cache_limit = {format_size(self.cache_limit)} ({self.cache_limit} B) cannot hold"
                f" the working set: {pins} shards pinned at once ({what}) x largest shard"
                f" {format_size(shard_bytes)} = {format_size(need)}; raise cache_limit or lower"
                " readahead_shards / num_workers"
            )

    # -- pins ----------------------------------------------------------------------------------

    def _try_pin(self, path: str) -> Pin | None:
        try:
            fd = open_fd(path)
        except FileNotFoundError:
            return None
        try:
            # The evictor holds LOCK_EX only while it unlinks, so this wait is short.
            flock_wait(fd, fcntl.LOCK_SH, _LOCK_TIMEOUT_S, path)
            if not same_inode(fd, path):  # evicted between our open and our lock
                close_fd(fd)
                return None
            with contextlib.suppress(OSError):
                os.utime(path)  # the LRU clock
        except BaseException:
            close_fd(fd)
            raise
        return Pin(fd, path)

    def _intact(self, pin: Pin, key: ShardKey) -> bool:
        st = os.stat(pin.path)
        if st.st_size != key.bytes:
            return False
        if not self.verify or key.algorithm == SIZE_ONLY:
            return True
        mark = (pin.path, st.st_ino, st.st_size)
        if mark in _VERIFIED:
            return True
        if _digest(pin.path, key.algorithm) != key.checksum:
            return False
        _VERIFIED.add(mark)
        return True

    def _discard(self, path: str) -> None:
        with self._admission(), contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    # -- downloads -----------------------------------------------------------------------------

    def _fetch_single_flight(
        self,
        key: ShardKey,
        path: str,
        fetch: Fetch,
        next_use: Callable[[], Mapping[str, int]] | None,
        room_timeout: float | None,
        protect: int | None,
        nowait: bool,
    ) -> Pin:
        lock_fd = self._open_lock(path + ".lock")
        try:
            if nowait:
                if not try_flock(lock_fd, fcntl.LOCK_EX):
                    raise ShardBusy(f"shard {key.name} of {key.url} is being downloaded")
            else:
                self._wait_for_download_lock(lock_fd, path, key)
            pin = self._try_pin(path)  # someone published it while we waited
            if pin is not None:
                return pin
            self._download(key, path, fetch, next_use, room_timeout, protect)
            telemetry.CACHE.add("bytes_downloaded", key.bytes)
            pin = self._try_pin(path)
            if pin is None:  # only possible if someone deleted it by hand this instant
                raise CacheError(f"cached shard {path} vanished right after download")
            return pin
        finally:
            close_fd(lock_fd)  # releases the single-flight lock

    def _wait_for_download_lock(self, lock_fd: int, path: str, key: ShardKey) -> None:
        """Block until we hold the shard lock; give up if the holder's download stops growing."""
        progress, last_change, delay = -1, time.monotonic(), 0.001
        while not try_flock(lock_fd, fcntl.LOCK_EX):
            written = sum(size for _, size in temps_of(path))
            if written != progress:
                progress, last_change = written, time.monotonic()
            elif time.monotonic() - last_change > self.stall_timeout:
                holders = ", ".join(str(pid) for pid, _ in temps_of(path)) or "unknown"
                raise CacheError(
                    f"shard {key.name} of {key.url}: the download by pid {holders} into"
                    f" {os.path.dirname(path)} made no progress for {self.stall_timeout:.0f} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.01)  # the waiter's latency once the file is published

    def _download(
        self,
        key: ShardKey,
        path: str,
        fetch: Fetch,
        next_use: Callable[[], Mapping[str, int]] | None,
        room_timeout: float | None,
        protect: int | None,
    ) -> None:
        """Fetch into a temp file, verify, publish. Caller holds the shard lock."""
        for stale, _ in temps_of(path, paths=True):  # we hold the lock: any temp is stale
            with contextlib.suppress(FileNotFoundError):
                os.unlink(stale)
        tmp = f"{path}.tmp.{os.getpid()}.{key.bytes}"
        self._admit(key, tmp, next_use, room_timeout, protect)
        try:
            for attempt in (1, 2):
                with open(tmp, "r+b") as f:  # keeps the reserved blocks; truncated after
                    fetch(f)
                    f.truncate()
                size = os.path.getsize(tmp)
                if key.algorithm == SIZE_ONLY:  # nothing to hash against: the size must do
                    actual = key.checksum if size == key.bytes else None
                else:
                    actual = _digest(tmp, key.algorithm) if size == key.bytes else None
                if actual == key.checksum:
                    break
                got = f"{size} bytes" if actual is None else f"{key.algorithm} {actual}"
                log.warning("shard %s of %s: download %d got %s", key.name, key.url, attempt, got)
            else:
                raise FormatError(
                    f"shard {key.name} of {key.url}: downloaded twice and neither copy matches"
                    f" index.json ({key.bytes} bytes, {key.algorithm} {key.checksum}); last copy"
                    f" had {got}"
                )
            st = os.stat(tmp)
            _VERIFIED.add((path, st.st_ino, st.st_size))
            with self._admission():
                os.rename(tmp, path)  # atomic publish
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if exc.errno in _FULL:
                raise self._full_error(key, exc) from exc
            raise
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _admit(
        self,
        key: ShardKey,
        tmp: str,
        next_use: Callable[[], Mapping[str, int]] | None,
        room_timeout: float | None,
        protect: int | None,
    ) -> None:
        """Make room for ``key.bytes`` and create ``tmp`` at full size, or raise CacheError."""
        timeout = self.room_timeout if room_timeout is None else room_timeout
        try:
            self._admit_or_wait(key, tmp, next_use, timeout, protect)
        finally:
            if self._board.waiting:
                with self._admission():
                    self._board.set_waiting(False)

    def _admit_or_wait(
        self,
        key: ShardKey,
        tmp: str,
        next_use: Callable[[], Mapping[str, int]] | None,
        timeout: float,
        protect: int | None,
    ) -> None:
        start = time.monotonic()
        delay = 0.005
        retried_full = warned = False
        while True:
            waited = time.monotonic() - start
            own = dict(next_use()) if next_use is not None else {}
            with self._admission():
                entries = scan(self.cache_dir)
                used = sum(e.bytes for e in entries)
                fixed = sum(e.bytes for e in entries if e.fixed)
                if fixed + key.bytes > self.cache_limit:  # no eviction or wait can help
                    raise CacheError(
                        f"cache_limit = {format_size(self.cache_limit)} cannot hold shard"
                        f" {key.name} of {key.url} ({format_size(key.bytes)}) beside the"
                        f" {format_size(fixed)} of plan files and index copies in"
                        f" {self.cache_dir}; raise cache_limit"
                    )
                candidates = [
                    e
                    for e in entries
                    if not (e.temp or e.fixed)
                    and (protect is None or own.get(e.path, protect + 1) > protect)
                ]
                plans = self._board.others_next_use(dataset_dirs(self.cache_dir))
                others = [needs for needs, _ in plans]
                moving = [needs for needs, waiting in plans if not waiting]
                target = tmp[: tmp.rindex(".tmp.")]  # the published path being made room for
                now, later = eviction_order(candidates, own, others, target, moving)
                if timeout > 0 and waited >= min(self.others_wait, timeout):
                    now += later  # the others are not moving: a second download beats a stall
                for entry in now:
                    if used + key.bytes <= self.cache_limit:
                        break
                    if self._evict(entry):
                        used -= entry.bytes
                if used + key.bytes <= self.cache_limit:
                    try:
                        _create_full_size(tmp, key.bytes)
                        return
                    except OSError as exc:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                        if exc.errno not in _FULL:
                            raise CacheError(
                                f"cache_dir {self.cache_dir!r}: cannot create {tmp}: {exc}"
                            ) from exc
                        if retried_full:
                            raise self._full_error(key, exc) from exc
                        # The disk is fuller than cache_limit assumed: free what we can, once.
                        retried_full = True
                        for entry in now + later:
                            self._evict(entry)
                        continue
                if timeout > 0:  # others must not wait for us to move on: we are stuck too
                    self._board.set_waiting(True)
                if not warned and waited >= _WARN_AFTER_S:  # a long wait is never silent
                    warned = True
                    log.warning(
                        "waiting for room for shard %s of %s in %s (cache_limit %s): %s is"
                        " pinned or being downloaded by running processes; giving up after %.0f s",
                        key.name,
                        key.url,
                        self.cache_dir,
                        format_size(self.cache_limit),
                        format_size(used),
                        timeout,
                    )
            if waited >= timeout:
                raise CacheError(
                    f"cache_limit = {format_size(self.cache_limit)}: cannot make room for shard"
                    f" {key.name} of {key.url} ({format_size(key.bytes)}) in {self.cache_dir}:"
                    f" {format_size(used)} is pinned or being downloaded by running processes"
                    f" (waited {timeout:.0f} s); raise cache_limit or lower readahead_shards"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _full_error(self, key: ShardKey, exc: OSError) -> CacheError:
        try:
            free = os.statvfs(self.cache_dir)
            free_bytes = free.f_bavail * free.f_frsize
        except OSError:
            free_bytes = -1
        return CacheError(
            f"cache_dir {self.cache_dir!r} is full ({exc.strerror}): shard {key.name} of"
            f" {key.url} needs {format_size(key.bytes)}, {format_size(max(free_bytes, 0))} free;"
            f" cache_limit = {format_size(self.cache_limit)} exceeds the disk's free space"
        )

    # -- scan and eviction (caller holds the admission lock) ------------------------------------

    def _evict(self, entry: CacheEntry) -> bool:
        """Delete one published file unless someone pins it; True if deleted."""
        try:
            fd = open_fd(entry.path)
        except FileNotFoundError:
            return True
        try:
            if not try_flock(fd, fcntl.LOCK_EX):
                return False  # pinned by a reader or a read-ahead
            if not same_inode(fd, entry.path):
                return True
            os.unlink(entry.path)
            telemetry.CACHE.add("evictions")
            log.debug("evicted %s (%d bytes)", entry.path, entry.bytes)
            return True
        finally:
            close_fd(fd)

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        path = os.path.join(self.cache_dir, ".lock")
        fd = self._open_lock(path)
        try:
            flock_wait(fd, fcntl.LOCK_EX, _LOCK_TIMEOUT_S, path)
            yield
        finally:
            close_fd(fd)

    def _open_lock(self, path: str) -> int:
        try:
            return open_fd(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise CacheError(f"cache_dir {self.cache_dir!r} is not writable: {exc}") from exc

    def _dataset_dir(self, url: str) -> str:
        try:
            return make_dataset_dir(self.cache_dir, url)
        except OSError as exc:
            raise CacheError(f"cache_dir {self.cache_dir!r} is not writable: {exc}") from exc


def _create_full_size(path: str, size: int) -> None:
    """Create ``path`` with ``size`` bytes reserved, so a full disk fails before any download."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
    finally:
        os.close(fd)


def _digest(path: str, algorithm: str) -> str:
    hasher = new_hasher(algorithm)
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            hasher.update(view[:n])
    return hasher.hexdigest()
