"""DiskCache in one process, against fake fetchers: verify-then-publish, pins, limit, eviction."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import xxhash

from streamload.cache import disk as cache_mod
from streamload.cache.disk import DiskCache, ShardBusy, ShardKey
from streamload.cache.layout import dataset_dir_name
from streamload.errors import CacheError, FormatError

URL = "s3://bucket/dataset"


def _key(name: str, data: bytes, url: str = URL) -> ShardKey:
    return ShardKey(url, name, len(data), "xxh3_64", xxhash.xxh3_64_hexdigest(data))


class Source:
    """A fake remote: shard bytes by name, and every fetch recorded."""

    def __init__(self, shards: dict[str, bytes]) -> None:
        self.shards = shards
        self.calls: list[str] = []

    def fetch(
        self, name: str, during: Callable[[], None] | None = None
    ) -> Callable[[IO[bytes]], None]:
        def write(f: IO[bytes]) -> None:
            self.calls.append(name)
            data = self.shards[name]
            f.write(data[: len(data) // 2])
            if during is not None:
                during()
            f.write(data[len(data) // 2 :])

        return write


def _shards(n: int, size: int) -> dict[str, bytes]:
    return {f"shard-{i:05d}.arrow": bytes([i % 251]) * size for i in range(n)}


def disk_bytes(cache_dir: str) -> int:
    """Bytes of every file the cache wrote (shards, partial downloads, SOURCE, plan files, index
    copies: all count against cache_limit), measured with os.walk."""
    total = 0
    for root, _, files in os.walk(cache_dir):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_size
    return total


# Room for the dataset directory's SOURCE file (the URL), which counts against cache_limit too.
SOURCE_ROOM = 100


def visible_names(cache_dir: str) -> list[str]:
    out = []
    for _, _, files in os.walk(cache_dir):
        out += [f for f in files if not (f == "SOURCE" or f.endswith(".lock") or f.startswith("."))]
    return sorted(out)


def test_miss_downloads_once_and_hit_serves_the_verified_bytes(tmp_path: Path) -> None:
    """A miss fetches once; later pins (hits) fetch nothing and see the same complete bytes."""
    source = Source(_shards(2, 1000))
    cache = DiskCache(tmp_path, 10_000)
    name = "shard-00001.arrow"
    with cache.pin(_key(name, source.shards[name]), source.fetch(name)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]
    with cache.pin(_key(name, source.shards[name]), source.fetch(name)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]
    assert source.calls == [name]
    assert visible_names(str(tmp_path)) == [Path(pin.path).name]


def test_nothing_is_published_until_the_download_is_complete_and_verified(tmp_path: Path) -> None:
    """Mid-download only a temp file exists; a concurrent pin waits and gets the whole file once."""
    source = Source(_shards(1, 4000))
    name = "shard-00000.arrow"
    key = _key(name, source.shards[name])
    cache = DiskCache(tmp_path, 10_000)
    published = os.path.join(str(tmp_path), dataset_dir_name(URL), key.file_name)
    seen: list[bytes] = []
    waiter_started = threading.Event()

    def waiter() -> None:
        waiter_started.set()
        with cache.pin(key, source.fetch(name)) as pin:
            seen.append(Path(pin.path).read_bytes())

    thread = threading.Thread(target=waiter)

    def during() -> None:
        assert not os.path.exists(published)
        (temp,) = visible_names(str(tmp_path))
        assert ".tmp." in temp
        thread.start()
        waiter_started.wait(5)

    with cache.pin(key, source.fetch(name, during)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]
    thread.join(10)
    assert seen == [source.shards[name]]
    assert source.calls == [name]  # single flight: the waiter found the published file


def test_mismatch_is_fetched_again_once_then_raises_format_error(tmp_path: Path) -> None:
    """Bad bytes are re-fetched once; bad twice is a FormatError naming shard and URL, no file left."""
    good = b"x" * 500
    key = _key("shard-00000.arrow", good)
    answers = [b"y" * 500, good]

    def flaky(f: IO[bytes]) -> None:
        f.write(answers.pop(0))

    cache = DiskCache(tmp_path, 10_000)
    with cache.pin(key, flaky) as pin:
        assert Path(pin.path).read_bytes() == good
    assert answers == []

    bad_key = _key("shard-00001.arrow", good)
    with pytest.raises(FormatError, match=r"shard-00001\.arrow of s3://bucket/dataset"):
        cache.pin(bad_key, lambda f: f.write(b"z" * 499))
    assert visible_names(str(tmp_path)) == [key.file_name]


def test_a_changed_dataset_never_serves_stale_bytes(tmp_path: Path) -> None:
    """Same URL and shard name with a new checksum is a different cache entry."""
    cache = DiskCache(tmp_path, 10_000)
    old, new = b"a" * 300, b"b" * 300
    with cache.pin(_key("shard-00000.arrow", old), lambda f: f.write(old)) as pin:
        assert Path(pin.path).read_bytes() == old
    with cache.pin(_key("shard-00000.arrow", new), lambda f: f.write(new)) as pin:
        assert Path(pin.path).read_bytes() == new


def test_a_corrupted_cached_shard_is_detected_and_fetched_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bit flip in a cached copy is caught on first use in a process and the shard re-fetched."""
    source = Source(_shards(1, 2000))
    name = "shard-00000.arrow"
    key = _key(name, source.shards[name])
    cache = DiskCache(tmp_path, 10_000)
    with cache.pin(key, source.fetch(name)) as pin:
        path = pin.path
    with open(path, "r+b") as f:
        f.seek(1234)
        f.write(b"\xff")
    monkeypatch.setattr(cache_mod, "_VERIFIED", set())  # a new process: nothing verified yet
    with cache.pin(key, source.fetch(name)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]
    assert source.calls == [name, name]


