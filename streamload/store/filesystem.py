"""The storage seam: a dataset URL becomes an fsspec filesystem plus a root path inside it.

Everything above this module talks to storage through ``(fs, path)`` pairs made by `resolve`
and, for remote objects, through the functions here (`read_bytes`, `read_range`, `download`,
`info`, `exists`, `write_bytes`, `upload`, `listdir`), which add what raw fsspec lacks:

- **one retry policy** (`RetryPolicy`) around every remote request: the one `resolve` was given
  (entry points build it from the ``retries``, ``retry_backoff`` and ``request_timeout``
  settings) travels with the filesystem (`policy_of`), else `RetryPolicy`'s defaults;
- **a per-request time-out**: each attempt runs on the filesystem's event loop under
  ``asyncio.wait_for``, so a stalled request is cancelled (its connection closed), not leaked;
- **no short data**: `read_range` and `download` return exactly the bytes asked for or raise;
- **fork safety**: fsspec's async filesystems (s3fs, gcsfs, HTTP) refuse to work in a forked
  child, and their instance cache and aiohttp sessions belong to one process. `client(fs)`
  returns a client created lazily in the calling process (re-created after ``fork``; a spawned
  child unpickles a fresh one), so a dataset object can carry ``fs`` across process boundaries.

Bounded attempts: the clients' own retry loops are switched off, so one logical request makes
at most ``retries + 1`` requests on the wire, never a product of two retry loops:

- s3 (s3fs): ``fs.retries = 1`` (s3fs's own loop runs once) and botocore
  ``config_kwargs={"retries": {"total_max_attempts": 1}}``; botocore connect/read time-outs
  are set to ``request_timeout``. (s3fs still sleeps 0.1 s after a throttled or dropped
  attempt before giving up: latency, not extra requests.) Whole-object reads pass
  ``max_concurrency=1`` so s3fs does not stat the object first.
- gs (gcsfs): gcsfs retries inside a decorator bound at class creation (6 tries, sleeps of 1-32
  s) that no option reaches; each client made here calls the undecorated ``_request`` instead.
- http(s) (fsspec HTTPFileSystem): no retries of its own; nothing to switch off.

Options the user passes in ``storage_options`` win over these defaults (a user who sets
``retries`` for s3fs gets that many client attempts per store attempt).

Local paths, ``file://`` and ``memory://`` are not remote: `client` returns them as they are,
and `local_path` reports local files so readers can memory-map them in place.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import types
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from streamload.errors import StoreError
from streamload.sizes import format_size
from streamload.store.retry import RequestTimeout, RetryPolicy, TruncatedRead

T = TypeVar("T")

REMOTE_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "http", "https")
_EXTRA = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
DOWNLOAD_CHUNK = 8 * 2**20  # bytes per ranged GET in `download`
DOWNLOAD_CONCURRENCY = 4  # ranged GETs in flight per download: hides each request's round trip
DEFAULT_POLICY = RetryPolicy()  # requests through a filesystem no entry point gave a policy


class Writer(Protocol):
    """Where `download` writes: a binary file, or anything with the same ``write``."""

    def write(self, data: bytes, /) -> Any: ...


# Clients made in this process: fs token -> client (see `client`). Reset when the pid changes.
_clients: dict[str, Any] = {}
_clients_pid = os.getpid()


def resolve(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    policy: RetryPolicy | None = None,
) -> tuple[Any, str]:
    """Resolve a dataset URL to its filesystem and root path.

    Args:
        url: a local path, ``file://``, ``memory://``, ``s3://``, ``gs://``, ``http(s)://`` or
            any other fsspec URL.
        storage_options: keyword arguments passed to the fsspec filesystem (they override the
            retry/time-out defaults described in the module docstring).
        policy: the retry policy of every request through this filesystem (and the time-out the
            s3 client is configured with); None: `RetryPolicy`'s defaults. A copy of ``fs``
            made in another process (pickled) forgets it: `attach_policy` puts it back.

    Returns:
        ``(fs, root)``: an ``fsspec.AbstractFileSystem`` and the dataset root inside it, without
        a trailing slash. Local roots are absolute.

    Raises:
        StoreError: the URL's protocol is unknown, its client package is not installed (the
            message says which extra to install), or its filesystem cannot be created.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise StoreError(f"dataset URL must be a non-empty string or path, got {url!r}")
    if "://" not in text:
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    protocol = text.split("://", 1)[0].lower()
    if protocol in REMOTE_PROTOCOLS:
        cls = _filesystem_class(protocol, text)
        options = {**cls._get_kwargs_from_urls(text), **(storage_options or {})}
        options = _client_defaults(protocol, options, policy or DEFAULT_POLICY)
        try:
            fs = _new_client(cls, (), options)
        except (ImportError, ValueError, TypeError) as exc:
            raise StoreError(f"cannot open dataset URL {text!r}: {exc}") from exc
        attach_policy(fs, policy)
        root = cls._strip_protocol(text)
        return fs, root.rstrip("/") or "/"
    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise StoreError(f"cannot open dataset URL {text!r}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    return fs, root.rstrip("/") or "/"


def attach_policy(fs: Any, policy: RetryPolicy | None) -> None:
    """Make ``policy`` the retry policy of requests through ``fs`` (remote filesystems only:
    local ones are shared instances and never retried). None leaves ``fs`` as it is."""
    if policy is not None and is_remote(fs):
        fs._streamload_policy = policy


def policy_of(fs: Any) -> RetryPolicy:
    """The retry policy of requests through ``fs`` (see `attach_policy`)."""
    return getattr(fs, "_streamload_policy", None) or DEFAULT_POLICY


def join(root: str, name: str) -> str:
    """The path of ``name`` (a validated plain file name) inside the dataset root ``root``."""
    return root.rstrip("/") + "/" + name


def local_path(fs: Any, path: str) -> str | None:
    """``path`` as a local file path when ``fs`` is the local filesystem (so it can be mmapped), else None."""
    if isinstance(fs, LocalFileSystem):
        return path
    return None


def reads_in_place(fs: Any) -> bool:
    """True for filesystems whose shards are read where they are (local files, ``memory://``)."""
    from fsspec.implementations.memory import MemoryFileSystem

    return local_path(fs, "/") is not None or isinstance(fs, MemoryFileSystem)


def is_remote(fs: Any) -> bool:
    """True for the network filesystems this module retries (s3, gs, http(s))."""
    return any(p in REMOTE_PROTOCOLS for p in _protocols(fs))


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return tuple(protocol) if isinstance(protocol, (tuple, list)) else (protocol,)


def url_of(fs: Any, path: str) -> str:
    """The full URL of ``path`` in ``fs`` (``s3://bucket/key``), for messages."""
    try:
        return str(fs.unstrip_protocol(path))
    except Exception:  # a message helper must never raise
        return path


def client(fs: Any) -> Any:
    """The filesystem to use for ``fs`` in this process.

    A remote filesystem created in another process (``fs`` was inherited through ``fork``) or
    not made by `resolve` (unpickled in a spawned child) is replaced by a client made here, with
    the same options and the retry/time-out defaults applied; one client per configuration and
    process. Local and in-memory filesystems are returned unchanged.
    """
    global _clients_pid
    if not is_remote(fs):
        return fs
    pid = os.getpid()
    if _clients_pid != pid:  # forked: the parent's clients own its event loop and sockets
        _clients.clear()
        _clients_pid = pid
    if getattr(fs, "_streamload_pid", None) == pid:
        return fs
    key = fs._fs_token
    live = _clients.get(key)
    if live is None:
        live = _new_client(type(fs), tuple(fs.storage_args), dict(fs.storage_options))
        _clients[key] = live
    attach_policy(live, getattr(fs, "_streamload_policy", None))
    return live


# -- reads --------------------------------------------------------------------------------------


def info(fs: Any, path: str, *, policy: RetryPolicy | None = None) -> dict[str, Any]:
    """The object's metadata (``size``, ...), retried.

    Raises:
        StoreError: not found (``errno.ENOENT``), forbidden, or retries exhausted.
    """
    return dict(_call(fs, path, "info", (path,), {}, policy, "stat"))


def exists(fs: Any, path: str, *, policy: RetryPolicy | None = None) -> bool:
    """Whether ``path`` exists (transient failures are retried; a 404 means False)."""
    import errno

    try:
        info(fs, path, policy=policy)
    except StoreError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def read_bytes(
    fs: Any, path: str, *, expected_size: int | None = None, policy: RetryPolicy | None = None
) -> bytes:
    """The whole object, in one request per attempt.

    Args:
        expected_size: if given, a body of any other length is refused (shorter: retried as a
            truncated body; longer: not retried).

    Raises:
        StoreError: a permanent failure, or retries exhausted (message: URL, attempts, cause).
    """

    def check(data: bytes) -> bytes:
        _check_length(fs, path, data, expected_size, "object")
        return data

    # s3fs stats a whole-object read first (HEAD, and a listing on 404) to split it into
    # concurrent ranges: one GET is what a whole-object read should cost.
    kwargs = {"max_concurrency": 1} if "s3" in _protocols(fs) else {}
    return _call(fs, path, "cat_file", (path,), kwargs, policy, "read", check)


def read_range(
    fs: Any, path: str, start: int, end: int, *, policy: RetryPolicy | None = None
) -> bytes:
    """Bytes ``[start, end)`` of the object: exactly ``end - start`` of them, or an error.

    ``end`` must not lie past the end of the object: a shorter body is a truncated response and
    is retried, so asking past the end fails after the last attempt.

    Raises:
        ValueError: not ``0 <= start <= end``.
        StoreError: a permanent failure, retries exhausted, or the server ignored the range.
    """
    if isinstance(start, bool) or isinstance(end, bool) or not 0 <= start <= end:
        raise ValueError(
            f"read_range {url_of(fs, path)}: need 0 <= start <= end, got {start}, {end}"
        )
    if start == end:
        return b""

    def check(data: bytes) -> bytes:
        _check_length(fs, path, data, end - start, f"range {start}-{end - 1}")
        return data

    return _call(
        fs,
        path,
        "cat_file",
        (path,),
        {"start": start, "end": end},
        policy,
        f"read bytes {start}-{end - 1} of",
        check,
    )


def download(
    fs: Any,
    path: str,
    fileobj: Writer,
    *,
    expected_size: int | None = None,
    chunk_size: int = DOWNLOAD_CHUNK,
    concurrency: int = DOWNLOAD_CONCURRENCY,
    policy: RetryPolicy | None = None,
) -> int:
    """Copy an object into ``fileobj`` in ranged reads of ``chunk_size`` bytes.

    Each chunk is retried on its own, so a reset or a truncated body late in a large object
    re-fetches only the failed chunk (resume by range). The first chunk is fetched alone: an
    object that fails for good (403, 404, throttled past every attempt) costs exactly the
    policy's attempts. The others run up to ``concurrency`` at a time, hiding the round trip of
    each request; they are written strictly in order, so memory stays bounded by about
    ``(concurrency + 1) * chunk_size`` bytes. On an error ``fileobj`` holds a prefix of the
    object, and the caller discards it (the cache writes to a temp file and publishes only
    complete, verified ones).

    Args:
        fileobj: anything with a binary ``write`` (a file, a hasher wrapper), written in order
            from its current position.
        expected_size: the object's size if known (index.json's ``bytes``), which saves a
            metadata request; a size the object does not have surfaces as a truncated read or a
            checksum mismatch downstream.
        chunk_size: bytes per request (> 0).
        concurrency: ranged requests in flight at once (>= 1).

    Returns:
        The number of bytes written.

    Raises:
        StoreError: a permanent failure, or retries exhausted on one chunk.
        ValueError: ``chunk_size``, ``concurrency`` or ``expected_size`` out of range.
    """
    for name, value in (("chunk_size", chunk_size), ("concurrency", concurrency)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"download {name} must be an int > 0, got {value!r}")
    policy = policy or policy_of(fs)
    if expected_size is None:
        size = info(fs, path, policy=policy).get("size")
        if not isinstance(size, int):
            raise StoreError(f"stat {url_of(fs, path)}: the store reports no size ({size!r})")
    else:
        if isinstance(expected_size, bool) or expected_size < 0:
            raise ValueError(f"download expected_size must be >= 0, got {expected_size!r}")
        size = expected_size
    ranges = [(start, min(size, start + chunk_size)) for start in range(0, size, chunk_size)]
    if not ranges:
        return 0
    written = 0
    first = read_range(fs, path, *ranges[0], policy=policy)
    fileobj.write(first)
    written += len(first)
    rest = iter(ranges[1:])
    if concurrency == 1 or len(ranges) == 1:
        for start, end in rest:
            data = read_range(fs, path, start, end, policy=policy)
            fileobj.write(data)
            written += len(data)
        return written
    with ThreadPoolExecutor(concurrency, thread_name_prefix="streamload-download") as pool:
        pending: deque[Future[bytes]] = deque(
            pool.submit(read_range, fs, path, start, end, policy=policy)
            for start, end in itertools.islice(rest, concurrency)
        )
        try:
            while pending:
                data = pending.popleft().result()
                fileobj.write(data)
                written += len(data)
                following = next(rest, None)
                if following is not None:
                    pending.append(pool.submit(read_range, fs, path, *following, policy=policy))
        except BaseException:
            for future in pending:  # requests not started yet never start
                future.cancel()
            raise
    return written


# -- writes -------------------------------------------------------------------------------------


def write_bytes(fs: Any, path: str, data: bytes, *, policy: RetryPolicy | None = None) -> None:
    """Store ``data`` as the object ``path`` in one put (object stores publish it whole).

    Raises:
        StoreError: a permanent failure, or retries exhausted.
    """
    _call(fs, path, "pipe_file", (path, data), {}, policy, "write")


def upload(fs: Any, local: str, path: str, *, policy: RetryPolicy | None = None) -> None:
    """Upload the local file ``local`` to ``path``; the object appears only once complete.

    A failed attempt uploads the whole file again (an S3 multipart upload that fails is
    aborted by s3fs, so no partial object is ever visible).

    Raises:
        StoreError: a permanent failure, or retries exhausted.
    """
    _call(fs, path, "put_file", (local, path), {}, policy, "upload to")


def remove(fs: Any, path: str, *, policy: RetryPolicy | None = None) -> None:
    """Delete the object ``path`` (retried).

    Raises:
        StoreError: a permanent failure, or retries exhausted.
    """
    _call(fs, path, "rm_file", (path,), {}, policy, "delete")


def listdir(fs: Any, path: str, *, policy: RetryPolicy | None = None) -> list[str]:
    """Paths of the entries directly under ``path`` (retried).

    Raises:
        StoreError: a permanent failure, or retries exhausted.
    """
    return list(_call(fs, path, "ls", (path,), {"detail": False}, policy, "list"))


def list_sizes(fs: Any, path: str, *, policy: RetryPolicy | None = None) -> dict[str, int]:
    """``{file name: size}`` of the files directly under ``path``, fresh from the server (one
    paginated LIST on an object store, never a cached listing; retried).

    Raises:
        StoreError: a permanent failure, or retries exhausted.
    """
    if isinstance(fs, LocalFileSystem):  # one scandir: no per-entry fsspec info dicts
        with os.scandir(path) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file()}
    kwargs: dict[str, Any] = {"detail": True}
    if is_remote(fs):
        kwargs["refresh"] = True
    entries = _call(fs, path, "ls", (path,), kwargs, policy, "list")
    return {
        str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
        for e in entries
        if e.get("type") == "file"
    }


