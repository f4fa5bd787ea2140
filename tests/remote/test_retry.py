"""RetryPolicy against real servers behind the fault proxy: what is retried, how often, and what
fails at once. Request counts are taken at the proxy, so they are what went over the wire."""

from __future__ import annotations

import errno
import time
from typing import Any

import pytest
from servers import Remote

from streamload import config
from streamload.errors import ConfigError, StoreError
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy, TruncatedRead, classify

DATA = bytes(range(256)) * 40  # 10,240 bytes
TRANSIENT = ("slowdown", "500", "502", "504", "429", "reset", "truncate")


def _put(remote: Remote, name: str = "obj.bin", data: bytes = DATA) -> tuple[Any, str]:
    """Write ``data`` without faults (through ``remote.direct`` or the served directory) and
    return (fs, path) of the object as seen through the proxy."""
    if remote.local_dir is not None:
        (remote.local_dir / name).write_bytes(data)
    else:
        assert remote.direct is not None
        fs, root = store.resolve(remote.direct.url, remote.direct.storage_options)
        store.write_bytes(fs, store.join(root, name), data)
    fs, root = store.resolve(remote.url, remote.storage_options)
    return fs, store.join(root, name)


@pytest.fixture(params=["faulty_s3", "faulty_gcs", "faulty_http"])
def faulty(request: pytest.FixtureRequest) -> Remote:
    """Each backend behind the fault proxy."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("kind", TRANSIENT)
def test_each_transient_fault_is_retried_then_succeeds(
    faulty: Remote, kind: str, fast_policy: RetryPolicy
) -> None:
    """Two failures of any transient kind, then the exact bytes, in exactly three GETs."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(2, kind, method="GET")
    assert store.read_range(fs, path, 100, 5100, policy=fast_policy) == DATA[100:5100]
    assert proxy.count("GET") == 3
    assert proxy.injected[kind] == 2


def test_whole_object_read_survives_a_truncated_body(
    faulty: Remote, fast_policy: RetryPolicy
) -> None:
    """read_bytes retries a body cut short mid-transfer and returns the whole object."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1, "truncate", method="GET")
    assert store.read_bytes(fs, path, policy=fast_policy) == DATA
    assert proxy.count() == 2  # two GETs and nothing else


def test_attempts_are_bounded_and_not_multiplied(faulty: Remote) -> None:
    """A permanently throttled object costs exactly `attempts` GETs (no client retries on top),
    then StoreError names the URL, the attempts and the last cause."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1000, "slowdown", method="GET")
    policy = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.001, timeout=5.0)
    with pytest.raises(StoreError) as caught:
        store.read_range(fs, path, 0, 100, policy=policy)
    assert proxy.count("GET") == 3
    message = str(caught.value)
    assert "obj.bin" in message and "after 3 attempts" in message and "503" in message


@pytest.mark.parametrize(("kind", "code"), [("403", errno.EACCES), ("404", errno.ENOENT)])
def test_forbidden_and_not_found_fail_at_once(
    faulty: Remote, kind: str, code: int, fast_policy: RetryPolicy
) -> None:
    """403 and 404 are not retried: one request, StoreError with the errno and the URL."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1000, kind, method="GET")
    with pytest.raises(StoreError) as caught:
        store.read_range(fs, path, 0, 100, policy=fast_policy)
    assert proxy.count("GET") == 1
    assert caught.value.errno == code
    assert "obj.bin" in str(caught.value)


def test_expired_credentials_are_retried_once_only(
    faulty: Remote, fast_policy: RetryPolicy
) -> None:
    """A 401 / ExpiredToken gets one more try (a refreshed credential may work), never two."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1, "401", method="GET")
    assert store.read_range(fs, path, 0, 100, policy=fast_policy) == DATA[:100]
    assert proxy.count("GET") == 2
    proxy.reset_counts()
    proxy.fail_next(1000, "401", method="GET")
    with pytest.raises(StoreError, match="credentials rejected"):
        store.read_range(fs, path, 0, 100, policy=fast_policy)
    assert proxy.count("GET") == 2


