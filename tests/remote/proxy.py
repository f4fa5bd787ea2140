"""A fault-injecting HTTP reverse proxy for the remote tests (runs on a `servers.LoopThread`).

It forwards every request to one upstream (moto, fake-gcs-server, the HTTP file server) and
counts what it sees, so tests can assert how many requests a read really made. Faults are
injected per request, chosen by rules the test sets:

- ``fail_next(n, kind, method=..., path=...)``: the next ``n`` matching requests fail
  (deterministic; rules are consumed in the order they were added);
- ``fail_randomly(rate, kinds, seed=...)``: each matching request fails with probability
  ``rate``, drawing the kind from ``kinds`` with a seeded generator.

Fault kinds: ``slowdown`` (503 with S3's SlowDown XML), ``500`` (InternalError XML), ``502``,
``504``, ``429``, ``401`` (ExpiredToken), ``403``, ``404``, ``reset`` (the connection is closed with a TCP RST before any
response), ``truncate`` (the upstream response with its full Content-Length but only half of
the body, then the connection closes; a reset where there is no body to cut) and ``stall`` (no
response until ``stall_seconds`` pass or the proxy stops; the request then goes through).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from servers import AiohttpServer, LoopThread

KINDS = (
    "slowdown", "500", "502", "504", "429", "401", "403", "404", "reset", "truncate", "stall"
)  # fmt: skip
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
}
_ERROR_XML = {
    "slowdown": (503, "SlowDown", "Please reduce your request rate."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "502": (502, "BadGateway", "Bad gateway."),
    "504": (504, "GatewayTimeout", "Gateway timeout."),
    "429": (429, "TooManyRequests", "Too many requests."),
    "401": (401, "ExpiredToken", "The provided token has expired."),
    "403": (403, "AccessDenied", "Access Denied"),
    "404": (404, "NoSuchKey", "The specified key does not exist."),
}


@dataclass
class _Rule:
    kind: str
    remaining: int
    method: str | None
    path: str | None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or self.path in path
        )


class FaultProxy:
    """Reverse proxy to ``upstream`` with fault injection and request counts (see module doc)."""

    def __init__(self, loop: LoopThread, upstream: str, *, stall_seconds: float = 30.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.stall_seconds = stall_seconds
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._random: tuple[float, tuple[str, ...], random.Random, str | None, str | None] | None
        self._random = None
        self._seen: Counter[tuple[str, str]] = Counter()
        self.injected: Counter[str] = Counter()
        self._loop = loop
        self._release = loop.run(_make_event())
        self._session: aiohttp.ClientSession = loop.run(_make_session())
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._server = AiohttpServer(loop, app)
        self.url = self._server.url

    # -- control (called from the test thread) ------------------------------------------------

    def fail_next(
        self, n: int, kind: str, *, method: str | None = None, path: str | None = None
    ) -> None:
        """Make the next ``n`` requests matching ``method`` and the ``path`` substring fail."""
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {KINDS}")
        with self._lock:
            self._rules.append(_Rule(kind, n, method, path))

    def fail_randomly(
        self,
        rate: float,
        kinds: tuple[str, ...] = ("slowdown", "reset"),
        *,
        seed: int = 0,
        method: str | None = "GET",
        path: str | None = None,
    ) -> None:
        """Fail each matching request with probability ``rate`` (seeded, reproducible)."""
        for kind in kinds:
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; known: {KINDS}")
        with self._lock:
            self._random = (rate, tuple(kinds), random.Random(seed), method, path)

    def clear(self) -> None:
        """Remove every fault rule (counts are kept)."""
        with self._lock:
            self._rules.clear()
            self._random = None

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests seen so far with this method and containing this path substring."""
        with self._lock:
            return sum(
                n
                for (m, p), n in self._seen.items()
                if (method is None or m == method) and (path is None or path in p)
            )

    def reset_counts(self) -> None:
        """Forget the requests seen and the faults injected so far."""
        with self._lock:
            self._seen.clear()
            self.injected.clear()

    def stop(self) -> None:
        """Release stalled requests, stop serving and close the upstream session."""
        self._loop.loop.call_soon_threadsafe(self._release.set)
        self._server.stop()
        self._loop.run(self._session.close())

    # -- serving (event loop thread) ---------------------------------------------------------

    def _choose(self, method: str, path: str) -> str | None:
        with self._lock:
            self._seen[(method, path)] += 1
            for rule in self._rules:
                if rule.remaining > 0 and rule.matches(method, path):
                    rule.remaining -= 1
                    self.injected[rule.kind] += 1
                    return rule.kind
            if self._random is not None:
                rate, kinds, rng, want_method, want_path = self._random
                matches = (want_method is None or want_method == method) and (
                    want_path is None or want_path in path
                )
                if matches and rng.random() < rate:
                    kind = rng.choice(kinds)
                    self.injected[kind] += 1
                    return kind
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = self._choose(request.method, request.path)
        if kind in _ERROR_XML:
            status, code, message = _ERROR_XML[kind]
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<Resource>{request.path}</Resource><RequestId>proxy</RequestId></Error>"
            )
            await request.read()
            return web.Response(status=status, text=body, content_type="application/xml")
        if kind == "reset":
            await request.read()
            _reset(request)
            raise asyncio.CancelledError  # the connection is gone: nothing left to answer
        if kind == "stall":
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.stall_seconds)
        try:
            return await self._forward(request, truncate=kind == "truncate")
        except ConnectionResetError:  # the client gave up (e.g. its time-out cut a stall)
            raise asyncio.CancelledError from None

    async def _forward(self, request: web.Request, *, truncate: bool) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            length = upstream.headers.get("Content-Length")
            response.content_length = int(length) if length is not None else len(payload)
            if truncate and (request.method == "HEAD" or len(payload) < 2):
                _reset(request)  # nothing to cut short: fail the request as a reset instead
                raise asyncio.CancelledError
            await response.prepare(request)
            if request.method == "HEAD":
                await response.write_eof()
                return response
            if truncate:
                await response.write(payload[: len(payload) // 2])
                _reset(request, graceful=True)
                raise asyncio.CancelledError
            await response.write(payload)
            await response.write_eof()
            return response


def _reset(request: web.Request, *, graceful: bool = False) -> None:
    """Close the client connection: with a RST (reset) or a FIN after what was written."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and not graceful:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if graceful:
        transport.close()  # flushes the half body, then FIN: a short body, not a reset
    else:
        transport.abort()


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


async def _make_session() -> aiohttp.ClientSession:
    # auto_decompress=False: bodies pass through byte for byte, with their Content-Encoding.
    return aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=60),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
    )
