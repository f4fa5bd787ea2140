"""Where the shard cache keeps what: names and directory layout, and the scan that measures it.

One directory per dataset URL (a readable slug plus the URL's xxh3, with the URL in ``SOURCE``);
in it, ``<checksum16>-<shard name>`` (published), ``... .lock`` (single-flight lock) and
``... .tmp.<pid>.<bytes>`` (a download in progress, counted at its expected size), and the small
files that are not shards: plan files (`streamload.cache.eviction.PlanBoard`), the index.json
copy and its tag (`streamload.cache.index_copy`). `scan` counts every file in a dataset
directory against ``cache_limit`` (the small ones as ``fixed``: never evicted) and deletes what
dead processes left: partial downloads, plan files, index copies in progress. Directories
without ``SOURCE`` are not ours: never counted, listed or deleted. The cache key is (dataset URL, shard name, checksum), so a rewritten dataset never
serves stale bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from typing import Any

import xxhash

from streamload.cache.eviction import CacheEntry
from streamload.cache.locks import lock_is_free

log = logging.getLogger(__name__)

_OURS_RE = re.compile(r"^[0-9a-f]{16}-")  # published and temp shard files: <checksum>-<name>
_TMP_RE = re.compile(r"^(?P<file>.+)\.tmp\.(?P<pid>\d+)\.(?P<bytes>\d+)$")
_INDEX_TMP_RE = re.compile(r"^index\.(json|tag)\.\d+\.tmp$")  # index copy being written
_SOURCE_TMP_RE = re.compile(r"^SOURCE\.(?P<pid>\d+)$")
INDEX_COPY = "index.json"


# ShardKey.algorithm of a file with no content checksum (an LMDB environment streamload did not
# write): its checksum only names the remote object's version, and only its size is checked.
SIZE_ONLY = "size"


@dataclasses.dataclass(frozen=True)
class ShardKey:
    """What identifies one shard in the cache, and what its bytes must hash to."""

    url: str  # the dataset URL
    name: str  # the shard's plain file name from index.json
    bytes: int
    algorithm: str  # "xxh3_64" or "sha256"
    checksum: str

    @property
    def file_name(self) -> str:
        """The published file's name inside the dataset's cache directory."""
        return f"{self.checksum[:16]}-{self.name}"


def dataset_dir_name(url: str) -> str:
    """The per-dataset directory name: a readable slug of the URL plus its xxh3 (unique)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", url)[-40:].strip("_.") or "dataset"
    return f"{slug}-{xxhash.xxh3_64_hexdigest(url.encode())}"


def scan(cache_dir: str) -> list[CacheEntry]:
    """Every file of the cache's dataset directories: shards, live downloads and (``fixed``)
    the small files beside them (caller holds the admission lock). What a dead process left is
    deleted: a temp file whose shard lock is free, a plan file whose lock is free, an index copy
    in progress whose index lock is free."""
    out = []
    for ds in dataset_dirs(cache_dir):
        for entry in scandir(ds.path):
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not _OURS_RE.match(name) or name.endswith(".lock"):
                if entry.is_file(follow_symlinks=False) and not _stale(ds.path, name):
                    out.append(CacheEntry(entry.path, st.st_size, st.st_mtime, fixed=True))
                continue
            match = _TMP_RE.match(name)
            if match is None:
                out.append(CacheEntry(entry.path, st.st_size, st.st_mtime))
                continue
            lock = os.path.join(ds.path, match["file"] + ".lock")
            if lock_is_free(lock):  # its downloader is gone (killed): a stale partial file
                log.info("removing stale partial download %s", entry.path)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            expected = max(int(match["bytes"]), st.st_size)
            out.append(CacheEntry(entry.path, expected, st.st_mtime, temp=True))
    return out


def _stale(directory: str, name: str) -> bool:
    """Whether ``name`` (not a shard) was left by a dead process; if so it is deleted."""
    if name.startswith(".plan."):
        stale = lock_is_free(os.path.join(directory, name))  # held for its process's life
    elif _INDEX_TMP_RE.match(name):
        stale = lock_is_free(os.path.join(directory, INDEX_COPY + ".lock"))
    elif match := _SOURCE_TMP_RE.match(name):
        stale = not _alive(int(match["pid"]))
    else:
        return False
    if stale:
        log.info("removing %s left by a dead process", os.path.join(directory, name))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_dataset_dir(cache_dir: str, url: str) -> str:
    """The dataset's directory in the cache, created with its ``SOURCE`` if missing.

    Raises:
        OSError: the cache dir cannot be written.
    """
    directory = os.path.join(cache_dir, dataset_dir_name(url))
    source = os.path.join(directory, "SOURCE")
    if not os.path.exists(source):
        os.makedirs(directory, exist_ok=True)
        tmp = f"{source}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(url + "\n")
        os.replace(tmp, source)
    return directory


def dataset_dirs(cache_dir: str) -> list[os.DirEntry[str]]:
    """The per-dataset directories this cache made (they hold SOURCE): anything else in
    cache_dir is not ours and is never counted, listed or deleted."""
    return [
        d
        for d in scandir(cache_dir)
        if d.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(d.path, "SOURCE"))
    ]


def scandir(path: str) -> list[os.DirEntry[str]]:
    """The entries of ``path`` ([] if it does not exist)."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except FileNotFoundError:
        return []


def temps_of(path: str, paths: bool = False) -> list[tuple[Any, int]]:
    """Temp files of one shard: ``(pid or path, current size)``."""
    directory, base = os.path.split(path)
    out: list[tuple[Any, int]] = []
    for entry in scandir(directory):
        match = _TMP_RE.match(entry.name)
        if match is None or match["file"] != base:
            continue
        try:
            size = entry.stat().st_size
        except FileNotFoundError:
            continue
        out.append((entry.path if paths else int(match["pid"]), size))
    return out