def test_a_truncated_cached_shard_is_refetched_even_without_checksum_verification(
    tmp_path: Path,
) -> None:
    """The cheap mode (verify=False) still checks sizes."""
    source = Source(_shards(1, 2000))
    name = "shard-00000.arrow"
    key = _key(name, source.shards[name])
    cache = DiskCache(tmp_path, 10_000, verify=False)
    with cache.pin(key, source.fetch(name)) as pin:
        path = pin.path
    os.truncate(path, 100)
    with cache.pin(key, source.fetch(name)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]
    assert len(source.calls) == 2


def test_cache_never_exceeds_its_limit_even_while_downloading(tmp_path: Path) -> None:
    """Cycling through 5x more bytes than the limit, on-disk bytes stay <= cache_limit throughout."""
    source = Source(_shards(20, 1000))
    limit = 4000
    cache = DiskCache(tmp_path, limit)
    peaks: list[int] = []
    for _ in range(2):
        for name, data in source.shards.items():
            during = lambda: peaks.append(disk_bytes(str(tmp_path)))  # noqa: E731
            with cache.pin(_key(name, data), source.fetch(name, during)) as pin:
                assert Path(pin.path).read_bytes() == data
            peaks.append(disk_bytes(str(tmp_path)))
    assert max(peaks) <= limit
    assert max(peaks) > limit - 1000  # it was really full
    assert cache.usage() == disk_bytes(str(tmp_path))


def test_pinned_shards_are_never_evicted(tmp_path: Path) -> None:
    """With everything pinned there is no room: CacheError naming cache_limit, pins intact."""
    source = Source(_shards(4, 1000))
    cache = DiskCache(tmp_path, 3000 + SOURCE_ROOM, room_timeout=0.05)
    names = list(source.shards)
    pins = [cache.pin(_key(n, source.shards[n]), source.fetch(n)) for n in names[:3]]
    with pytest.raises(CacheError, match=r"cache_limit = .*shard-00003\.arrow.*pinned"):
        cache.pin(_key(names[3], source.shards[names[3]]), source.fetch(names[3]))
    assert all(
        Path(p.path).read_bytes() == source.shards[n] for p, n in zip(pins, names, strict=False)
    )
    assert 3000 < disk_bytes(str(tmp_path)) <= 3000 + SOURCE_ROOM
    pins[1].close()  # now one can go, and it is the unpinned one
    with cache.pin(_key(names[3], source.shards[names[3]]), source.fetch(names[3])):
        pass
    assert os.path.exists(pins[0].path) and os.path.exists(pins[2].path)
    assert not os.path.exists(pins[1].path)


