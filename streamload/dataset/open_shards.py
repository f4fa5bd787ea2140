"""The shards one process has open: readers opened lazily, kept in an LRU, never carried across fork.

`OpenShards.reader(k, epoch)` returns shard k's reader, opening it on first use: a local shard is
mapped in place (its size checked against index.json, its checksum verified once per file
version on this machine when ``verify`` is on: `streamload.format.verified`); a remote shard is
a pinned, verified copy in the node's disk cache (`streamload.dataset.remote.remote_shards`),
mapped from there. At most ``MAX_OPEN_SHARDS`` readers stay open (``MAX_OPEN_LMDB_SHARDS`` for
LMDB, whose environments hold a file descriptor each; `OPEN_SHARDS` for remote shards, whose
pinned copies count against the cache limit); the least recently used is closed first and its
cached copy unpinned.

Invariant: readers (mappings, file handles, pins, the read-ahead thread) belong to the process
that opened them. When ``os.getpid()`` changes (a forked worker) they are dropped and re-opened
in the child; a pickled copy (spawned worker) starts with none.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from streamload.cache.readahead import OPEN_SHARDS, RemoteShards
from streamload.dataset.remote import ReadSource, remote_shards
from streamload.dataset.settings import DatasetSettings
from streamload.errors import FormatError
from streamload.format import verified
from streamload.format.checksum import file_digest
from streamload.format.index import DatasetIndex, ShardInfo
from streamload.shards.reader import ShardReader, open_reader
from streamload.store import filesystem as store

# Open readers kept per process (LRU). An Arrow reader holds a mapping but no file descriptor;
# an LMDB environment holds one, so LMDB datasets keep fewer open.
MAX_OPEN_SHARDS = 512
MAX_OPEN_LMDB_SHARDS = 64


class OpenShards:
    """This process's open shard readers of one dataset (see the module docstring).

    Args:
        url: the dataset URL (for messages and the cache key).
        fs, root: its filesystem and root.
        index: its validated index.
        columns: the columns readers return.
        settings: resolved cache/verification/read-ahead settings.
        verify: verify checksums on first open (False for LMDB environments, which have none).
    """

    def __init__(
        self,
        url: str,
        fs: Any,
        root: str,
        index: DatasetIndex,
        columns: tuple[str, ...],
        settings: DatasetSettings,
        verify: bool,
    ) -> None:
        self._url, self._fs, self._root, self._index = url, fs, root, index
        self._columns = columns
        self._settings = settings
        self.verify = verify
        self._pid = os.getpid()
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._remote: tuple[int, RemoteShards] | None = None  # (pid, shards) if not in place

    def reader(self, k: int, epoch: int, source: ReadSource) -> ShardReader:
        """Shard k's reader in this process (opened, verified and pinned on first use).

        Args:
            k: shard index.
            epoch: the epoch being read (the read-ahead follows its plan).
            source: what this process reads (what the read-ahead of a remote dataset walks).

        Raises:
            FormatError: the shard is missing, truncated, corrupt or fails its checksum.
            StoreError, CacheError: a remote shard cannot be fetched or cached.
        """
        if os.getpid() != self._pid:  # forked: the parent's mmaps and handles are not ours
            self._readers = OrderedDict()
            self._pid = os.getpid()
        reader = self._readers.get(k)
        if reader is not None:
            self._readers.move_to_end(k)
            return reader
        remote = self.remote(source)
        if remote is not None:
            # Pinned cache copies count against cache_limit: the oldest reader goes *before* the
            # next shard is pinned, so a reader never pins more than OPEN_SHARDS (what the
            # working-set checks count), not one more while it opens the next.
            while len(self._readers) >= OPEN_SHARDS:
                dropped, _ = self._readers.popitem(last=False)
                remote.release(self._index.shards[dropped])
        reader = self._open(self._index.shards[k], epoch, remote)
        self._readers[k] = reader
        limit = MAX_OPEN_SHARDS if self._index.format == "arrow" else MAX_OPEN_LMDB_SHARDS
        if remote is None and len(self._readers) > limit:
            self._readers.popitem(last=False)
        return reader

    def remote(self, source: ReadSource) -> RemoteShards | None:
        """This process's pinned cached copies of remote shards; None if read in place.

        Raises:
            CacheError: the cache directory is unwritable or too small for the working set.
        """
        if store.reads_in_place(self._fs):
            return None
        if self._remote is None or self._remote[0] != os.getpid():
            shards = remote_shards(
                self._url, self._fs, self._root, self._index, self._settings, source
            )
            self._remote = (os.getpid(), shards)
            weakref.finalize(self, shards.close)  # stop read-ahead and unpin with the dataset
        return self._remote[1]

    def close(self) -> None:
        """Close every reader and drop this process's pins and read-ahead."""
        self._readers.clear()
        if self._remote is not None and self._remote[0] == os.getpid():
            self._remote[1].close()
        self._remote = None

    def _open(self, info: ShardInfo, epoch: int, remote: RemoteShards | None) -> ShardReader:
        fs, path = self._fs, store.join(self._root, info.name)
        if remote is not None:  # a pinned, verified copy in the shared disk cache, mapped in place
            fs, path = LocalFileSystem(), remote.open(info, epoch)
        try:
            stat = fs.info(path)
        except FileNotFoundError:
            raise FormatError(f"shard {info.name} of {self._url} is missing") from None
        if stat.get("type", "file") != "file":  # a FIFO would block, a device never end
            raise FormatError(
                f"shard {info.name} of {self._url} is not a regular file (type {stat.get('type')})"
            )
        if stat.get("size") != info.bytes:
            raise FormatError(
                f"shard {info.name} of {self._url}: size is {stat.get('size')} bytes, index.json"
                f" says {info.bytes} (truncated or replaced)"
            )
        if self.verify and remote is None:  # the cache verifies its copies itself
            verify_once(fs, path, info, stat, self._url, self._settings.cache_dir)
        local = store.local_path(fs, path)
        source = local if local is not None else fs.open(path, "rb")
        return open_reader(
            self._index.format,
            source,
            self._index.schema,
            info.name,
            info.bytes,
            info.num_samples,
            self._columns,
            self._settings.cache_dir,
        )

    def __getstate__(self) -> dict[str, Any]:
        # Readers hold mmaps and file handles: a pickled copy (spawned worker) opens its own.
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        state["_remote"] = None  # pins and a read-ahead thread belong to this process
        return state


def verify_once(
    fs: Any, path: str, info: ShardInfo, stat: dict[str, Any], url: str, marks_dir: str | None
) -> None:
    """Check shard ``info``'s checksum unless this file version was already verified.

    Local files are hashed once per file version on this machine (marks in ``marks_dir``);
    other filesystems once per process.

    Raises:
        FormatError: the checksum differs from index.json's.
    """
    local = store.local_path(fs, path)
    if local is not None:  # hashed once per file version on this machine
        marks = marks_dir
        key = verified.version_key(local, info.checksum)
    else:
        mtime = str(stat.get("mtime", stat.get("created", "")))
        marks, key = (
            None,
            "\0".join((type(fs).__name__, path, str(info.bytes), mtime, info.checksum)),
        )
    if verified.is_verified(key, marks):
        return
    actual = file_digest(fs, path, info.checksum_algorithm)
    if actual != info.checksum:
        raise FormatError(
            f"shard {info.name} of {url}: {info.checksum_algorithm} checksum mismatch: index.json"
            f" says {info.checksum}, the file hashes to {actual} (corrupted or replaced)"
        )
    verified.mark_verified(key, marks)
