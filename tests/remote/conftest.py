"""Fixtures for tests against real storage servers on 127.0.0.1 (nothing assumed running).

Session-scoped servers, started on first use and stopped at the end of the session:
moto's S3 server, the Go fake-gcs-server, an aiohttp HTTP file server that honours Range. Per
test, a fresh location on one of them, as a `Remote` (``url``, ``storage_options``):

- ``s3_url``: ``s3://<fresh bucket>/ds`` on moto;
- ``gcs_url``: ``gs://<fresh bucket>/ds`` on fake-gcs-server;
- ``http_url``: ``http://127.0.0.1:PORT/<fresh dir>/ds``, read-only; write the files into
  ``remote.local_dir`` (a local path served at that URL);
- ``faulty_s3`` / ``faulty_gcs`` / ``faulty_http``: the same behind a `proxy.FaultProxy` (``remote.proxy``), with
  ``remote.direct`` the same location without the proxy (to set up data without faults).

Every remote test runs with its own cache dir (``STREAMLOAD_CACHE_DIR`` under tmp_path) and a
millisecond ``STREAMLOAD_RETRY_BACKOFF``; ``fast_policy`` is a policy to pass explicitly.

The environment the clients need (testing AWS credentials, no EC2 metadata probing, gcsfs's
gRPC bucket probe off) is set here, for the test session only, before gcsfs is imported.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Without this gcsfs probes for hierarchical-namespace buckets over gRPC (60 s time-outs).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }
)
for _name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "STORAGE_EMULATOR_HOST"):
    os.environ.pop(_name, None)

sys.path.append(str(Path(__file__).parent))  # the helper modules next to this file

from proxy import FaultProxy  # noqa: E402
from servers import FakeGCS, LoopThread, MotoS3, Remote, http_file_server  # noqa: E402

from streamload.store.retry import RetryPolicy  # noqa: E402


@pytest.fixture(autouse=True)
def _remote_test_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each remote test gets its own shard cache (never the user's) and millisecond backoff
    for code paths that take the retry policy from the configuration."""
    monkeypatch.setenv("STREAMLOAD_CACHE_DIR", str(tmp_path / "streamload-cache"))
    monkeypatch.setenv("STREAMLOAD_RETRY_BACKOFF", "0.005")


@pytest.fixture(scope="session")
def server_loop() -> Iterator[LoopThread]:
    """The event-loop thread that serves the aiohttp servers and fault proxies."""
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """moto's S3 server on a free 127.0.0.1 port."""
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[FakeGCS]:
    """fake-gcs-server (in memory) on a free 127.0.0.1 port."""
    server = FakeGCS()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def http_root(server_loop: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(directory, base URL) of an HTTP server that serves the directory with Range support."""
    directory = tmp_path_factory.mktemp("http-root")
    server = http_file_server(server_loop, directory)
    yield directory, server.url
    server.stop()


def _bucket() -> str:
    return f"t-{secrets.token_hex(6)}"


@pytest.fixture
def fast_policy() -> RetryPolicy:
    """A retry policy with millisecond backoff and a short per-request time-out."""
    return RetryPolicy(attempts=4, backoff=0.002, max_backoff=0.01, timeout=5.0)


@pytest.fixture
def s3_url(moto_s3: MotoS3) -> Remote:
    """``s3://<fresh bucket>/ds`` on moto, with the storage_options that reach it."""
    bucket = _bucket()
    moto_s3.create_bucket(bucket)
    return Remote(f"s3://{bucket}/ds", {"endpoint_url": moto_s3.url})


@pytest.fixture
def gcs_url(fake_gcs: FakeGCS) -> Remote:
    """``gs://<fresh bucket>/ds`` on fake-gcs-server, with the storage_options that reach it."""
    bucket = _bucket()
    fake_gcs.create_bucket(bucket)
    return Remote(f"gs://{bucket}/ds", {"endpoint_url": fake_gcs.url, "token": "anon"})


@pytest.fixture
def http_url(http_root: Any) -> Remote:
    """``http://127.0.0.1:PORT/<fresh dir>/ds``, served from ``local_dir`` (read-only)."""
    directory, base = http_root
    name = secrets.token_hex(6)
    local = directory / name / "ds"
    local.mkdir(parents=True)
    return Remote(f"{base}/{name}/ds", {}, local_dir=local)


@pytest.fixture
def faulty_s3(server_loop: LoopThread, s3_url: Remote) -> Iterator[Remote]:
    """``s3_url`` reached through a fault proxy (``.proxy``); ``.direct`` bypasses it."""
    proxy = FaultProxy(server_loop, s3_url.storage_options["endpoint_url"])
    yield replace(s3_url, storage_options={"endpoint_url": proxy.url}, proxy=proxy, direct=s3_url)
    proxy.stop()


@pytest.fixture
def faulty_http(server_loop: LoopThread, http_url: Remote, http_root: Any) -> Iterator[Remote]:
    """``http_url`` reached through a fault proxy (``.proxy``); ``.direct`` bypasses it."""
    _, base = http_root
    proxy = FaultProxy(server_loop, base)
    yield replace(http_url, url=http_url.url.replace(base, proxy.url), proxy=proxy, direct=http_url)
    proxy.stop()


@pytest.fixture
def faulty_gcs(server_loop: LoopThread, gcs_url: Remote) -> Iterator[Remote]:
    """``gcs_url`` reached through a fault proxy (``.proxy``); ``.direct`` bypasses it.

    Reads go through the proxy; resumable uploads are redirected to the server itself (its
    external URL), so write test data through ``.direct``.
    """
    proxy = FaultProxy(server_loop, gcs_url.storage_options["endpoint_url"])
    options = {**gcs_url.storage_options, "endpoint_url": proxy.url}
    yield replace(gcs_url, storage_options=options, proxy=proxy, direct=gcs_url)
    proxy.stop()
