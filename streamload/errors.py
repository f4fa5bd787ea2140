"""The one error hierarchy of streamload.

Every error streamload raises on purpose is a `StreamloadError`. Each subclass also derives from
the builtin a caller would already catch for that kind of failure (`ConfigError` is a
`ValueError`, `StoreError` an `OSError`, ...), so existing `except` clauses keep working.
Messages name the file, key, URL or setting at fault; `quote` shows a value read from a file
in a bounded way.
"""

from __future__ import annotations

import reprlib

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6


def quote(value: object) -> str:
    """A short repr of a value read from a file, for messages: bounded in depth and length (the
    plain ``repr`` of hostile JSON can be megabytes long or nest too deep to print)."""
    return _REPR.repr(value)


class StreamloadError(Exception):
    """Root of every error streamload raises deliberately."""


class ConfigError(StreamloadError, ValueError):
    """A configuration value is invalid: names the key, the value and where it came from."""


class FormatError(StreamloadError, ValueError):
    """A dataset is malformed: bad index, schema, sample, corrupt or truncated shard, checksum."""


class StoreError(StreamloadError, OSError):
    """A storage operation failed (after retries where retrying makes sense); names the URL."""


class CacheError(StreamloadError, OSError):
    """The local shard cache cannot do its job (unwritable, full, limit too small)."""


class WorkerError(StreamloadError, RuntimeError):
    """A loader worker raised (its traceback is included) or died (its pid and signal)."""


class StateError(StreamloadError, ValueError):
    """A loader/dataset state dict does not fit this dataset or these settings."""


class RingError(StreamloadError, RuntimeError):
    """The shared-memory ring failed: corrupt record, closed peer, record too large, no memory."""
