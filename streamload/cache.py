"""DiskCache: a byte-limited directory of verified shard copies, shared by every process on a node.

Layout (one directory per dataset URL, so two datasets never collide)::

    <cache_dir>/.lock                                  admission lock (flock, held for milliseconds)
    <cache_dir>/<url slug>-<xxh3(url)>/SOURCE          the dataset URL (for ``streamload cache ls``)
    <cache_dir>/<...>/<checksum>-<shard name>          a published, verified shard
    <cache_dir>/<...>/<checksum>-<shard name>.lock     single-flight lock of that shard (empty)
    <cache_dir>/<...>/<checksum>-<shard name>.tmp.<pid>.<bytes>   a download in progress

The cache key is (dataset URL, shard name, checksum): a dataset rewritten in place gets new
checksums, hence new file names, and never serves stale bytes.

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
  files plus live temp files at their expected size. A temp file whose shard lock is free belongs
  to a dead process and is deleted by the scan. So the cache never exceeds ``cache_limit``; a
  SIGKILL mid-download costs nothing but the partial file, which the next scan removes.
- **Eviction order**: `eviction_order` (pure): files with no known next use first, oldest use
  (mtime, set on every pin) first; then files whose next use is furthest away (Belady).
  Pinned files are never evicted; when the limit cannot be met the caller waits (bounded) for
  pins to go, then gets `CacheError`.

Disk full (ENOSPC) or an unwritable directory raise `CacheError` naming the directory; the temp
file is removed first, so nothing partial is ever visible and the next run works.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import xxhash

from streamload.checksum import new_hasher
from streamload.errors import CacheError, FormatError
from streamload.file_locks import (
    Pin,
    close_fd,
    flock_wait,
    lock_is_free,
    open_fd,
    same_inode,
    try_flock,
)
from streamload.sizes import format_size

log = logging.getLogger(__name__)

OTHERS_WAIT_S = 5.0  # wait this long for other processes to pass a shard before evicting it
PLAN_HORIZON = 4096  # plan positions of other processes that eviction looks at
STALL_TIMEOUT_S = 120.0  # a download whose temp file does not grow for this long is abandoned
ROOM_TIMEOUT_S = 120.0  # how long to wait for pins to go when the limit cannot be met
_LOCK_TIMEOUT_S = 60.0  # the admission lock and pin locks are held for milliseconds
_OURS_RE = re.compile(r"^[0-9a-f]{16}-")  # published and temp shard files: <checksum>-<name>
_TMP_RE = re.compile(r"^(?P<file>.+)\.tmp\.(?P<pid>\d+)\.(?P<bytes>\d+)$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
_HASH_CHUNK = 4 * 2**20

# Published files whose checksum this process (or its fork parent) has checked: (path, inode,
# size). Only this cache writes these names, and every file it writes was verified; the check on
# first use per process catches what happened on disk since (bit rot, a hand edit, a crash).
_VERIFIED: set[tuple[str, int, int]] = set()

Fetch = Callable[[IO[bytes]], None]


@dataclasses.dataclass(frozen=True)
class ShardKey:
    """What identifies one shard in the cache, and what its bytes must hash to."""

    url: str  # the dataset URL
    name: str  # the shard's plain file name from index.json
    bytes: int
    algorithm: str  # "xxh3_64" or "sha256"
    checksum: str

    @property
    def file_name(self) -> str:
        """The published file's name inside the dataset's cache directory."""
        return f"{self.checksum[:16]}-{self.name}"


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One file in the cache as the scan sees it."""

    path: str
    bytes: int
    mtime: float  # last pin (LRU clock)
    temp: bool = False  # a download in progress (counted at its expected size)