def test_eviction_spares_the_shard_needed_soonest(tmp_path: Path) -> None:
    """Belady: with next uses known, the one needed furthest ahead goes; unknown ones go first."""
    source = Source(_shards(5, 1000))
    cache = DiskCache(tmp_path, 3000 + SOURCE_ROOM)
    names = list(source.shards)
    paths = {}
    for n in names[:3]:
        with cache.pin(_key(n, source.shards[n]), source.fetch(n)) as pin:
            paths[n] = pin.path
    # Next uses: shard 0 soon, shard 1 late; shard 2 unknown (LRU would pick shard 0, the oldest).
    future = {paths[names[0]]: 1, paths[names[1]]: 9}
    with cache.pin(
        _key(names[3], source.shards[names[3]]), source.fetch(names[3]), next_use=lambda: future
    ):
        pass
    assert not os.path.exists(paths[names[2]])
    shard3 = _key(names[3], source.shards[names[3]]).file_name
    future[os.path.join(os.path.dirname(paths[names[0]]), shard3)] = 2  # needed soon too
    with cache.pin(
        _key(names[4], source.shards[names[4]]), source.fetch(names[4]), next_use=lambda: future
    ):
        pass
    assert os.path.exists(paths[names[0]]) and not os.path.exists(paths[names[1]])


def test_working_set_larger_than_the_limit_is_refused_naming_setting_and_sizes(
    tmp_path: Path,
) -> None:
    """cache_limit below (pinned shards x largest shard) is a CacheError that shows the arithmetic."""
    cache = DiskCache(tmp_path, 10_000_000)
    cache.check_working_set(1_000_000, 10, "10 pins")
    with pytest.raises(
        CacheError, match=r"cache_limit = .*10000000 B.*11 shards pinned.*976.6 KiB"
    ):
        cache.check_working_set(1_000_000, 11, "11 pins")
    with pytest.raises(CacheError, match=r"cache_limit .* cannot hold shard shard-00000\.arrow"):
        cache.pin(_key("shard-00000.arrow", b"x" * 20_000_000), lambda f: None)


def test_unwritable_cache_dir_is_a_cache_error(tmp_path: Path) -> None:
    """A cache_dir that cannot be created is a CacheError naming it."""
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(CacheError, match=r"cache_dir .*file/cache.* not writable"):
        DiskCache(blocker / "cache", 1000)


