"""StreamingDataset over the disk cache: local data in place, remote shards cached, read ahead.

"Remote" here is a fake fsspec filesystem (protocol ``slfake://``) serving a local directory;
``fetch_log`` logs every shard download to a file (loader workers are other processes). Real
servers are exercised in tests/remote.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import pickle
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from fsspec.spec import AbstractFileSystem

from streamload import ShardWriter, StreamingDataset, StreamLoader
from streamload.cache.read_plan import chunk_shards
from streamload.cache.readahead import OPEN_SHARDS
from streamload.errors import CacheError
from streamload.store import filesystem as store


class FakeRemote(AbstractFileSystem):
    """A non-local filesystem over local files (so datasets at ``slfake://`` use the cache)."""

    protocol = "slfake"

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        return open(path, mode)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        st = os.stat(path)
        return {"name": path, "size": st.st_size, "type": "file"}


fsspec.register_implementation("slfake", FakeRemote, clobber=True)


N = 600


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local dataset of N samples (id, 64 int64s) in about a dozen shards of ~25 KB."""
    root = tmp_path_factory.mktemp("corpus")
    with ShardWriter(str(root), shard_size="24KiB") as w:
        for i in range(N):
            w.write({"id": i, "x": np.full(64, i, np.int64)})
    return str(root)


def _remote(corpus: str, cache: Path, shards_in_cache: int, **kwargs: Any) -> StreamingDataset:
    """The corpus as a remote dataset with room for ``shards_in_cache`` of its largest shards."""
    local = StreamingDataset(corpus)
    biggest = max(s.bytes for s in local.index.shards)
    return StreamingDataset(
        "slfake://" + corpus, cache_dir=cache, cache_limit=shards_in_cache * biggest, **kwargs
    )


@pytest.fixture
def fetch_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file listing every shard download (``store.download`` call, retries inside it count
    once), from this process and from forked loader workers."""
    log = tmp_path / "fetches.log"
    real = store.download

    def download(fs: Any, path: str, fileobj: Any, **kwargs: Any) -> int:
        # Only into this test's caches: a read-ahead thread of an earlier test's dataset may
        # still be finishing its last download.
        if str(tmp_path) in str(getattr(fileobj, "name", "")):
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            os.write(fd, (os.path.basename(path) + "\n").encode())
            os.close(fd)
        return real(fs, path, fileobj, **kwargs)

    monkeypatch.setattr(store, "download", download)
    return log


def _fetched(log: Path) -> collections.Counter[str]:
    return collections.Counter(log.read_text().split()) if log.exists() else collections.Counter()


def _disk_bytes(cache_dir: Path) -> int:
    """Shard bytes on disk, walked under the cache's admission lock (files come and go only
    under it, and a read-ahead thread may be evicting right now)."""
    fd = os.open(cache_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return sum(
            os.path.getsize(os.path.join(r, f))
            for r, _, files in os.walk(cache_dir)
            for f in files
            if not (f == "SOURCE" or f.endswith(".lock") or f.startswith("."))
        )
    finally:
        os.close(fd)


def test_a_local_dataset_is_read_in_place_never_copied(corpus: str, tmp_path: Path) -> None:
    """Local shards are mapped where they are: nothing is copied into the cache dir, whatever its
    limit (it only gets the empty checksum marks of verified.py)."""
    ds = StreamingDataset(corpus, cache_dir=tmp_path / "cache", cache_limit=1)
    assert [s["id"] for s in ds] == list(range(N))
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert all(p.parent.name == "verified" and p.stat().st_size == 0 for p in cached)
    assert sorted(os.listdir(corpus)) == sorted(["index.json", *(s.name for s in ds.index.shards)])


@pytest.mark.parametrize("shuffle", [False, True])
def test_remote_epochs_yield_every_sample_once_with_a_cache_smaller_than_the_corpus(
    corpus: str, tmp_path: Path, fetch_log: Path, shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two epochs through a cache holding half the shards: every sample exactly once, in order,
    the cache within its limit; in plan order no shard is fetched more than once per epoch (a
    per-sample shuffle touches every shard in every chunk, so there it may thrash, correctly)."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    ds = _remote(corpus, tmp_path / "cache", 6, shuffle=shuffle)
    limit = int(ds.cache_limit)  # type: ignore[arg-type]
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        ids = [s["id"] for s in ds]
        assert ids == ds.sample_order(epoch).tolist()
        assert sorted(ids) == list(range(N))
        assert _disk_bytes(tmp_path / "cache") <= limit
    fetched = _fetched(fetch_log)
    assert set(fetched) == {s.name for s in ds.index.shards}
    if not shuffle:
        # Once per epoch; read-ahead (2 shards) may already have fetched epoch 2's first shards.
        names = [s.name for s in ds.index.shards]
        assert all(fetched[n] <= (3 if n in names[:2] else 2) for n in names), fetched


def test_a_cache_that_holds_the_corpus_serves_the_next_epoch_without_downloads(
    corpus: str, tmp_path: Path, fetch_log: Path
) -> None:
    """Epoch 2 of a shuffled dataset whose shards all fit: zero fetches (the cache serves it)."""
    ds = _remote(corpus, tmp_path / "cache", 20, shuffle=True)
    assert sorted(s["id"] for s in ds) == list(range(N))
    first = _fetched(fetch_log)
    assert first == collections.Counter(s.name for s in ds.index.shards)
    ds.set_epoch(1)
    assert sorted(s["id"] for s in ds) == list(range(N))
    assert _fetched(fetch_log) == first


def test_a_reader_pins_at_most_its_open_shards_plus_readahead(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mid-epoch, what clear() cannot evict is the open readers' shards and the read-ahead."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    ds = _remote(corpus, tmp_path / "cache", 12)
    it = iter(ds)
    for _ in range(300):  # well into the epoch
        next(it)
    remote = ds._remote_shards()
    assert remote is not None
    plan, cursor = remote.plan
    ahead = plan.window(cursor + 1, 2)
    assert remote.readahead.wait_reserved(ahead, timeout=30)
    remote.cache.clear()
    left = _disk_bytes(tmp_path / "cache")
    biggest = max(s.bytes for s in ds.index.shards)
    assert 0 < left <= (OPEN_SHARDS + 2) * biggest
    rest = [s["id"] for s in it]
    assert rest == list(range(300, N))


def test_readahead_fetches_the_next_shards_of_the_plan_before_they_are_opened(
    corpus: str, tmp_path: Path, fetch_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening shard k starts downloads of the next readahead_shards shards of this plan."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "3")
    ds = _remote(corpus, tmp_path / "cache", 12)
    first = ds.sample_order()[0]
    ds[int(first)]  # opens shard 0 only
    remote = ds._remote_shards()
    assert remote is not None
    assert remote.readahead.wait_reserved([1, 2, 3], timeout=30)
    names = [s.name for s in ds.index.shards]
    assert _fetched(fetch_log) == collections.Counter(names[:4])


def test_readahead_runs_across_the_epoch_boundary(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the last shard of epoch e, the first shards of epoch e+1 are already being reserved
    (iteration reads 256 ids at a time, each chunk's shards in shard order)."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    ds = _remote(corpus, tmp_path / "cache", 12, shuffle=True)
    offsets = ds.index.sample_offsets
    last = chunk_shards(ds.sample_order(0)[-(N % 256 or 256) :], offsets)[-1]
    upcoming = chunk_shards(ds.sample_order(1)[:256], offsets).tolist()
    next_epoch = [k for k in upcoming if k != last]
    assert len(list(ds)) == N  # epoch 0, in its own order
    remote = ds._remote_shards()
    assert remote is not None
    assert remote.readahead.wait_reserved(next_epoch[:1], timeout=30)


def test_cache_limit_below_the_working_set_is_refused_at_construction(
    corpus: str, tmp_path: Path
) -> None:
    """A cache that cannot hold open shards plus read-ahead is a CacheError naming cache_limit."""
    with pytest.raises(CacheError, match=r"cache_limit = .* cannot hold the working set"):
        _remote(corpus, tmp_path / "cache", 2)


def test_working_set_counts_only_shards_that_exist(tmp_path: Path) -> None:
    """A one-shard remote dataset needs room for that one shard, not for OPEN_SHARDS +
    read-ahead copies of it: a limit just above the shard (plus the few KiB of index copy and
    plan files, which count against the limit too) is accepted."""
    root = tmp_path / "one"
    with ShardWriter(str(root)) as w:
        for i in range(200):
            w.write({"id": i, "x": np.full(160, i, np.int64)})
    size = StreamingDataset(str(root)).index.shards[0].bytes
    limit = size + 64 * 1024
    ds = StreamingDataset("slfake://" + str(root), cache_dir=tmp_path / "c", cache_limit=limit)
    assert [int(ds[i]["id"]) for i in (0, 199)] == [0, 199]
    # Each reading process reserves its working set at its first read (processes that do not
    # know of each other must not starve each other), so two workers need room for two.
    ds = StreamingDataset("slfake://" + str(root), cache_dir=tmp_path / "c", cache_limit=2 * limit)
    loader = StreamLoader(ds, batch_size=50, num_workers=2, multiprocessing_context="fork")
    assert sum(len(b["id"]) for b in loader) == 200
    with pytest.raises(CacheError, match=r"the working set of 1 shard.* capped at the dataset.s 1"):
        StreamingDataset("slfake://" + str(root), cache_dir=tmp_path / "c", cache_limit=size - 1)


def test_cache_too_small_for_the_workers_is_refused_by_the_loader_before_they_start(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit enough for the trainer alone but not for two workers: StreamLoader's
    constructor raises CacheError itself (not a WorkerError from inside a worker), and the
    message shows each size once."""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "0")
    ds = _remote(corpus, tmp_path / "cache", OPEN_SHARDS)  # one process: 2 open shards fit
    StreamLoader(ds, batch_size=16, num_workers=1)
    with pytest.raises(CacheError) as info:
        StreamLoader(ds, batch_size=16, num_workers=2)
    assert type(info.value) is CacheError
    message = str(info.value)
    assert "2 reading process(es) x (2 open + 0 read-ahead)" in message, message
    assert re.search(r"cache_limit = [\d.]+ KiB \([\d,]+ B\) cannot hold", message), message
    assert re.search(r": [\d.]+ KiB \([\d,]+ B\) for the largest 4", message), message


def test_an_unwritable_cache_dir_is_refused_at_construction(corpus: str, tmp_path: Path) -> None:
    """cache_dir under a regular file: CacheError naming the directory, before any download."""
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CacheError, match=r"cache_dir .*file/cache"):
        _remote(corpus, tmp_path / "file" / "cache", 12)


def test_loader_workers_share_one_cache_one_download_per_shard(
    corpus: str, tmp_path: Path, fetch_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two forked workers over a cache smaller than the corpus: all samples once, each shard
    downloaded once for both workers. (A small ring keeps the workers within a few batches of
    each other, as real batch sizes do; the cross-process eviction order does the rest. The
    cache leaves room for the workers to drift two shards apart: a loaded CI machine stalls
    one worker now and then.)"""
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "2")
    ds = _remote(corpus, tmp_path / "cache", 10)
    assert ds.num_shards > 10
    loader = StreamLoader(
        ds, batch_size=16, num_workers=2, multiprocessing_context="fork", ring_size=64 * 1024
    )
    ids = np.concatenate([b["id"].numpy() for b in loader])
    assert sorted(ids.tolist()) == list(range(N))
    fetched = _fetched(fetch_log)
    names = [s.name for s in ds.index.shards]
    # Read-ahead crosses into the next epoch (readahead_shards = 2): its first two shards may
    # already have been fetched again for that pass.
    next_pass = set(names[:2])
    assert {n: fetched[n] for n in names if n not in next_pass} == dict.fromkeys(
        set(names) - next_pass, 1
    )
    assert all(fetched[n] in (1, 2) for n in next_pass)


def test_copies_in_workers_use_the_cache_settled_when_the_dataset_was_made(
    corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose environment differs (spawn, fork server) still shares the trainer's cache."""
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "trainer"))
    ds = StreamingDataset("slfake://" + corpus, cache_limit="10MB")
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "elsewhere"))
    copy = pickle.loads(pickle.dumps(ds))
    assert copy[0]["id"] == 0
    assert (tmp_path / "trainer").is_dir()
    assert not (tmp_path / "elsewhere").exists()


def test_a_forked_child_of_a_reading_process_reads_and_exits_cleanly(
    corpus: str, tmp_path: Path
) -> None:
    """fork while read-ahead runs: the child reads through its own cache state and exits
    normally (finalizers included)."""
    script = textwrap.dedent(
        f"""
        import os, sys
        import fsspec
        from fsspec.spec import AbstractFileSystem
        from streamload import StreamingDataset

        class FakeRemote(AbstractFileSystem):
            protocol = "slfake"
            def _open(self, path, mode="rb", **kwargs):
                return open(path, mode)
            def info(self, path, **kwargs):
                return {{"name": path, "size": os.stat(path).st_size, "type": "file"}}

        fsspec.register_implementation("slfake", FakeRemote, clobber=True)
        ds = StreamingDataset("slfake://{corpus}", cache_dir={str(tmp_path / "cache")!r},
                              cache_limit="10MB")
        assert ds[0]["id"] == 0  # read-ahead starts
        pid = os.fork()
        if pid == 0:
            ok = ds[{N - 1}]["id"] == {N - 1}
            sys.exit(0 if ok else 3)  # a normal exit: finalizers run
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0"]


def test_loader_stats_count_the_cache_downloads(
    corpus: str, tmp_path: Path, fetch_log: Path
) -> None:
    """loader.stats()['cache']: the first epoch misses and downloads every shard once (the bytes
    the store wrapper saw), the second epoch is served from the cache (hits, no new bytes); the
    time blocked on downloads is the 'fetch' stage (0 for local data)."""
    from streamload import StreamLoader, telemetry

    telemetry.CACHE.reset()
    ds = _remote(corpus, tmp_path / "cache", 100)
    loader = StreamLoader(ds, batch_size=64)
    assert sorted(int(i) for b in loader for i in b["id"]) == list(range(N))
    first = loader.stats()["cache"]
    shards = ds.index.shards
    assert first["enabled"] is True
    assert sum(_fetched(fetch_log).values()) == len(shards)
    assert first["bytes_downloaded"] == sum(s.bytes for s in shards)
    assert first["misses"] >= len(shards) and first["evictions"] == 0
    assert loader.stats()["stages"]["busy_s"]["fetch"] > 0  # time blocked on downloads
    list(loader)
    second = loader.stats()["cache"]
    assert second["bytes_downloaded"] == first["bytes_downloaded"]
    assert second["hits"] > first["hits"]
    assert sum(_fetched(fetch_log).values()) == len(shards)


def test_local_data_spends_no_time_in_the_fetch_stage(corpus: str) -> None:
    """Local shards are read in place: the 'fetch' stage stays at zero."""
    from streamload import StreamLoader

    loader = StreamLoader(StreamingDataset(corpus), batch_size=64)
    assert sum(len(b["id"]) for b in loader) == N
    assert loader.stats()["stages"]["busy_s"]["fetch"] == 0


_READER = textwrap.dedent(
    """
    import os, sys, time
    import fsspec
    from fsspec.spec import AbstractFileSystem
    import streamload as sl

    class FakeRemote(AbstractFileSystem):
        protocol = "slfake"
        def _open(self, path, mode="rb", **kwargs):
            return open(path, mode)
        def info(self, path, **kwargs):  # mtime is a version tag: index.json is kept
            st = os.stat(path)
            return {"name": path, "size": st.st_size, "type": "file", "mtime": st.st_mtime}

    fsspec.register_implementation("slfake", FakeRemote, clobber=True)
    corpus, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.monotonic()
    try:
        ds = sl.StreamingDataset("slfake://" + corpus, cache_dir=cache, cache_limit=limit)
        ids = sorted(s["id"] for s in ds)
        print("read", len(ids), len(set(ids)), round(time.monotonic() - start, 1))
    except sl.CacheError as exc:
        print("CacheError", round(time.monotonic() - start, 1), exc)
    """
)


def _readers(corpus: str, cache: Path, limit: int, n: int) -> list[str]:
    """Start ``n`` independent processes reading the whole corpus through one cache; their
    one-line results (they know nothing of each other: no LOCAL_WORLD_SIZE)."""
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"}
    env["STREAMLOAD_READAHEAD_SHARDS"] = "2"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _READER, corpus, str(cache), str(limit)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(n)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        outs.append(out.strip())
    return outs


def test_processes_that_cannot_all_fit_fail_fast_with_the_sizes(
    corpus: str, tmp_path: Path
) -> None:
    """Four processes sharing a cache that holds one process's working set: each either reads
    every sample once or fails at its first read with CacheError showing every process's share,
    instead of all waiting minutes for room the others hold."""
    biggest = max(s.bytes for s in StreamingDataset(corpus).index.shards)
    limit = 5 * biggest  # one process: 2 open + 2 read-ahead shards, its plan, the index copy
    outs = _readers(corpus, tmp_path / "cache", limit, 4)
    read = [o for o in outs if o.startswith("read")]
    refused = [o for o in outs if o.startswith("CacheError")]
    assert read and len(read) + len(refused) == 4, outs
    assert all(o.split()[1:3] == [str(N), str(N)] for o in read), outs
    for out in refused:
        assert "cannot hold the working sets of every process reading through it" in out, out
        assert "other process(es) already reserved" in out and "pid " in out, out
        assert float(out.split()[1]) < 60, out  # refused at once, not after ROOM_TIMEOUT_S


def test_cache_limit_bounds_plan_files_too(tmp_path: Path) -> None:
    """Four processes over 300 one-sample shards (a plan of 300 names each) whose working sets
    fit: everything the cache writes (shards, downloads in progress, plan files, SOURCE) stays
    within cache_limit at every moment."""
    import threading

    corpus = tmp_path / "corpus"
    with ShardWriter(str(corpus), shard_size=1) as w:  # one sample per shard
        for i in range(300):
            w.write({"id": i, "x": np.full(64, i, np.int64)})
    biggest = max(s.bytes for s in StreamingDataset(str(corpus)).index.shards)
    limit = 4 * (4 * biggest + 4200) + 1000  # 4 x (2 open + 2 read-ahead, a plan), SOURCE
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / ".lock").touch()
    peaks: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            fd = os.open(cache / ".lock", os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                total = 0
                for root, _, files in os.walk(cache):
                    for f in files:
                        with contextlib.suppress(FileNotFoundError):
                            total += os.path.getsize(os.path.join(root, f))
                peaks.append(total)
            finally:
                os.close(fd)
            done.wait(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outs = _readers(str(corpus), cache, limit, 4)
    finally:
        done.set()
        sampler.join()
    assert all(o.startswith("read 300 300") for o in outs), outs
    assert max(peaks) <= limit, (max(peaks), limit)
    assert max(peaks) > limit // 2  # the cache was really in use


def test_files_of_a_killed_process_are_gone_when_the_next_process_opens_the_cache(
    tmp_path: Path,
) -> None:
    """A process SIGKILLed mid-download, with a published plan and an index copy half written,
    leaves nothing behind once the next process opens the cache (before any download of its own)."""
    from streamload.cache.disk import DiskCache

    killer = textwrap.dedent(
        """
        import fcntl, os, signal, sys
        from streamload.cache.disk import DiskCache
        from streamload.cache.layout import ShardKey, dataset_dir_name
        cache_dir, url = sys.argv[1], "s3://bucket/ds"
        cache = DiskCache(cache_dir, 10**6)
        cache.announce(url, ["0123456789abcdef-shard-00000.arrow"], 0)
        directory = os.path.join(cache_dir, dataset_dir_name(url))
        lock = os.open(os.path.join(directory, "index.json.lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(lock, fcntl.LOCK_EX)  # as the index copy does while it writes
        with open(os.path.join(directory, f"index.json.{os.getpid()}.tmp"), "wb") as f:
            f.write(b"{" * 1000)
        def fetch(f):
            f.write(b"x" * 5000)
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        cache.pin(ShardKey(url, "shard-00000.arrow", 10_000, "xxh3_64", "0" * 16), fetch)
        """
    )
    cache_dir = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", killer, str(cache_dir)], timeout=120)
    assert proc.returncode == -9
    left = sorted(name for _, _, files in os.walk(cache_dir) for name in files if name != "SOURCE")
    assert any(n.startswith(".plan.") for n in left) and any(".tmp" in n for n in left), left
    DiskCache(cache_dir, 10**6)
    left = sorted(
        name
        for _, _, files in os.walk(cache_dir)
        for name in files
        if not (name == "SOURCE" or name.endswith(".lock"))
    )
    assert left == [], left
