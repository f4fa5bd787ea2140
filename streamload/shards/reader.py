"""The shard-reader seam: one factory from a dataset's ``format`` to the reader class of that format.

Every reader has the same surface (``ArrowShardReader`` documents it): ``len()``, ``columns``,
``get(i)`` and columnar ``take(rows)`` with identical per-kind return conventions, so code above
this module (dataset, loader, workers) never branches on the format.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from streamload.errors import FormatError
from streamload.format.schema import Schema
from streamload.shards.lmdb import ENV_FORMAT


class ShardReader(Protocol):
    """What every shard reader offers."""

    name: str
    num_rows: int

    def __len__(self) -> int: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    def get(self, i: int) -> dict[str, Any]: ...

    def take(self, rows: np.ndarray, strings: str = "list") -> dict[str, Any]:
        """Rows at once; ``strings="blob"`` allows str/bytes columns as ``BlobColumn`` (a reader
        may still return lists, which every consumer accepts)."""
        ...


def open_reader(
    format: str,
    source: str | os.PathLike[str] | Any,
    schema: Schema,
    name: str,
    nbytes: int,
    num_samples: int | None,
    columns: list[str] | tuple[str, ...] | None,
    marks_dir: str | None = None,
) -> ShardReader:
    """Open one shard with the reader of ``format``.

    Args:
        format: ``"arrow"``, ``"lmdb"`` or ``"lmdb-env"`` (an existing LMDB environment).
        source: a local path (memory-mapped) or a binary file object.
        schema: the dataset schema.
        name: the shard name, for messages.
        nbytes: the shard's size according to the index.
        num_samples: its sample count according to the index (None: unchecked).
        columns: the columns to return (None: all).
        marks_dir: the cache dir holding marks of checks passed on this machine (LMDB's tree
            check runs once per file version; None: once per process).

    Raises:
        FormatError: an unknown format, or the reader's own checks fail.
    """
    if format == "arrow":
        from streamload.shards.arrow.reader import ArrowShardReader

        return ArrowShardReader(source, schema, name, nbytes, num_samples, columns)
    if format == "lmdb":
        from streamload.shards.lmdb.reader import LmdbShardReader

        return LmdbShardReader(source, schema, name, nbytes, num_samples, columns, marks_dir)
    if format == ENV_FORMAT:
        from streamload.shards.lmdb.reader import LmdbEnvReader

        return LmdbEnvReader(source, name, nbytes, num_samples, columns, marks_dir)
    raise FormatError(f"shard {name}: no reader for format {format!r}")
