"""DiskCache shared by processes: single flight, no torn reads, SIGKILL, fork, a really full disk."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import xxhash

from streamload.cache.disk import DiskCache, ShardKey
from streamload.errors import CacheError

URL = "s3://bucket/shared"

# ``readers`` forked processes, each reading every shard of ``src`` in name order, ``passes``
# times, through the cache, announcing its plan; each fetch is logged. Prints each reader's exit
# code: 3 a torn read, 4 the disk exceeded the limit, 5 the readers never all started.
READER = textwrap.dedent(
    """
    import fcntl, os, sys, time, xxhash
    from streamload.cache.disk import DiskCache, ShardKey
    cache_dir, limit, src, log = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    passes, readers = int(sys.argv[5]), int(sys.argv[6])

    def main():
        def disk():  # under the cache's admission lock: every file appears or goes under it
            fd = os.open(os.path.join(cache_dir, ".lock"), os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(cache_dir)
                           for f in fs if not (f == "SOURCE" or f.endswith(".lock") or f.startswith(".")))
            finally:
                os.close(fd)

        keys = []
        for name in sorted(os.listdir(src)):
            data = open(os.path.join(src, name), "rb").read()
            keys.append(ShardKey("URL", name, len(data), "xxh3_64", xxhash.xxh3_64_hexdigest(data)))
        cache = DiskCache(cache_dir, limit, others_wait=60)
        directory = os.path.join(cache_dir, __import__("streamload.cache.layout").cache.layout.dataset_dir_name("URL"))
        plan = keys * passes
        cache.announce("URL", [k.file_name for k in plan], 0)
        # Start together (as a loader's workers do): wait until every reader has announced its plan.
        deadline = time.monotonic() + 60
        while sum(f.startswith(".plan.") for f in os.listdir(directory)) < readers:
            if time.monotonic() > deadline:
                sys.exit(5)
            time.sleep(0.001)
        for pos, key in enumerate(plan):
            cache.announce("URL", None, pos)
            own = {}
            for d, k in enumerate(plan[pos:pos + 64]):
                own.setdefault(os.path.join(directory, k.file_name), d)

            def fetch(f, name=key.name):
                f.write(open(os.path.join(src, name), "rb").read())
                if disk() > limit:
                    sys.exit(4)
                fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, (name + "\\n").encode())
                os.close(fd)

            with cache.pin(key, fetch, next_use=lambda: own) as pin:
                if xxhash.xxh3_64_hexdigest(open(pin.path, "rb").read()) != key.checksum:
                    sys.exit(3)
            if disk() > limit:
                sys.exit(4)

    # One import, then one forked process per reader (as loader workers are forked).
    pids = []
    for _ in range(readers):
        pid = os.fork()
        if pid == 0:
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code or 0
            os._exit(code)
        pids.append(pid)
    print(" ".join(str(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])) for pid in pids))
    """
).replace('"URL"', repr(URL))


def _write_shards(src: Path, n: int, size: int) -> dict[str, bytes]:
    src.mkdir()
    shards = {}
    for i in range(n):
        data = os.urandom(size)
        shards[f"shard-{i:05d}.arrow"] = data
        (src / f"shard-{i:05d}.arrow").write_bytes(data)
    return shards


def _visible(cache_dir: Path) -> list[str]:
    return sorted(
        f
        for _, _, files in os.walk(cache_dir)
        for f in files
        if not (f == "SOURCE" or f.endswith(".lock") or f.startswith("."))
    )


@pytest.mark.parametrize("passes", [1, 2])
def test_four_processes_share_one_cache_below_corpus_size_one_download_per_shard(
    tmp_path: Path, passes: int
) -> None:
    """4 readers, cache_limit = half the corpus: no torn read, the limit held, and each shard
    fetched once per pass for all four (the first pass exactly once; later passes may hit)."""
    shards = _write_shards(tmp_path / "src", 12, 64 * 1024)
    limit = 6 * 64 * 1024
    log = tmp_path / "fetches.log"
    args = [str(tmp_path / "src"), str(log), str(passes), "4"]
    done = subprocess.run(
        [sys.executable, "-c", READER, str(tmp_path / "cache"), str(limit), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "0", "0", "0"], done.stderr
    fetched = collections.Counter(log.read_text().split())
    assert set(fetched) == set(shards)
    if passes == 1:
        assert fetched == collections.Counter(list(shards))
    assert max(fetched.values()) <= passes


def test_sigkill_mid_download_leaves_no_partial_file_and_the_bytes_are_not_counted(
    tmp_path: Path,
) -> None:
    """A downloader killed mid-write leaves a partial temp file that is never visible as a shard,
    is dropped by the next scan, does not count against cache_limit, and the shard is re-fetched."""
    data = os.urandom(100_000)
    name = "shard-00000.arrow"
    killer = textwrap.dedent(
        f"""
        import os, signal, sys
        from streamload.cache.disk import DiskCache, ShardKey
        cache = DiskCache(sys.argv[1], 100_100)
        def fetch(f):
            f.write(b"x" * 40_000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        cache.pin(ShardKey({URL!r}, {name!r}, 100_000, "xxh3_64", {xxhash.xxh3_64_hexdigest(data)!r}), fetch)
        """
    )
    proc = subprocess.run([sys.executable, "-c", killer, str(tmp_path)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (partial,) = _visible(tmp_path)
    assert ".tmp." in partial  # the killed process's bytes are on disk, under a temp name only

    # One shard's worth (and its dataset's SOURCE): the partial must not count.
    cache = DiskCache(tmp_path, 100_100)
    assert cache.usage() < 100  # SOURCE only: the partial was deleted when the cache opened
    assert _visible(tmp_path) == []
    fetches = []
    key = ShardKey(URL, name, len(data), "xxh3_64", xxhash.xxh3_64_hexdigest(data))
    with cache.pin(key, lambda f: (fetches.append(1), f.write(data))) as pin:
        assert Path(pin.path).read_bytes() == data
    assert fetches == [1]


def test_a_forked_child_does_not_keep_its_parents_pins(tmp_path: Path) -> None:
    """After fork, the parent's unpin makes the shard evictable even while the child lives."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from streamload.cache.disk import DiskCache, ShardKey
        import xxhash
        data = b"p" * 1000
        cache = DiskCache(sys.argv[1], 10_000)
        pin = cache.pin(ShardKey({URL!r}, "shard-00000.arrow", 1000, "xxh3_64",
                                 xxhash.xxh3_64_hexdigest(data)), lambda f: f.write(data))
        r, w = os.pipe()
        ready_r, ready_w = os.pipe()
        child = os.fork()
        if child == 0:  # fork hooks have run by the time any code runs here
            os.close(w)
            os.write(ready_w, b"!")
            os.read(r, 1)  # lives until the parent is done
            os._exit(0)
        os.close(r)
        os.read(ready_r, 1)
        busy = cache.clear()[0]  # pinned by us: not evictable
        pin.close()
        freed = cache.clear()[0]  # the child still runs but holds no pin
        os.close(w)
        os.waitpid(child, 0)
        print(busy, freed)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "1"]


def test_disk_full_is_a_cache_error_no_partial_file_and_recovers(small_disk: Path) -> None:
    """cache_limit above a real 1 MiB disk: ENOSPC -> CacheError, nothing partial; later it works."""
    shards = {f"shard-{i:05d}.arrow": bytes([i]) * 400_000 for i in range(3)}
    keys = {
        n: ShardKey(URL, n, len(d), "xxh3_64", xxhash.xxh3_64_hexdigest(d))
        for n, d in shards.items()
    }
    cache = DiskCache(small_disk / "cache", 10_000_000)
    names = list(shards)
    pins = [cache.pin(keys[n], lambda f, n=n: f.write(shards[n])) for n in names[:2]]
    with pytest.raises(CacheError, match=r"is full"):
        cache.pin(keys[names[2]], lambda f: f.write(shards[names[2]]))
    assert not any(".tmp." in f for f in _visible(small_disk))
    pins[0].close()  # one shard can go: the next run evicts it and fits
    with cache.pin(keys[names[2]], lambda f: f.write(shards[names[2]])) as pin:
        assert Path(pin.path).read_bytes() == shards[names[2]]
    assert Path(pins[1].path).read_bytes() == shards[names[1]]
    pins[1].close()