def test_enospc_is_a_cache_error_with_no_partial_file_and_the_next_run_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while reserving: CacheError naming the dir; nothing left behind; then it works."""
    real = os.posix_fallocate

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    source = Source(_shards(1, 1000))
    name = "shard-00000.arrow"
    cache = DiskCache(tmp_path, 10_000)
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(CacheError, match=r"cache_dir .* is full"):
        cache.pin(_key(name, source.shards[name]), source.fetch(name))
    assert visible_names(str(tmp_path)) == []
    monkeypatch.setattr(os, "posix_fallocate", real)
    with cache.pin(_key(name, source.shards[name]), source.fetch(name)) as pin:
        assert Path(pin.path).read_bytes() == source.shards[name]


def test_enospc_while_writing_is_a_cache_error_with_no_partial_file(tmp_path: Path) -> None:
    """A fetch that hits ENOSPC mid-write: CacheError, the temp file is gone."""

    def fetch(f: IO[bytes]) -> None:
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    cache = DiskCache(tmp_path, 10_000)
    with pytest.raises(CacheError, match="is full"):
        cache.pin(_key("shard-00000.arrow", b"x" * 100), fetch)
    assert visible_names(str(tmp_path)) == []


def test_a_stalled_download_by_another_holder_times_out_instead_of_hanging(tmp_path: Path) -> None:
    """A waiter whose downloader makes no progress gives up with CacheError naming the shard."""
    release = threading.Event()
    started = threading.Event()
    name = "shard-00000.arrow"
    data = b"q" * 1000
    key = _key(name, data)
    cache = DiskCache(tmp_path, 10_000)

    def stuck(f: IO[bytes]) -> None:
        started.set()
        release.wait(30)
        f.write(data)

    holder = threading.Thread(target=lambda: cache.pin(key, stuck).close())
    holder.start()
    try:
        assert started.wait(10)
        impatient = DiskCache(tmp_path, 10_000, stall_timeout=0.1)
        with pytest.raises(CacheError, match=r"shard-00000\.arrow .* made no progress"):
            impatient.pin(key, lambda f: f.write(data))
    finally:
        release.set()
        holder.join(10)


def test_readahead_mode_skips_a_shard_someone_else_is_downloading(tmp_path: Path) -> None:
    """pin(nowait=True) raises ShardBusy at once instead of queueing behind another download."""
    release = threading.Event()
    started = threading.Event()
    data = b"r" * 1000
    key = _key("shard-00000.arrow", data)
    cache = DiskCache(tmp_path, 10_000)

    def slow(f: IO[bytes]) -> None:
        started.set()
        release.wait(30)
        f.write(data)

    holder = threading.Thread(target=lambda: cache.pin(key, slow).close())
    holder.start()
    try:
        assert started.wait(10)
        with pytest.raises(ShardBusy, match=r"shard-00000\.arrow"):
            cache.pin(key, lambda f: f.write(data), nowait=True)
    finally:
        release.set()
        holder.join(10)
    with cache.pin(key, lambda f: f.write(b"never called"), nowait=True) as pin:
        assert Path(pin.path).read_bytes() == data


def test_an_index_copy_counts_against_the_limit_and_never_overfills_it(tmp_path: Path) -> None:
    """index.json's copy is admitted like a shard: not kept while pinned shards fill the cache,
    kept (evicting an unpinned shard) once one may go, and then served without a fetch."""
    from streamload.cache.index_copy import node_copy

    source = Source(_shards(3, 1000))
    limit = 3000 + SOURCE_ROOM
    cache = DiskCache(tmp_path, limit)
    pins = [cache.pin(_key(n, d), source.fetch(n)) for n, d in source.shards.items()]
    index = b'{"format_version": 1}' + b" " * 480
    info = {"size": len(index), "ETag": '"v1"'}
    fetches: list[int] = []

    def fetch() -> bytes:
        fetches.append(1)
        return index

    assert node_copy(str(tmp_path), URL, info, fetch, cache_limit=limit) == index
    assert "index.json" not in visible_names(str(tmp_path))  # no room: nothing kept
    assert disk_bytes(str(tmp_path)) <= limit
    pins[0].close()
    assert node_copy(str(tmp_path), URL, info, fetch, cache_limit=limit) == index
    assert "index.json" in visible_names(str(tmp_path)) and not os.path.exists(pins[0].path)
    assert disk_bytes(str(tmp_path)) <= limit
    assert node_copy(str(tmp_path), URL, info, fetch, cache_limit=limit) == index
    assert fetches == [1, 1]  # the third open read the kept copy
    assert cache.usage() == disk_bytes(str(tmp_path))
    for pin in pins[1:]:
        pin.close()


def test_a_shard_that_cannot_fit_beside_the_caches_own_files_fails_at_once(tmp_path: Path) -> None:
    """A shard of exactly cache_limit bytes never fits beside the dataset's SOURCE: CacheError
    now, not after room_timeout."""
    source = Source(_shards(1, 1000))
    name, data = next(iter(source.shards.items()))
    cache = DiskCache(tmp_path, 1000, room_timeout=3600)
    with pytest.raises(CacheError, match=r"cannot hold shard shard-00000\.arrow .* beside"):
        cache.pin(_key(name, data), source.fetch(name))
