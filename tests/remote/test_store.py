"""The store against real servers: datasets written to s3:// and gs:// with ShardWriter and read
back with StreamingDataset, http(s):// reads, chunked downloads, fork safety, and the errors a
user sees when a client package is missing or a server ignores Range."""

from __future__ import annotations

import io
import os
import select
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from servers import Remote

import streamload as sl
from streamload.dataset.inspect import verify_dataset
from streamload.errors import FormatError, StoreError
from streamload.format.index import load_index
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy


def _samples(n: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "tokens": np.arange(i, i + 64, dtype=np.int32), "text": f"sample {i}"}
        for i in range(n)
    ]


def _write(url: str, storage_options: dict[str, Any], n: int = 300) -> None:
    with sl.ShardWriter(url, shard_size="8KiB", storage_options=storage_options) as w:
        for sample in _samples(n):
            w.write(sample)


def _assert_reads_back(url: str, storage_options: dict[str, Any], n: int = 300) -> None:
    ds = sl.StreamingDataset(url, storage_options=storage_options)
    assert len(ds) == n and ds.num_shards > 1
    got = list(ds)
    assert [s["id"] for s in got] == list(range(n))
    for sample, want in zip(got, _samples(n), strict=True):
        assert np.array_equal(sample["tokens"], want["tokens"]) and sample["text"] == want["text"]
    assert ds[n - 1]["text"] == f"sample {n - 1}"


@pytest.mark.parametrize("backend", ["s3_url", "gcs_url"])
def test_shardwriter_dataset_round_trips_through_an_object_store(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """ShardWriter writes to s3:// / gs://; StreamingDataset reads index and every sample back."""
    remote: Remote = request.getfixturevalue(backend)
    _write(remote.url, remote.storage_options)
    _assert_reads_back(remote.url, remote.storage_options)
    assert verify_dataset(remote.url, remote.storage_options)[0].ok


def test_object_store_holds_only_final_objects(s3_url: Remote) -> None:
    """No temp keys on the store: only shard-NNNNN.arrow and index.json, every shard verified."""
    _write(s3_url.url, s3_url.storage_options)
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    names = sorted(p.rsplit("/", 1)[-1] for p in store.listdir(fs, root))
    index = load_index(s3_url.url, s3_url.storage_options)
    assert names == sorted(["index.json", *(s.name for s in index.shards)])
    assert all(check.ok for check in verify_dataset(s3_url.url, s3_url.storage_options))


def test_failed_write_leaves_no_index_and_no_partial_shard(s3_url: Remote) -> None:
    """An exception in the with-block publishes no index.json and no unfinished shard."""
    with (
        pytest.raises(RuntimeError, match="boom"),
        sl.ShardWriter(s3_url.url, shard_size="8KiB", storage_options=s3_url.storage_options) as w,
    ):
        for sample in _samples(100):
            w.write(sample)
        raise RuntimeError("boom")
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    assert not store.exists(fs, store.join(root, "index.json"))
    with pytest.raises(FormatError, match=r"index\.json not found"):
        sl.StreamingDataset(s3_url.url, storage_options=s3_url.storage_options)


def test_existing_remote_dataset_is_refused_unless_overwrite(s3_url: Remote) -> None:
    """Writing over an s3 dataset needs overwrite=True; the new one replaces the old."""
    _write(s3_url.url, s3_url.storage_options, n=300)
    with pytest.raises(StoreError, match="already holds a dataset"):
        sl.ShardWriter(s3_url.url, storage_options=s3_url.storage_options)
    with sl.ShardWriter(
        s3_url.url, shard_size="8KiB", storage_options=s3_url.storage_options, overwrite=True
    ) as w:
        for sample in _samples(50):
            w.write(sample)
    _assert_reads_back(s3_url.url, s3_url.storage_options, n=50)
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    shards = [p for p in store.listdir(fs, root) if "shard-" in p]
    assert len(shards) == len(load_index(s3_url.url, s3_url.storage_options).shards)


def test_shardwriter_retries_failed_uploads(faulty_s3: Remote) -> None:
    """PUTs failing with SlowDown, 500 or a reset are retried; the dataset arrives intact."""
    proxy = faulty_s3.proxy
    assert proxy is not None
    proxy.fail_next(1, "slowdown", method="PUT", path="shard-00000")
    proxy.fail_next(1, "500", method="PUT", path="shard-00001")
    proxy.fail_next(1, "reset", method="PUT", path="index.json")
    _write(faulty_s3.url, faulty_s3.storage_options, n=100)
    assert sum(proxy.injected.values()) == 3
    shards = load_index(faulty_s3.url, faulty_s3.storage_options).shards
    assert proxy.count("PUT") == len(shards) + 1 + 3  # every object once, plus the retries
    _assert_reads_back(faulty_s3.url, faulty_s3.storage_options, n=100)


def test_http_dataset_reads(http_url: Remote) -> None:
    """A dataset served over http:// (Range-capable server) opens and reads every sample."""
    assert http_url.local_dir is not None
    _write(str(http_url.local_dir), {})
    _assert_reads_back(http_url.url, {})


def test_index_read_retries_through_throttling(faulty_s3: Remote) -> None:
    """StreamingDataset(s3://...) reads index.json through the retrying store."""
    assert faulty_s3.direct is not None and faulty_s3.proxy is not None
    _write(faulty_s3.direct.url, faulty_s3.direct.storage_options, n=50)
    faulty_s3.proxy.fail_next(2, "slowdown", path="index.json")
    faulty_s3.proxy.fail_next(1, "reset", path="index.json")
    ds = sl.StreamingDataset(faulty_s3.url, storage_options=faulty_s3.storage_options)
    assert len(ds) == 50
    assert faulty_s3.proxy.injected["slowdown"] == 2 and faulty_s3.proxy.injected["reset"] == 1


def test_missing_remote_dataset_is_a_format_error_naming_the_url(s3_url: Remote) -> None:
    """No index.json at an s3 URL: FormatError naming it, after one request (404 is final)."""
    with pytest.raises(FormatError, match=r"s3://t-[0-9a-f]+/ds/index.json not found"):
        sl.StreamingDataset(s3_url.url, storage_options=s3_url.storage_options)


def test_download_streams_in_chunks_and_writes_every_byte(
    s3_url: Remote, fast_policy: RetryPolicy
) -> None:
    """download() copies an object exactly, chunk by chunk, with or without a known size."""
    data = os.urandom(300_000)
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    path = store.join(root, "blob")
    store.write_bytes(fs, path, data, policy=fast_policy)
    for expected in (None, len(data)):
        out = io.BytesIO()
        n = store.download(
            fs, path, out, expected_size=expected, chunk_size=65536, policy=fast_policy
        )
        assert n == len(data) and out.getvalue() == data


def test_upload_and_read_range_on_gcs(gcs_url: Remote, tmp_path: Path) -> None:
    """upload() publishes a local file on gs://; read_range returns exact slices of it."""
    data = os.urandom(100_000)
    local = tmp_path / "blob"
    local.write_bytes(data)
    fs, root = store.resolve(gcs_url.url, gcs_url.storage_options)
    store.upload(fs, str(local), store.join(root, "blob"))
    assert store.info(fs, store.join(root, "blob"))["size"] == len(data)
    assert store.read_range(fs, store.join(root, "blob"), 1234, 56789) == data[1234:56789]


def test_a_forked_child_reads_with_the_parents_filesystem(s3_url: Remote) -> None:
    """fsspec's async clients refuse to run after fork; the store makes the child its own."""
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    path = store.join(root, "obj")
    store.write_bytes(fs, path, b"hello from s3")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave without running the parent's atexit/pytest code
        status = 1
        try:
            os.close(read_fd)
            os.write(write_fd, store.read_range(fs, path, 0, 5))
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], 60)
        got = os.read(read_fd, 100) if ready else b""
    finally:
        os.close(read_fd)
        _, status = os.waitpid(pid, 0)
    assert got == b"hello" and os.waitstatus_to_exitcode(status) == 0
    assert store.client(fs) is fs  # the parent keeps its own client


