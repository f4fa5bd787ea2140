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
LOCK_TIMEOUT_S = 120.0
_VERSION_KEYS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "updated", "mtime")


def version_tag(info: dict[str, Any]) -> str | None:
    """The object's identity for caching: size plus a version field, or None if it has none."""
    versions = {k: str(info[k]) for k in _VERSION_KEYS if info.get(k) not in (None, "")}
    if not versions:
        return None
    return json.dumps({"size": info.get("size"), **versions}, sort_keys=True)


def node_copy(cache_dir: str, url: str, info: dict[str, Any], fetch: Callable[[], bytes]) -> bytes:
    """index.json bytes: the node's copy when it matches ``info``, else ``fetch()`` (stored).

    Args:
        cache_dir: the shard cache directory.
        url: the dataset URL (names the cache's dataset directory, as for its shards).
        info: the remote index.json's metadata, fresh from the store.
        fetch: downloads index.json (retried by the caller's store).

    Falls back to ``fetch()`` without caching when the cache dir cannot be written.
    """
    tag = version_tag(info)
    if tag is None:
        return fetch()
    directory = os.path.join(cache_dir, dataset_dir_name(url))
    copy, tag_file = os.path.join(directory, INDEX_COPY), os.path.join(directory, "index.tag")
    try:
        os.makedirs(directory, exist_ok=True)
        lock = open_fd(copy + ".lock", os.O_RDWR | os.O_CREAT)
    except OSError:
        return fetch()
    try:
        flock_wait(lock, fcntl.LOCK_EX, LOCK_TIMEOUT_S, copy)
        try:
            with open(tag_file, encoding="utf-8") as f:
                if f.read() == tag:
                    with open(copy, "rb") as g:
                        return g.read()
        except OSError:
            pass
        data = fetch()
        try:
            _replace(copy, data)
            _replace(tag_file, tag.encode())
        except OSError:
            pass  # a full or read-only cache dir: the next process fetches again
        return data
    finally:
        close_fd(lock)


def _replace(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
