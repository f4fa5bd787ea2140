"""store functions on local and in-memory filesystems (no server): exact reads, chunked
downloads, argument checks, and which filesystems count as remote."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import fsspec
import pytest

from streamload.errors import StoreError
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy

POLICY = RetryPolicy(attempts=2, backoff=0.0, timeout=5.0)
DATA = os.urandom(10_000)


@pytest.fixture
def local_file(tmp_path: Path) -> tuple[object, str]:
    path = tmp_path / "obj"
    path.write_bytes(DATA)
    fs, root = store.resolve(str(tmp_path))
    return fs, store.join(root, "obj")


def test_local_paths_resolve_to_the_local_filesystem_read_in_place(tmp_path: Path) -> None:
    """A plain path is the local filesystem, absolute, mmappable, and not remote."""
    fs, root = store.resolve(str(tmp_path / "ds"))
    assert root == str(tmp_path / "ds")
    assert store.local_path(fs, root) == root
    assert not store.is_remote(fs) and store.client(fs) is fs


def test_memory_urls_are_not_remote() -> None:
    """memory:// goes through fsspec as is: no client replacement, no retry defaults."""
    fs, root = store.resolve("memory://ds-unit")
    assert root.endswith("ds-unit")
    assert not store.is_remote(fs) and store.client(fs) is fs


@pytest.mark.parametrize("concurrency", [1, 3])
@pytest.mark.parametrize("chunk_size", [1, 999, 10_000, 50_000])
def test_download_writes_the_object_exactly(
    local_file: tuple[object, str], chunk_size: int, concurrency: int
) -> None:
    """Any chunk size and concurrency writes every byte once, in order."""
    fs, path = local_file
    out = io.BytesIO()
    if chunk_size == 1:
        out.write(b"prefix")  # download writes from the file object's current position
    n = store.download(fs, path, out, chunk_size=chunk_size, concurrency=concurrency, policy=POLICY)
    assert n == len(DATA)
    assert out.getvalue() == (b"prefix" if chunk_size == 1 else b"") + DATA


def test_download_of_an_empty_object_writes_nothing(tmp_path: Path) -> None:
    """A zero-byte object makes no range request and writes nothing."""
    (tmp_path / "empty").write_bytes(b"")
    fs, root = store.resolve(str(tmp_path))
    out = io.BytesIO()
    assert store.download(fs, store.join(root, "empty"), out, policy=POLICY) == 0
    assert out.getvalue() == b""


def test_memory_filesystem_round_trip() -> None:
    """write_bytes, read_bytes, read_range, exists and remove work on memory://."""
    fs, root = store.resolve("memory://store-unit")
    path = store.join(root, "blob")
    store.write_bytes(fs, path, DATA, policy=POLICY)
    assert store.exists(fs, path, policy=POLICY)
    assert store.read_bytes(fs, path, expected_size=len(DATA), policy=POLICY) == DATA
    assert store.read_range(fs, path, 5, 500, policy=POLICY) == DATA[5:500]
    store.remove(fs, path, policy=POLICY)
    assert not store.exists(fs, path, policy=POLICY)


def test_reading_past_the_end_is_an_error_not_short_data(local_file: tuple[object, str]) -> None:
    """A range past the end of the object never comes back short: StoreError after the attempts."""
    fs, path = local_file
    with pytest.raises(StoreError, match=r"after 2 attempts.*got 10 of 20 bytes"):
        store.read_range(fs, path, len(DATA) - 10, len(DATA) + 10, policy=POLICY)


def test_wrong_expected_size_is_refused(local_file: tuple[object, str]) -> None:
    """read_bytes with a size the object does not have fails instead of returning it."""
    fs, path = local_file
    with pytest.raises(StoreError, match="larger than expected"):
        store.read_bytes(fs, path, expected_size=len(DATA) - 1, policy=POLICY)


def test_missing_object_is_enoent_at_once(tmp_path: Path) -> None:
    """A missing file is StoreError(ENOENT) naming it, without retries."""
    calls = 0

    def count(_: float) -> None:
        nonlocal calls
        calls += 1

    fs, root = store.resolve(str(tmp_path))
    with pytest.raises(StoreError) as caught:
        store.read_bytes(fs, store.join(root, "nope"), policy=RetryPolicy(attempts=5, sleep=count))
    assert caught.value.errno == errno.ENOENT and "nope" in str(caught.value)
    assert calls == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"chunk_size": 0}, "chunk_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"expected_size": -1}, "expected_size"),
    ],
)
def test_download_argument_checks(
    local_file: tuple[object, str], kwargs: dict[str, int], message: str
) -> None:
    """Nonsense chunk sizes, concurrency or sizes are ValueErrors naming the argument."""
    fs, path = local_file
    with pytest.raises(ValueError, match=message):
        store.download(fs, path, io.BytesIO(), policy=POLICY, **kwargs)  # type: ignore[arg-type]


def test_unknown_protocol_is_a_store_error() -> None:
    """A URL with a protocol fsspec does not know is StoreError naming the URL."""
    with pytest.raises(StoreError, match="nosuchproto://x"):
        store.resolve("nosuchproto://x")


def test_http_url_resolves_without_network() -> None:
    """Resolving an http URL only builds a client; nothing is requested until a read."""
    fs, root = store.resolve("http://127.0.0.1:9/ds/")
    assert store.is_remote(fs) and root == "http://127.0.0.1:9/ds"
    assert store.url_of(fs, store.join(root, "index.json")) == "http://127.0.0.1:9/ds/index.json"
    assert fsspec.get_filesystem_class("http") is type(fs)


def test_a_filesystem_carries_the_policy_it_was_resolved_with() -> None:
    """Requests through a remote filesystem use the policy `resolve` got, also through the
    per-process client; a pickled copy forgets it until `attach_policy` gives it back."""
    import pickle

    policy = RetryPolicy(attempts=2, backoff=0.0, timeout=3.0)
    fs, _root = store.resolve("http://127.0.0.1:9/ds/", policy=policy)
    assert store.policy_of(fs) is policy
    assert store.policy_of(store.client(fs)) is policy
    copy = pickle.loads(pickle.dumps(fs))
    assert store.policy_of(copy) is store.DEFAULT_POLICY
    store.attach_policy(copy, policy)
    assert store.policy_of(copy) is policy
    local, _ = store.resolve("/tmp", policy=policy)  # shared local instances are never tagged
    assert store.policy_of(local) is store.DEFAULT_POLICY