def dataset_dir_name(url: str) -> str:
    """The per-dataset directory name: a readable slug of the URL plus its xxh3 (unique)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-40:].strip("_.") or "dataset"
    return f"{slug}-{xxhash.xxh3_64_hexdigest(url.encode())}"


def eviction_order(
    entries: list[CacheEntry],
    own: Mapping[str, int],
    others: Mapping[str, int] | None = None,
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Which files to evict, in order (pure; the caller skips pinned ones).

    Args:
        entries: candidate published files.
        own: path -> how many shard opens from now this process needs it (smaller = sooner).
        others: the same for the other live processes on the node (the smallest distance).

    Returns:
        ``(now, later)``. ``now``: files nobody is known to need, least recently used first,
        then files only this process needs, furthest first (Belady). ``later``: files other
        processes still need, furthest first; evicting one of them means a second download, so
        the caller first waits a little for those processes to move past them.
    """
    others = others or {}
    unknown = [e for e in entries if e.path not in own and e.path not in others]
    mine = [e for e in entries if e.path in own and e.path not in others]
    theirs = [e for e in entries if e.path in others]
    unknown.sort(key=lambda e: (e.mtime, e.path))
    mine.sort(key=lambda e: (-own[e.path], e.mtime, e.path))
    theirs.sort(key=lambda e: (-min(others[e.path], own.get(e.path, others[e.path])), e.path))
    return unknown + mine, theirs


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
        self._plans: dict[str, int] = {}  # dataset dir -> fd of this process's plan file
        self._plans_pid = os.getpid()
        self._generation = 0  # of the plan last published (in the plan file's header)
        # Other processes' plan files as last parsed: path -> ((inode, size), cache paths).
        self._parsed: dict[str, tuple[tuple[int, int], list[str]]] = {}
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
            fd = os.open(os.path.join(self.cache_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            os.close(fd)
        except OSError as exc:
            raise CacheError(
                f"cache_dir {self.cache_dir!r} is not writable: {exc.strerror or exc}"
            ) from exc

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
            if pin is None:
                pin = self._fetch_single_flight(key, path, fetch, next_use, room_timeout, protect)
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
            upcoming: the cache file names (`ShardKey.file_name`) of this process's whole plan,
                or None to keep the last one published (only the position moved).
            position: index in that plan of the shard being read now.
        """
        directory = self._dataset_dir(url)
        if self._plans_pid != os.getpid():  # forked: the parent's plan files are not ours
            self._plans, self._plans_pid = {}, os.getpid()
        fd = self._plans.get(directory)
        with self._admission():  # readers of plan files hold it too: no torn reads
            if fd is None:
                path = os.path.join(directory, f".plan.{os.getpid()}.{id(self)}")
                fd = open_fd(path, os.O_RDWR | os.O_CREAT)
                try_flock(fd, fcntl.LOCK_EX)  # held while we live: tells others we are alive
                self._plans[directory] = fd
                upcoming = upcoming if upcoming is not None else []
            if upcoming is not None:
                self._generation += 1
            header = f"{self._generation:019d} {position:019d}\n".encode()
            if upcoming is None:
                os.pwrite(fd, header, 0)
            else:
                os.ftruncate(fd, 0)
                os.pwrite(fd, header + "\n".join(upcoming).encode(), 0)

    def withdraw(self) -> None:
        """Remove this process's plan files (the process stops reading)."""
        if self._plans_pid != os.getpid():
            return
        for directory, fd in list(self._plans.items()):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, f".plan.{os.getpid()}.{id(self)}"))
            close_fd(fd)
        self._plans.clear()

    def _others_next_use(self) -> dict[str, int]:
        """Cache path -> soonest next use by any other live process (caller holds admission)."""
        out: dict[str, int] = {}
        mine = {os.path.join(d, f".plan.{os.getpid()}.{id(self)}") for d in self._plans}
        for ds in _dataset_dirs(self.cache_dir):
            for entry in _scandir(ds.path):
                if not entry.name.startswith(".plan.") or entry.path in mine:
                    continue
                if lock_is_free(entry.path):  # its process is gone
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    self._parsed.pop(entry.path, None)
                    continue
                position, paths = self._read_plan(entry.path, ds.path)
                for distance, path in enumerate(paths[position : position + PLAN_HORIZON]):
                    if out.get(path, PLAN_HORIZON) > distance:
                        out[path] = distance
        return out

    def _read_plan(self, plan_file: str, directory: str) -> tuple[int, list[str]]:
        try:
            with open(plan_file, "rb") as f:
                generation, position = (int(x) for x in f.read(40).split())
                sig = (os.fstat(f.fileno()).st_ino, generation)
                cached = self._parsed.get(plan_file)
                if cached is None or cached[0] != sig:
                    names = f.read().decode(errors="replace").split("\n")
                    paths = [os.path.join(directory, n) for n in names if n]
                    cached = (sig, paths)
                    self._parsed[plan_file] = cached
            return position, cached[1]
        except (OSError, ValueError):
            return 0, []

    # -- inspection (CLI) ----------------------------------------------------------------------

    def entries(self) -> list[CacheEntry]:
        """Every shard file and live download in the cache (stale temp files are removed)."""
        with self._admission():
            return self._scan()

    def usage(self) -> int:
        """Bytes the cache holds now (published files plus downloads in progress)."""
        return sum(e.bytes for e in self.entries())

    def datasets(self) -> dict[str, str]:
        """Per-dataset directory -> dataset URL."""
        out = {}
        for entry in _dataset_dirs(self.cache_dir):
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
            for entry in self._scan():
                if not entry.temp and self._evict(entry):
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
        if not self.verify:
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
    ) -> Pin:
        lock_fd = self._open_lock(path + ".lock")
        try:
            self._wait_for_download_lock(lock_fd, path, key)
            pin = self._try_pin(path)  # someone published it while we waited
            if pin is not None:
                return pin
            self._download(key, path, fetch, next_use, room_timeout, protect)
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
            written = sum(size for _, size in _temps_of(path))
            if written != progress:
                progress, last_change = written, time.monotonic()
            elif time.monotonic() - last_change > self.stall_timeout:
                holders = ", ".join(str(pid) for pid, _ in _temps_of(path)) or "unknown"
                raise CacheError(
                    f"shard {key.name} of {key.url}: the download by pid {holders} into"
                    f" {os.path.dirname(path)} made no progress for {self.stall_timeout:.0f} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

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
        for stale, _ in _temps_of(path, paths=True):  # we hold the lock: any temp is stale
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
        start = time.monotonic()
        delay = 0.005
        retried_full = False
        while True:
            waited = time.monotonic() - start
            own = dict(next_use()) if next_use is not None else {}
            with self._admission():
                entries = self._scan()
                used = sum(e.bytes for e in entries)
                candidates = [
                    e
                    for e in entries
                    if not e.temp and (protect is None or own.get(e.path, protect + 1) > protect)
                ]
                now, later = eviction_order(candidates, own, self._others_next_use())
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

    def _scan(self) -> list[CacheEntry]:
        out = []
        for ds in _dataset_dirs(self.cache_dir):
            for entry in _scandir(ds.path):
                name = entry.name
                if not _OURS_RE.match(name) or name.endswith(".lock"):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                match = _TMP_RE.match(name)
                if match is None:
                    out.append(CacheEntry(entry.path, st.st_size, st.st_mtime))
                    continue
                lock = os.path.join(ds.path, match["file"] + ".lock")
                if lock_is_free(lock):  # its downloader is gone (killed): a stale partial file
                    log.info("removing stale partial download %s", entry.path)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                    continue
                expected = max(int(match["bytes"]), st.st_size)
                out.append(CacheEntry(entry.path, expected, st.st_mtime, temp=True))
        return out

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
        directory = os.path.join(self.cache_dir, dataset_dir_name(url))
        source = os.path.join(directory, "SOURCE")
        if not os.path.exists(source):
            try:
                os.makedirs(directory, exist_ok=True)
                tmp = f"{source}.{os.getpid()}"
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(url + "\n")
                os.replace(tmp, source)
            except OSError as exc:
                raise CacheError(f"cache_dir {self.cache_dir!r} is not writable: {exc}") from exc
        return directory


def _dataset_dirs(cache_dir: str) -> list[os.DirEntry[str]]:
    """The per-dataset directories this cache made (they hold SOURCE): anything else in
    cache_dir is not ours and is never counted, listed or deleted."""
    return [
        d
        for d in _scandir(cache_dir)
        if d.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(d.path, "SOURCE"))
    ]


def _scandir(path: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _temps_of(path: str, paths: bool = False) -> list[tuple[Any, int]]:
    """Temp files of one shard: ``(pid or path, current size)``."""
    directory, base = os.path.split(path)
    out: list[tuple[Any, int]] = []
    for entry in _scandir(directory):
        match = _TMP_RE.match(entry.name)
        if match is None or match["file"] != base:
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            continue
        out.append((entry.path if paths else int(match["pid"]), size))
    return out


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
