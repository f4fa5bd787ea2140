"""What to evict from the shard cache: the eviction order (pure) and the plans it is based on.

Every process reading through the cache knows the order in which it will open shards (its plan).
It publishes that plan in a small file in the dataset's cache directory (`PlanBoard`), so the
evictor in any process can see what every live process still needs and how soon:

    <dataset dir>/.plan.<pid>.<n>     "<generation> <position> <waiting> <reserve>\\n",
                                      then a file name a line

The file is held with ``flock(LOCK_EX)`` for the life of its process (liveness: a file whose lock
can be taken belongs to a dead process and is deleted). Writers and readers hold the cache's
admission lock, so nobody reads a half-written plan. Only the current epoch is published, and of
it at most ``PLAN_WINDOW`` names from the reader's position (republished as it moves on), so a
plan file stays small whatever the number of shards: a process done with its share must not hold
the others back for an epoch that may never come. ``reserve`` is the most bytes the process may
pin at once (its working set): `DiskCache.join` adds up every live process's reserve before it
lets one more in.

`eviction_order` turns (cached files, this process's next uses, each other process's next uses,
the shard being fetched) into the order to evict in: files nobody needs (least recently used
first), then needed files by furthest next use (Belady), and last — only after the caller has
waited a little — files another process will read before it needs the shard being fetched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
from collections.abc import Mapping, Sequence

from streamload.cache.locks import close_fd, lock_is_free, open_fd, try_flock

PLAN_HORIZON = 4096  # plan positions of other processes that eviction looks at
PLAN_WINDOW = 1024  # shard names a process publishes ahead of its position
_HEADER = 62  # bytes of "<generation:19> <position:19> <waiting:1> <reserve:19>\n"
PLAN_HEADER_BYTES = _HEADER


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One file in the cache as the scan sees it."""

    path: str
    bytes: int
    mtime: float  # last pin (LRU clock)
    temp: bool = False  # a download in progress (counted at its expected size)
    fixed: bool = False  # not a shard: a plan file, an index copy (counted, never evicted)


def eviction_order(
    entries: list[CacheEntry],
    own: Mapping[str, int],
    others: Sequence[Mapping[str, int]] = (),
    target: str | None = None,
    moving: Sequence[Mapping[str, int]] | None = None,
) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """Which files to evict, in order (pure; the caller skips pinned ones).

    Args:
        entries: candidate published files.
        own: path -> how many shard opens from now this process needs it (smaller = sooner).
        others: the same, one mapping per other live process on the node.
        target: the path of the shard being fetched (room is made for it).
        moving: the subset of ``others`` not themselves stuck waiting for room (None: all);
            only they are worth waiting for.

    Returns:
        ``(now, later)``. ``now``: files nobody is known to need, least recently used first,
        then needed files, the one whose next use (by anyone) is furthest first (Belady).
        ``later``: files another process will read *before* it needs ``target``: evicting one
        means a second download, and that process is making progress without us, so the caller
        first waits a little for it to move past them (furthest first). A file others need only
        after ``target`` is not worth waiting for: they will be waiting for this very fetch.
    """
    never = 2**62
    waitable = others if moving is None else moving

    def soonest(path: str) -> int:
        return min([own.get(path, never), *(p.get(path, never) for p in others)])

    def worth_waiting(path: str) -> bool:
        return any(p.get(path, never) < p.get(target or "", never) for p in waitable)

    unknown = [e for e in entries if soonest(e.path) == never]
    needed = [e for e in entries if soonest(e.path) != never and not worth_waiting(e.path)]
    waits = [e for e in entries if soonest(e.path) != never and worth_waiting(e.path)]
    unknown.sort(key=lambda e: (e.mtime, e.path))
    needed.sort(key=lambda e: (-soonest(e.path), e.mtime, e.path))
    waits.sort(key=lambda e: (-soonest(e.path), e.path))
    return unknown + needed, waits


