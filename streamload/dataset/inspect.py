"""Looking at a dataset without streaming it: ``streamload info`` and ``streamload verify``.

`describe` reads only index.json; `verify_dataset` hashes every shard and compares it with
index.json (always, whatever verification marks say).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, NamedTuple

from streamload.format.checksum import file_digest
from streamload.format.index import INDEX_NAME, read_index
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy


class ShardCheck(NamedTuple):
    """Result of verifying one shard: ``actual`` is None when the file is missing."""

    shard: str
    ok: bool
    expected: str
    actual: str | None


def verify_dataset(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    on_shard: Callable[[ShardCheck], None] | None = None,
    policy: RetryPolicy | None = None,
) -> list[ShardCheck]:
    """Hash every shard and compare with index.json (for ``streamload verify``).

    Args:
        url: dataset root.
        storage_options: passed to fsspec.
        on_shard: called with each result as it is known (progress display).
        policy: the retry policy of remote requests.

    Returns:
        One ShardCheck per shard, in index order.

    Raises:
        FormatError: index.json missing or invalid.
    """
    fs, root = store.resolve(url, storage_options, policy)
    index = read_index(fs, store.join(root, INDEX_NAME), f"{os.fspath(url)}/{INDEX_NAME}")
    results = []
    for info in index.shards:
        try:
            actual: str | None = file_digest(
                fs, store.join(root, info.name), info.checksum_algorithm
            )
        except FileNotFoundError:
            actual = None
        check = ShardCheck(info.name, actual == info.checksum, info.checksum, actual)
        if on_shard is not None:
            on_shard(check)
        results.append(check)
    return results


def describe(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    policy: RetryPolicy | None = None,
) -> dict[str, Any]:
    """Summary of a dataset for ``streamload info`` (reads only index.json).

    Returns:
        ``{"url", "format", "format_version", "num_samples", "num_shards", "bytes", "schema"}``
        with the schema in its JSON form.
    """
    fs, root = store.resolve(url, storage_options, policy)
    index = read_index(fs, store.join(root, INDEX_NAME), f"{os.fspath(url)}/{INDEX_NAME}")
    return {
        "url": os.fspath(url),
        "format": index.format,
        "format_version": index.format_version,
        "num_samples": index.num_samples,
        "num_shards": len(index.shards),
        "bytes": index.total_bytes,
        "schema": index.schema.to_json(),
    }
