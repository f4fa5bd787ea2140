"""RetryPolicy: the one place where streamload decides whether and when to try a request again.

A remote request either succeeds, fails *transiently* (throttling: HTTP 429, 503 / S3
``SlowDown``; server errors 500, 502, 504, 408; connection resets and refusals; a body shorter
than announced; a read time-out) or fails *for good* (403, 404, a bad request, anything
unknown). Expired credentials (HTTP 401, S3 ``ExpiredToken``) get one more attempt, for clients
whose credential provider refreshes them, never two. `RetryPolicy.call` runs a request at most
``attempts`` times in all, sleeping an exponential backoff with full jitter between attempts
(``uniform(0, min(max_backoff, backoff * 2**i))``, the AWS "full jitter" scheme: clients
hitting one throttled bucket spread out instead of retrying in lock step), and raises
`StoreError` naming the URL, the number of attempts and the last cause. A permanent failure
raises `StoreError` at once, after one attempt. `failure_counts()` counts failed attempts per
cause in this process.

Invariants: the number of requests one logical read makes is at most ``attempts`` — the
storage clients' own retry loops are switched off by `streamload.store` so attempts are never
multiplied; a truncated body is never returned (callers raise `TruncatedRead` instead, which
is transient); every attempt is bounded by ``timeout`` seconds (enforced by the store, which
cancels the request).

Classification looks at the exception and its ``__cause__``/``__context__`` chain for an HTTP
status (botocore ``ClientError.response``, aiohttp ``ClientResponseError.status``, gcsfs
``HttpError.code``) or an S3 error code, then at the exception type. The storage client
packages are optional, so their exception types are looked up only if they are importable.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streamload import telemetry
from streamload.errors import ConfigError, StoreError

T = TypeVar("T")
log = logging.getLogger(__name__)

# HTTP statuses worth another attempt: request timeout, throttling and transient server errors.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# S3 error codes that mean "slow down / try again", whatever status carried them.
# Expired credentials (HTTP 401, S3 ExpiredToken): retried once, for a client whose credential
# provider refreshes them (as gcsfs does for 401 "Invalid Credentials"); never more.
AUTH_EXPIRED_CODES = frozenset({"ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"})
RETRYABLE_S3_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
)
_STATUS_NAMES = {
    400: "bad request",
    401: "unauthorized",
    403: "access denied",
    404: "not found",
    408: "request timeout",
    416: "range not satisfiable",
    429: "too many requests",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


class TruncatedRead(OSError):
    """A response body ended before the bytes it announced (or the bytes we asked for)."""


class RequestTimeout(OSError):
    """One attempt took longer than the policy's ``timeout`` and was cancelled."""


@dataclass(frozen=True)
class Failure:
    """How one failed attempt is judged: retry or not, and a short human-readable cause."""

    retryable: bool
    cause: str
    auth: bool = False  # expired credentials: at most one retry per call


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> tuple[int | None, str | None]:
    """(HTTP status, S3 error code) carried by one exception, if any."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = response.get("Error", {}).get("Code")
        return (status if isinstance(status, int) else None), (str(code) if code else None)
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status < 600:
        return status, None
    code = getattr(exc, "code", None)  # gcsfs HttpError
    if type(exc).__name__ == "HttpError" and isinstance(code, int):
        return code, None
    if type(exc) is OSError and str(exc).startswith("Forbidden: "):
        return 403, None  # gcsfs reports a 403 as a bare OSError("Forbidden: <url>...")
    return None, None


@functools.cache
def _transient_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the connection or the body failed", from importable clients."""
    types: list[type[BaseException]] = [
        TruncatedRead,
        RequestTimeout,
        ConnectionError,  # resets, refusals, broken pipes
        TimeoutError,  # also asyncio.TimeoutError and socket.timeout on 3.11+
        asyncio.TimeoutError,
        socket.timeout,
    ]
    try:
        from fsspec.exceptions import FSTimeoutError

        types.append(FSTimeoutError)
    except ImportError:  # pragma: no cover - fsspec is a core dependency
        pass
    try:
        import aiohttp

        # Payload errors (body shorter than Content-Length), disconnects, connector errors.
        # ClientResponseError is handled by status first (a 404 must not be retried).
        types.append(aiohttp.ClientConnectionError)
        types.append(aiohttp.ClientPayloadError)
    except ImportError:
        pass
    try:
        from botocore.exceptions import HTTPClientError, IncompleteReadError, ResponseParserError

        # ResponseParserError: throttling responses sometimes carry invalid XML (s3fs #484).
        types += [HTTPClientError, IncompleteReadError, ResponseParserError]
    except ImportError:
        pass
    try:
        from gcsfs.retry import ChecksumError

        types.append(ChecksumError)
    except ImportError:
        pass
    try:
        import requests

        # gcsfs turns a 502 into requests' ProxyError.
        types += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    except ImportError:
        pass
    return tuple(types)


