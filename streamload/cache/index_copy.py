"""index.json of a remote dataset, fetched once per node and kept in the shard cache.

Every rank of a job (and every job restarted on the node) opens the dataset; the first one
downloads index.json into ``<cache_dir>/<dataset dir>/index.json``, the others read that copy.
A copy is used only while it still describes the remote object: each process makes one metadata
request (HEAD/stat) and compares the object's size and version tag (ETag, generation or
modification time) with what was recorded when the copy was fetched, so a dataset rewritten at
the same URL is fetched again — never served stale. An object whose metadata carries no version
tag is fetched every time (its size alone proves nothing). One flock per dataset directory makes
concurrent processes of a node wait for a single download instead of all fetching; the copy and
its tag are written to temp files and renamed, so a reader never sees half of either.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable
from typing import Any

from streamload.cache.layout import dataset_dir_name
from streamload.cache.locks import close_fd, flock_wait, open_fd

INDEX_COPY = "index.json"
INDEX_TAG = "index.tag"
_MAX_COPY_BYTES = 256 * 2**20  # as MAX_INDEX_BYTES: a bigger index is refused by its parser
LOCK_TIMEOUT_S = 120.0
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "updated", "mtime")


def version_tag(info: dict[str, Any]) -> str | None:
    """The object's identity for caching: size plus a version field, or None if it has none."""
    versions = {k: str(info[k]) for k in _VERSION_KEYS if info.get(k) not in (None, "")}
    if not versions:
        return None
    return json.dumps({"size": info.get("size"), **versions}, sort_keys=True)


def node_copy(
    cache_dir: str,
    url: str,
    info: dict[str, Any],
    fetch: Callable[[], bytes],
    cache_limit: int | None = None,
) -> bytes:
    """index.json bytes: the node's copy when it matches ``info``, else ``fetch()`` (stored).

    Args:
        cache_dir: the shard cache directory.
        url: the dataset URL (names the cache's dataset directory, as for its shards).
        info: the remote index.json's metadata, fresh from the store.
        fetch: downloads index.json (retried by the caller's store).
        cache_limit: the cache's byte limit: the copy counts against it like a shard (None:
            no copy is kept).

    Falls back to ``fetch()`` without keeping a copy when the cache dir cannot be written or
    the copy does not fit within ``cache_limit``.
    """
    tag = version_tag(info)
    if tag is None or cache_limit is None:
        return fetch()
    from streamload.cache.disk import DiskCache

    directory = os.path.join(cache_dir, dataset_dir_name(url))
    copy, tag_file = os.path.join(directory, INDEX_COPY), os.path.join(directory, INDEX_TAG)
    try:
        cache = DiskCache(cache_dir, cache_limit)
        os.makedirs(directory, exist_ok=True)
        lock = open_fd(copy + ".lock", os.O_RDWR | os.O_CREAT)
    except OSError:  # CacheError too: an unwritable cache dir
        return fetch()
    try:
        flock_wait(lock, fcntl.LOCK_EX, LOCK_TIMEOUT_S, copy)
        try:
            with open(tag_file, encoding="utf-8") as f:
                if f.read() == tag:
                    with open(copy, "rb") as g:
                        return g.read(_MAX_COPY_BYTES + 1)
        except OSError:
            pass
        data = fetch()
        if len(data) <= _MAX_COPY_BYTES:  # a full or read-only cache: the next process fetches
            cache.keep_small(url, {INDEX_COPY: data, INDEX_TAG: tag.encode()})
        return data
    finally:
        close_fd(lock)