def test_failures_are_counted_per_cause(faulty_s3: Remote, fast_policy: RetryPolicy) -> None:
    """failure_counts() reports transient failures and their causes (for stats and logs)."""
    from streamload.store.retry import failure_counts

    fs, path = _put(faulty_s3)
    assert faulty_s3.proxy is not None
    before = failure_counts()
    faulty_s3.proxy.fail_next(2, "slowdown", method="GET")
    store.read_range(fs, path, 0, 100, policy=fast_policy)
    after = failure_counts()
    assert after.get("transient", 0) - before.get("transient", 0) == 2
    slowdown = [k for k in after if "SlowDown" in k]
    assert slowdown and after[slowdown[0]] - before.get(slowdown[0], 0) == 2


def test_missing_object_fails_at_once_with_enoent(faulty: Remote, fast_policy: RetryPolicy) -> None:
    """A key the server really does not have: one request, StoreError(ENOENT) naming it."""
    fs, path = _put(faulty)
    missing = path.replace("obj.bin", "nope.bin")
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    with pytest.raises(StoreError) as caught:
        store.read_bytes(fs, missing, policy=fast_policy)
    assert caught.value.errno == errno.ENOENT
    assert "nope.bin" in str(caught.value)
    assert proxy.count() == 1


def test_truncated_bodies_never_return_short_data(faulty: Remote, fast_policy: RetryPolicy) -> None:
    """When every attempt is truncated the read fails; it never hands back a short result."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.fail_next(1000, "truncate", method="GET")
    with pytest.raises(StoreError, match="after 4 attempts"):
        store.read_range(fs, path, 0, len(DATA), policy=fast_policy)
    with pytest.raises(StoreError, match="after 4 attempts"):
        store.read_bytes(fs, path, policy=fast_policy)


def test_a_stalled_request_is_cut_by_the_timeout_and_retried(faulty: Remote) -> None:
    """A request that gets no answer is cancelled after request_timeout and tried again."""
    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1, "stall", method="GET")
    policy = RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.001, timeout=0.5)
    started = time.monotonic()
    assert store.read_range(fs, path, 0, 1000, policy=policy) == DATA[:1000]
    assert time.monotonic() - started < proxy.stall_seconds / 2
    assert proxy.count("GET") == 2


def test_a_stall_on_every_attempt_fails_with_the_timeout_named(faulty_http: Remote) -> None:
    """Stalls on every attempt end in StoreError that names the time-out, after `attempts` tries."""
    fs, path = _put(faulty_http)
    proxy = faulty_http.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1000, "stall", method="GET")
    policy = RetryPolicy(attempts=2, backoff=0.001, max_backoff=0.001, timeout=0.3)
    with pytest.raises(StoreError, match=r"after 2 attempts.*request_timeout=0\.3s"):
        store.read_range(fs, path, 0, 1000, policy=policy)
    assert proxy.count("GET") == 2


def test_download_refetches_only_the_failed_chunk(
    faulty_s3: Remote, fast_policy: RetryPolicy
) -> None:
    """A download in chunks re-requests just the chunk that failed and writes every byte once."""
    import io

    fs, path = _put(faulty_s3)
    proxy = faulty_s3.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1, "truncate", method="GET")
    out = io.BytesIO()
    written = store.download(
        fs, path, out, expected_size=len(DATA), chunk_size=4096, concurrency=1, policy=fast_policy
    )
    assert written == len(DATA)
    assert out.getvalue() == DATA
    assert proxy.count("GET") == 3 + 1  # ceil(10240 / 4096) chunks plus one retry


def test_a_download_that_fails_for_good_costs_exactly_the_attempts(
    faulty: Remote, fast_policy: RetryPolicy
) -> None:
    """Concurrent chunk reads do not multiply attempts: the first chunk goes alone, so a
    permanently throttled object costs `attempts` GETs and a 404 costs one."""
    import io

    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.reset_counts()
    proxy.fail_next(1000, "slowdown", method="GET")
    with pytest.raises(StoreError, match="after 4 attempts"):
        store.download(
            fs, path, io.BytesIO(), expected_size=len(DATA), chunk_size=1024, policy=fast_policy
        )
    assert proxy.count("GET") == fast_policy.attempts
    proxy.clear()
    proxy.reset_counts()
    with pytest.raises(StoreError) as caught:
        store.download(fs, path + ".missing", io.BytesIO(), chunk_size=1024, policy=fast_policy)
    assert caught.value.errno == errno.ENOENT


def test_concurrent_chunked_download_is_exact_under_random_faults(faulty: Remote) -> None:
    """Ten chunks, four in flight, 30% of GETs failing: the file is written whole and in order."""
    import io

    fs, path = _put(faulty)
    proxy = faulty.proxy
    assert proxy is not None
    proxy.fail_randomly(0.3, ("slowdown", "reset", "truncate", "500"), seed=3)
    policy = RetryPolicy(attempts=10, backoff=0.001, max_backoff=0.002, timeout=5.0)
    for _ in range(3):
        out = io.BytesIO()
        n = store.download(
            fs, path, out, expected_size=len(DATA), chunk_size=1024, concurrency=4, policy=policy
        )
        assert n == len(DATA) and out.getvalue() == DATA
    assert sum(proxy.injected.values()) > 0


def test_random_faults_every_read_still_exact(faulty_s3: Remote) -> None:
    """With 30% of GETs failing (SlowDown or reset, seeded), every read returns exact bytes."""
    fs, path = _put(faulty_s3)
    proxy = faulty_s3.proxy
    assert proxy is not None
    proxy.fail_randomly(0.3, ("slowdown", "reset", "truncate"), seed=7)
    policy = RetryPolicy(attempts=10, backoff=0.001, max_backoff=0.002, timeout=5.0)
    for i in range(40):
        start = (i * 977) % 9000
        assert (
            store.read_range(fs, path, start, start + 1000, policy=policy)
            == DATA[start : start + 1000]
        )
    assert sum(proxy.injected.values()) > 0


# -- the policy itself (no server) ---------------------------------------------------------------


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    """Each sleep lies in [0, min(max_backoff, backoff * 2**i)] and they are not all equal."""
    policy = RetryPolicy(attempts=8, backoff=0.1, max_backoff=1.0)
    for retry in range(8):
        ceiling = min(1.0, 0.1 * 2**retry)
        draws = [policy.delay(retry) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling / 4


def test_call_sleeps_between_attempts_only() -> None:
    """`attempts` tries make `attempts - 1` sleeps; a success stops at once."""
    sleeps: list[float] = []
    calls = 0

    def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    policy = RetryPolicy(attempts=5, backoff=0.01, sleep=sleeps.append)
    assert policy.call(flaky, url="s3://b/k") == "ok"
    assert calls == 3 and len(sleeps) == 2


def test_unknown_errors_are_not_retried() -> None:
    """An error the policy does not know as transient fails after one attempt."""
    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bad argument")

    with pytest.raises(StoreError, match=r"s3://b/k failed: ValueError: bad argument"):
        RetryPolicy(attempts=5, sleep=lambda _: None).call(broken, url="s3://b/k")
    assert calls == 1


def test_classification_of_transient_and_permanent_causes() -> None:
    """Resets, time-outs and truncation are transient; not-found and permission are not."""
    assert classify(TruncatedRead("short")).retryable
    assert classify(ConnectionResetError()).retryable
    assert classify(TimeoutError()).retryable
    assert classify(OSError(16, "SlowDown: Please reduce your request rate.")).retryable
    assert not classify(FileNotFoundError("k")).retryable
    assert not classify(PermissionError("k")).retryable


def test_policy_comes_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """retries, retry_backoff and request_timeout settings shape RetryPolicy.from_config()."""
    monkeypatch.setenv("STREAMLOAD_RETRIES", "2")
    monkeypatch.setenv("STREAMLOAD_RETRY_BACKOFF", "0.25")
    monkeypatch.setenv("STREAMLOAD_REQUEST_TIMEOUT", "7.5")
    policy = RetryPolicy.from_config(config.load())
    assert (policy.attempts, policy.backoff, policy.timeout) == (3, 0.25, 7.5)


@pytest.mark.parametrize(
    ("key", "value"),
    [("retries", "-1"), ("retries", "many"), ("retry_backoff", "-0.5"), ("request_timeout", "0")],
)
def test_bad_retry_settings_are_refused_naming_the_key(key: str, value: str) -> None:
    """A negative retry count or backoff, or a zero time-out, is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=key):
        config.load(**{key: value})


@pytest.mark.parametrize(
    "kwargs", [{"attempts": 0}, {"attempts": 1.5}, {"backoff": -1.0}, {"timeout": 0.0}]
)
def test_nonsense_policies_are_refused(kwargs: dict[str, float]) -> None:
    """A policy that could never try, sleeps a negative time or has no time limit is refused."""
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