def classify(exc: BaseException) -> Failure:
    """Judge one failed attempt: transient (retry) or permanent, with a short cause.

    Args:
        exc: what the storage client raised.

    Returns:
        A `Failure`; ``cause`` names the HTTP status or S3 code when one is known.
    """
    for link in _chain(exc):
        status, code = _http_status(link)
        if status is None and code is None:
            continue
        label = f"HTTP {status}" if status is not None else "HTTP error"
        if status in _STATUS_NAMES:
            label += f" {_STATUS_NAMES[status]}"
        if code:
            label += f" ({code})"
        if status == 401 or code in AUTH_EXPIRED_CODES:
            return Failure(True, f"{label}: {_short(exc)}", auth=True)
        retryable = status in RETRYABLE_STATUS or code in RETRYABLE_S3_CODES
        return Failure(retryable, f"{label}: {_short(exc)}")
    if isinstance(exc, FileNotFoundError):
        return Failure(False, f"not found (404): {_short(exc)}")
    if isinstance(exc, PermissionError):
        return Failure(False, f"access denied (403): {_short(exc)}")
    text = str(exc)
    if "SlowDown" in text or "reduce your request rate" in text:
        return Failure(True, f"throttled (SlowDown): {_short(exc)}")
    for link in _chain(exc):
        if isinstance(link, _transient_types()):
            return Failure(True, f"{type(link).__name__}: {_short(link)}")
    return Failure(False, f"{type(exc).__name__}: {_short(exc)}")


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"RetryPolicy {name}: must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(
            f"RetryPolicy {name}: must be {'>= 0' if allow_zero else '> 0'}, got {value!r}"
        )


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter (see the module docstring).

    Attributes:
        attempts: total attempts per request, the first included (>= 1).
        backoff: base delay in seconds: the sleep before attempt ``i + 1`` is drawn from
            ``[0, min(max_backoff, backoff * 2**i)]``.
        max_backoff: cap on one sleep, seconds.
        timeout: time limit of one attempt, seconds (the store cancels a request past it).
    """

    attempts: int = 6
    backoff: float = 0.5
    max_backoff: float = 20.0
    timeout: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigError(f"RetryPolicy attempts: must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ConfigError(f"RetryPolicy attempts: must be >= 1, got {self.attempts}")
        _positive("backoff", self.backoff, allow_zero=True)
        _positive("max_backoff", self.max_backoff, allow_zero=True)
        _positive("timeout", self.timeout)

    @classmethod
    def from_config(cls, cfg: Any) -> RetryPolicy:
        """The policy of resolved settings ``cfg`` (a `streamload.config.Config`: ``retries``,
        ``retry_backoff``, ``request_timeout``); entry points resolve the configuration once
        and hand the policy down."""
        return cls(attempts=cfg.retries + 1, backoff=cfg.retry_backoff, timeout=cfg.request_timeout)

    def delay(self, retry: int) -> float:
        """The jittered sleep before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.max_backoff, self.backoff * (2.0 ** min(retry, 62)))
        return random.uniform(0.0, ceiling)

    def call(self, request: Callable[[], T], *, url: str, what: str = "read") -> T:
        """Run ``request()`` until it succeeds, fails for good or runs out of attempts.

        Args:
            request: one attempt (a new request each call; it should enforce ``timeout``).
            url: the object's URL, for messages.
            what: the operation, for messages ("read bytes 0-99", "download", ...).

        Returns:
            What ``request()`` returned.

        Raises:
            StoreError: a permanent failure (at once), or the last transient one after
                ``attempts`` attempts; the message names the URL, the attempts and the cause.
                The original exception is chained (``__cause__``); FileNotFoundError and
                PermissionError keep their meaning through ``StoreError.errno``.
        """
        auth_retried = False
        for attempt in range(1, self.attempts + 1):
            try:
                return request()
            except Exception as exc:  # classified below: nothing is swallowed silently
                failure = classify(exc)
                _count(failure)
                if failure.auth and (auth_retried or attempt == self.attempts):
                    raise _store_error(
                        exc, f"{what} {url} failed: credentials rejected ({failure.cause})"
                    ) from exc
                auth_retried = auth_retried or failure.auth
                if not failure.retryable:
                    raise _store_error(exc, f"{what} {url} failed: {failure.cause}") from exc
                if attempt == self.attempts:
                    raise _store_error(
                        exc,
                        f"{what} {url} failed after {attempt} attempts; last cause: {failure.cause}",
                    ) from exc
                pause = self.delay(attempt - 1)
                log.info(
                    "%s %s: attempt %d/%d failed (%s); retrying in %.2fs",
                    what,
                    url,
                    attempt,
                    self.attempts,
                    failure.cause,
                    pause,
                )
                self.sleep(pause)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover


_COUNTS: dict[str, int] = {}
_COUNTS_LOCK = threading.Lock()
if hasattr(os, "register_at_fork"):  # a forked child counts its own failures
    os.register_at_fork(after_in_child=_COUNTS.clear)


def _count(failure: Failure) -> None:
    kind = "transient" if failure.retryable else "permanent"
    cause = failure.cause.split(":", 1)[0]
    with _COUNTS_LOCK:  # download threads fail concurrently
        _COUNTS[kind] = _COUNTS.get(kind, 0) + 1
        _COUNTS[cause] = _COUNTS.get(cause, 0) + 1
    if failure.retryable:  # loader.stats()["cache"]
        telemetry.CACHE.add("retries")
        if cause.startswith("throttled") or "429" in cause or "503" in cause:
            telemetry.CACHE.add("throttled")


def failure_counts() -> dict[str, int]:
    """Failed attempts seen by every RetryPolicy in this process since it started (or forked):
    ``transient`` and ``permanent`` (by kind, whether or not attempts remained) and one count per cause (``HTTP 503
    service unavailable (SlowDown)``, ``TruncatedRead``, ...), for stats and logs."""
    return dict(_COUNTS)


def _store_error(exc: BaseException, message: str) -> StoreError:
    """A StoreError whose errno says not-found/forbidden when the cause did."""
    import errno

    for link in _chain(exc):
        status, _ = _http_status(link)
        if isinstance(link, FileNotFoundError) or status == 404:
            return StoreError(errno.ENOENT, message)
        if isinstance(link, PermissionError) or status == 403:
            return StoreError(errno.EACCES, message)
    return StoreError(message)