class PlanBoard:
    """This process's published plans, and reading the other processes' (see module docstring).

    Callers hold the cache's admission lock around every method.
    """

    def __init__(self) -> None:
        self._plans: dict[str, int] = {}  # dataset dir -> fd of this process's plan file
        self._pid = os.getpid()
        self._generation = 0  # of the plan last published (in the plan file's header)
        self._position = 0
        self._waiting = False
        self._reserve: dict[str, int] = {}  # dataset dir -> bytes published as reserved there
        self._size: dict[str, int] = {}  # dataset dir -> fixed size of the plan file there
        # Other processes' plan files as last parsed: path -> ((inode, generation), cache paths).
        self._parsed: dict[str, tuple[tuple[int, int], list[str]]] = {}

    def _name(self, directory: str) -> str:
        return os.path.join(directory, f".plan.{os.getpid()}.{id(self)}")

    def announce(
        self,
        directory: str,
        upcoming: list[str] | None,
        position: int,
        reserve: int | None = None,
        size: int | None = None,
    ) -> None:
        """Publish this process's plan for one dataset dir (``upcoming`` None: move only;
        ``reserve`` None: keep the bytes reserved before). ``size`` fixes the plan file's size
        (padded with empty lines, names that do not fit are left out), so the bytes it takes
        in the cache never change after they were admitted."""
        if self._pid != os.getpid():  # forked: the parent's plan files are not ours
            self._plans, self._pid, self._reserve, self._size = {}, os.getpid(), {}, {}
        if reserve is not None:
            self._reserve[directory] = reserve
        if size is not None:
            self._size[directory] = max(size, _HEADER)
        fd = self._plans.get(directory)
        if fd is None:
            fd = open_fd(self._name(directory), os.O_RDWR | os.O_CREAT)
            try_flock(fd, fcntl.LOCK_EX)  # held while we live: tells others we are alive
            self._plans[directory] = fd
            upcoming = upcoming if upcoming is not None else []
        if upcoming is not None:
            self._generation += 1
        self._position = position
        header = self._header(directory)
        if upcoming is None:
            os.pwrite(fd, header, 0)
            return
        data = header + "\n".join(upcoming).encode()
        size = self._size.get(directory)
        if size is not None:
            if len(data) > size:  # keep whole names only
                data = data[: data.rfind(b"\n", 0, size + 1) + 1]
            data += b"\n" * (size - len(data))
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def set_waiting(self, waiting: bool) -> None:
        """Tell others whether this process is stuck waiting for room (then waiting for it to
        move on is pointless: it is not moving)."""
        if self._pid != os.getpid() or self._waiting == waiting:
            return
        self._waiting = waiting
        for directory, fd in self._plans.items():
            os.pwrite(fd, self._header(directory), 0)

    @property
    def waiting(self) -> bool:
        """Whether this process currently says it is waiting for room."""
        return self._waiting and self._pid == os.getpid()

    def _header(self, directory: str) -> bytes:
        reserve = self._reserve.get(directory, 0)
        header = (
            f"{self._generation:019d} {self._position:019d} {int(self._waiting)} {reserve:019d}\n"
        )
        return header.encode()

    def withdraw(self) -> None:
        """Remove this process's plan files."""
        if self._pid != os.getpid():
            return
        for directory, fd in list(self._plans.items()):
            with contextlib.suppress(OSError):
                os.unlink(self._name(directory))
            close_fd(fd)
        self._plans.clear()
        self._reserve.clear()
        self._size.clear()

    def others_reserves(self, dataset_dirs: list[os.DirEntry[str]]) -> dict[int, int]:
        """pid -> bytes reserved by each other live process (over all its plan files). Plan
        files of dead processes are deleted."""
        out: dict[int, int] = {}
        for plan, _ in self._other_plans(dataset_dirs):
            try:
                with open(plan, "rb") as f:
                    reserve = int(f.read(_HEADER).split()[3])
                pid = int(os.path.basename(plan).split(".")[2])
            except (OSError, ValueError, IndexError):  # vanished, or killed mid-write
                continue
            out[pid] = out.get(pid, 0) + reserve
        return out

    def _other_plans(self, dataset_dirs: list[os.DirEntry[str]]) -> list[tuple[str, str]]:
        """(plan file, its dataset dir) of every other live process; dead ones are deleted."""
        out = []
        mine = {self._name(d) for d in self._plans} if self._pid == os.getpid() else set()
        for ds in dataset_dirs:
            try:
                with os.scandir(ds.path) as it:
                    plans = [e.path for e in it if e.name.startswith(".plan.")]
            except FileNotFoundError:
                continue
            for plan in plans:
                if plan in mine:
                    continue
                if lock_is_free(plan):  # its process is gone
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(plan)
                    self._parsed.pop(plan, None)
                    continue
                out.append((plan, ds.path))
        return out

    def others_next_use(
        self, dataset_dirs: list[os.DirEntry[str]]
    ) -> list[tuple[dict[str, int], bool]]:
        """For each other live process: (cache path -> how many opens until it needs it,
        whether it is itself waiting for room). Plan files of dead processes are deleted."""
        out: list[tuple[dict[str, int], bool]] = []
        for plan, directory in self._other_plans(dataset_dirs):
            position, waiting, paths = self._read(plan, directory)
            needs: dict[str, int] = {}
            for distance, path in enumerate(paths[position : position + PLAN_HORIZON]):
                needs.setdefault(path, distance)
            out.append((needs, waiting))
        return out

    def _read(self, plan_file: str, directory: str) -> tuple[int, bool, list[str]]:
        try:
            with open(plan_file, "rb") as f:
                generation, position, waiting, _ = (int(x) for x in f.read(_HEADER).split())
                sig = (os.fstat(f.fileno()).st_ino, generation)
                cached = self._parsed.get(plan_file)
                if cached is None or cached[0] != sig:
                    names = f.read().decode(errors="replace").split("\n")
                    cached = (sig, [os.path.join(directory, n) for n in names if n])
                    self._parsed[plan_file] = cached
            return position, bool(waiting), cached[1]
        except (OSError, ValueError):  # vanished, or written by a process killed mid-write
            return 0, False, []