def test_a_pickled_filesystem_gets_a_hardened_client(gcs_url: Remote) -> None:
    """A filesystem unpickled in another process (spawn) is replaced by a client with its
    internal retries off, as if made by resolve()."""
    import pickle

    fs, _ = store.resolve(gcs_url.url, gcs_url.storage_options)
    copy = pickle.loads(pickle.dumps(fs))
    live = store.client(copy)
    assert live is not copy or getattr(copy, "_streamload_pid", None) == os.getpid()
    assert "_request" in vars(live)  # gcsfs's retry decorator is bypassed on this instance


def test_missing_client_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without s3fs, opening s3:// says which extra to install."""

    def missing(protocol: str) -> Any:
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(store.fsspec, "get_filesystem_class", missing)
    with pytest.raises(StoreError, match=r"pip install streamload\[s3\]"):
        store.resolve("s3://bucket/ds")


def test_a_server_that_ignores_range_is_refused(tmp_path: Path, fast_policy: RetryPolicy) -> None:
    """python -m http.server answers a ranged GET with the whole file: refused, not sliced."""
    (tmp_path / "obj").write_bytes(b"0123456789" * 100)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fs, root = store.resolve(f"http://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(StoreError, match="ignores Range"):
            store.read_range(fs, store.join(root, "obj"), 10, 20, policy=fast_policy)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_read_range_rejects_a_reversed_range(s3_url: Remote) -> None:
    """start > end is a caller bug: ValueError naming the URL, before any request."""
    fs, root = store.resolve(s3_url.url, s3_url.storage_options)
    with pytest.raises(ValueError, match="need 0 <= start <= end"):
        store.read_range(fs, store.join(root, "obj"), 10, 5)
    assert store.read_range(fs, store.join(root, "obj"), 7, 7) == b""
