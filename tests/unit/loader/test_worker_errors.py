"""A worker's exception is rebuilt in the trainer as its own type, also a WorkerError
(`streamload.loader.worker_errors`), the way DataLoader's ExceptionWrapper.reraise builds it."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st
from torch._utils import ExceptionWrapper

from streamload.errors import CacheError, FormatError, StreamloadError, WorkerError
from streamload.loader import protocol
from streamload.loader.worker_errors import describe, rebuild


class WithMessageKeyword(Exception):
    """A type whose message is its ``message`` keyword (DataLoader passes message=)."""

    message = "default"

    def __init__(self, *, message: str) -> None:
        super().__init__(message)
        self.message = message


class Positional(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a + b)


def _body(exc: BaseException) -> bytes:
    try:
        raise exc
    except BaseException:
        return describe()


def _dataloader(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException:
        wrapper = ExceptionWrapper(where="in DataLoader worker process 3")
    try:
        wrapper.reraise()
    except BaseException as raised:
        return raised
    raise AssertionError("reraise() returned")


CASES = [
    KeyError("k"),
    ValueError("v"),
    FileNotFoundError(2, "gone", "/x"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"),
    WithMessageKeyword(message="m"),
    Positional(1, 2),
    FormatError("shard-00000.arrow: corrupt"),
    CacheError("no room"),
    WorkerError("a nested worker failed"),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_rebuilt_exception_is_what_dataloader_raises_and_a_worker_error(exc: BaseException) -> None:
    """The rebuilt exception is an instance of the type DataLoader re-raises, a WorkerError, and
    carries DataLoader's message: ``Caught <Type> in DataLoader worker process <id>.``."""
    ours = rebuild(3, _body(exc))
    theirs = _dataloader(exc)
    assert isinstance(ours, type(theirs)) and isinstance(ours, WorkerError)
    assert (
        str(ours).splitlines()[0] == f"Caught {type(exc).__name__} in DataLoader worker process 3."
    )
    assert str(ours).splitlines()[0] == str(theirs).splitlines()[0]
    assert "Traceback (most recent call last)" in str(ours)


def test_streamload_errors_stay_streamload_errors() -> None:
    """A FormatError from a worker is still a FormatError, a StreamloadError and a ValueError."""
    ours = rebuild(0, _body(FormatError("bad")))
    assert isinstance(ours, FormatError) and isinstance(ours, StreamloadError)
    assert isinstance(ours, ValueError) and isinstance(ours, RuntimeError)


def test_one_derived_class_per_type_and_it_reads_like_the_original() -> None:
    """Every KeyError from a worker has one class, named KeyError, whose str is readable (not a
    repr() of the message as KeyError would give)."""
    first, second = rebuild(0, _body(KeyError("a"))), rebuild(1, _body(KeyError("b")))
    assert type(first) is type(second) and type(first).__name__ == "KeyError"
    assert str(first).startswith("Caught KeyError") and not str(first).startswith("'")


def test_a_type_the_trainer_cannot_find_becomes_a_plain_worker_error() -> None:
    """A class defined inside a function (no importable name) arrives as WorkerError with the
    traceback, DataLoader's RuntimeError fallback."""

    class Local(Exception):
        pass

    ours = rebuild(2, _body(Local("x")))
    assert type(ours) is WorkerError
    assert str(ours).startswith("Caught Local in DataLoader worker process 2.")


@pytest.mark.parametrize("exc", [KeyError("k"), FormatError("f"), Positional(1, 2)])
def test_rebuilt_exceptions_pickle_round_trip(exc: BaseException) -> None:
    """A rebuilt exception can be pickled (logged, sent to another process) and comes back as
    the same kind of exception with the same message."""
    ours = rebuild(0, _body(exc))
    back = pickle.loads(pickle.dumps(ours))
    assert type(back) is type(ours) and str(back) == str(ours)


@given(st.text(), st.sampled_from(["builtins:KeyError", "no.such.module:X", "builtins:len", ""]))
def test_any_record_body_rebuilds_to_a_worker_error(text: str, type_name: str) -> None:
    """Whatever an ERROR record says, the trainer gets a WorkerError carrying the text."""
    body = protocol.exception_record(type_name, text)
    ours = rebuild(5, body)
    assert isinstance(ours, WorkerError)
    assert text.encode("utf-8", "replace").decode("utf-8", "replace") in str(ours)


def test_describe_needs_an_exception() -> None:
    """describe() outside an except block is a programming error, said so."""
    with pytest.raises(ValueError, match="needs an exception"):
        describe()