# -- machinery ----------------------------------------------------------------------------------


_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(exc: OSError, path: str, what: str) -> StoreError:
    """`StoreError` for a failed write of local file ``path``: the file, the cause, and the free
    space left on its file system (``errno`` kept).

    Args:
        exc: the error the write raised.
        path: the file being written.
        what: who was writing, for the message (``"ShardWriter('/data/ds')"``).
    """
    directory = os.path.dirname(path) or "."
    try:
        st = os.statvfs(directory)
        free_bytes = st.f_bavail * st.f_frsize
        free = f"{format_size(free_bytes)} free on the file system of {directory}"
    except OSError:
        free_bytes, free = -1, f"free space of {directory} unknown"
    # LMDB reports a short write on a full disk as EIO: a nearly full disk says what happened.
    full = " (disk full)" if exc.errno in _FULL or 0 <= free_bytes < 2**20 else ""
    error = StoreError(
        f"{what}: writing {path} failed{full}: {exc.strerror or exc}; {free}; the unfinished"
        " file was deleted"
    )
    error.errno = exc.errno
    return error


def _filesystem_class(protocol: str, url: str) -> Any:
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        extra = _EXTRA.get(protocol)
        hint = f"; pip install streamload[{extra}]" if extra else ""
        raise StoreError(
            f"cannot open {url!r}: {protocol}:// needs a client package{hint} ({exc})"
        ) from None


def _client_defaults(protocol: str, options: dict[str, Any], policy: RetryPolicy) -> dict[str, Any]:
    """``options`` plus our retry/time-out defaults for ``protocol`` (the user's values win)."""
    if protocol not in ("s3", "s3a"):
        return options
    timeout = policy.timeout
    config_kwargs = dict(options.get("config_kwargs") or {})
    config_kwargs.setdefault("retries", {"total_max_attempts": 1, "mode": "standard"})
    config_kwargs.setdefault("connect_timeout", timeout)
    config_kwargs.setdefault("read_timeout", timeout)
    return {**options, "config_kwargs": config_kwargs}


def _new_client(cls: Any, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
    """A filesystem of ``cls`` private to this process (not shared through fsspec's instance
    cache, whose entries may carry another process's event loop) with client retries off."""
    options = {k: v for k, v in options.items() if k != "skip_instance_cache"}
    fs = cls(*args, skip_instance_cache=True, **options)
    request = getattr(cls, "_request", None)
    wrapped = getattr(request, "__wrapped__", None)
    if "gcs" in _protocols(cls):
        if wrapped is None:
            raise StoreError(
                "this gcsfs version has no undecorated _request: streamload cannot switch off its"
                " internal retries (attempts would multiply); please report the gcsfs version"
            )
        # Bypass gcsfs's retry decorator for this instance: RetryPolicy is the only retry loop.
        fs._request = types.MethodType(wrapped, fs)
    if "s3" in _protocols(cls) and "retries" not in vars(fs):
        fs.retries = 1  # s3fs's own retry loop (a class attribute, not an option): one pass
    fs._streamload_pid = os.getpid()
    return fs


def _call(
    fs: Any,
    path: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    policy: RetryPolicy | None,
    what: str,
    check: Callable[[Any], T] | None = None,
) -> Any:
    """Run ``fs.<method>(*args, **kwargs)`` under the retry policy, each attempt time-limited."""
    policy = policy or policy_of(fs)
    live = client(fs)
    url = url_of(live, path)
    if is_remote(live) and hasattr(live, "_" + method):
        coroutine_fn = getattr(live, "_" + method)
        timeout = policy.timeout

        def attempt() -> Any:
            result = fsspec.asyn.sync(live.loop, _bounded, coroutine_fn, args, kwargs, timeout)
            return check(result) if check is not None else result
    else:
        function = getattr(live, method)

        def attempt() -> Any:
            result = function(*args, **kwargs)
            return check(result) if check is not None else result

    return policy.call(attempt, url=url, what=what)


async def _bounded(
    coroutine_fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
) -> Any:
    """Await one request, cancelling it (and closing its connection) after ``timeout`` s."""
    try:
        return await asyncio.wait_for(coroutine_fn(*args, **kwargs), timeout)
    except asyncio.TimeoutError:
        # Not a TimeoutError: fsspec's sync() would turn that into a bare FSTimeoutError.
        raise RequestTimeout(f"no complete response within request_timeout={timeout:g}s") from None


def _check_length(fs: Any, path: str, data: bytes, expected: int | None, what: str) -> None:
    if expected is None or len(data) == expected:
        return
    if len(data) < expected:
        raise TruncatedRead(
            f"truncated body: got {len(data)} of {expected} bytes of the {what} of {url_of(fs, path)}"
        )
    raise OSError(
        f"got {len(data)} bytes for the {expected}-byte {what} of {url_of(fs, path)}"
        " (the server ignores Range requests, or the object is larger than expected)"
    )
