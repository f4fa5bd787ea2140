"""Writing one LMDB shard: samples in, one single-file LMDB environment out.

A shard is an LMDB environment in ONE file (``subdir=False``, no lock file): key = the sample's
row in the shard as a big-endian uint64 (so LMDB's byte order is row order and appends are
sequential), value = the sample encoded by `streamload.shards.lmdb.codec.encode`. Rows are put with ``append=True`` in
write transactions of at most ``txn_rows`` rows / ``txn_bytes`` bytes; the environment is opened
without per-commit fsync and synced once at close (a crashed writer leaves only a temp file that
the ShardWriter deletes or later overwrites; index.json, written last, is the commit point).

The map grows as needed: when LMDB reports ``MDB_MAP_FULL`` the open transaction is aborted, the
map size doubled and the transaction's rows replayed, so a write never fails for lack of map
space. LMDB needs a local file (it memory-maps it): for other filesystems the shard is built in
a local temp file and uploaded to the destination path at close.

``close()`` returns ``(bytes, xxh3_64)`` of the finished file, computed by reading it back once
(LMDB writes pages in place, so the bytes cannot be hashed as they stream out).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from typing import Any

import lmdb
from fsspec.implementations.local import LocalFileSystem

from streamload.format.checksum import file_digest
from streamload.format.schema import Schema
from streamload.shards.lmdb.codec import ROW_KEY_BYTES, encode, row_key
from streamload.store import filesystem as store

TXN_ROWS = 1024
TXN_BYTES = 16 * 2**20
MIN_MAP_SIZE = 16 * 2**20
_ENTRY_OVERHEAD = 24  # node header + key + slot, per row, counted toward a transaction's size
_PAGE_HEADER = 16
_NODE_HEADER = 8


class LmdbShardFileWriter:
    """Writes samples into one single-file LMDB environment (a `streamload.write.writer.ShardFileWriter`)."""

    extension = "lmdb"

    def __init__(
        self,
        fs: Any,
        path: str,
        schema: Schema,
        map_size: int = MIN_MAP_SIZE,
        txn_rows: int = TXN_ROWS,
        txn_bytes: int = TXN_BYTES,
    ) -> None:
        """Create the shard file.

        Args:
            fs: the destination fsspec filesystem.
            path: the (temporary) destination path; the ShardWriter renames it when complete.
            schema: the dataset schema (samples are validated by the ShardWriter).
            map_size: the initial LMDB map size in bytes (grown on demand).
            txn_rows: rows per write transaction.
            txn_bytes: encoded bytes per write transaction.
        """
        self._fs = fs
        self._path = path
        self._schema = schema
        self._txn_rows = txn_rows
        self._txn_bytes = txn_bytes
        local = store.local_path(fs, path)
        self._upload = local is None
        if local is None:
            fd, local = tempfile.mkstemp(prefix="streamload-", suffix=".lmdb")
            os.close(fd)
        self._local = local
        self._map_size = max(int(map_size), 2**16)
        try:
            self._env = lmdb.open(
                local,
                subdir=False,
                map_size=self._map_size,
                lock=False,
                sync=False,
                metasync=False,
                readahead=False,
                meminit=False,
                max_dbs=0,
            )
        except lmdb.Error as exc:
            raise _os_error(exc, local) from exc
        self._page_size = int(self._env.stat()["psize"])
        # LMDB's largest in-page node (mdb.c: me_nodemax), for 2 keys per page at least.
        self._node_max = (((self._page_size - _PAGE_HEADER) // 2) & -2) - 2
        self._leaf_pages = 0
        self._leaf_used = 0
        self._overflow_bytes = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.num_samples = 0

    @property
    def estimated_bytes(self) -> int:
        """Bytes the shard would have if closed now, from LMDB's page layout (see ``_account``)."""
        leaf_pages = self._leaf_pages
        return self._page_size * (2 + leaf_pages + leaf_pages // 64) + self._overflow_bytes

    def _account(self, value_bytes: int) -> None:
        """Add one row to the size estimate. A leaf node is an 8-byte header + key + value (2-byte
        aligned) plus a 2-byte slot; a value too big for a node (over ``nodemax``, ~2 KB on 4 KiB
        pages) moves to its own run of whole overflow pages and the node keeps a page number.
        Appended keys fill leaf pages in order, a node going to a new page when it does not fit
        (what MDB_APPEND's split does); branch pages add about 1/64."""
        node = _NODE_HEADER + ROW_KEY_BYTES + value_bytes
        if node > self._node_max:
            pages = -(-(_PAGE_HEADER + value_bytes) // self._page_size)
            self._overflow_bytes += pages * self._page_size
            node = _NODE_HEADER + ROW_KEY_BYTES + 8
        node += (node & 1) + 2
        if self._leaf_pages == 0 or self._leaf_used + node > self._page_size - _PAGE_HEADER:
            self._leaf_pages += 1
            self._leaf_used = 0
        self._leaf_used += node

    def add(self, sample: dict[str, Any]) -> None:
        """Encode one (already validated) sample; commit a transaction when one is full."""
        value = encode(self._schema, sample)
        self._pending.append(value)
        self._pending_bytes += len(value) + _ENTRY_OVERHEAD
        self._account(len(value))
        self.num_samples += 1
        if len(self._pending) >= self._txn_rows or self._pending_bytes >= self._txn_bytes:
            self._commit()

    def widen(self, schema: Schema) -> bool:
        """Take ``schema`` (some columns made variable) for the rest of the shard: always
        possible, a value records its own shape."""
        self._schema = schema
        return True

    def _commit(self) -> None:
        """Put the pending rows in one transaction, growing the map until they fit."""
        if not self._pending:
            return
        first = self.num_samples - len(self._pending)
        while True:
            txn = self._env.begin(write=True)
            try:
                for j, value in enumerate(self._pending):
                    if not txn.put(row_key(first + j), value, append=True):
                        raise RuntimeError(f"LMDB refused row {first + j} (duplicate key)")
                txn.commit()
                break
            except lmdb.MapFullError:
                txn.abort()
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
            except lmdb.Error as exc:  # a write failed: a full disk, an I/O error
                txn.abort()
                raise _os_error(exc, self._local) from exc
            except BaseException:
                txn.abort()
                raise
        self._pending = []
        self._pending_bytes = 0

    def close(self) -> tuple[int, str]:
        """Commit, fsync and close the environment (uploading it if remote).

        Returns:
            ``(bytes, xxh3_64 hex)`` of the finished shard file.
        """
        self._commit()
        try:
            self._env.sync(True)
            self._env.close()
        except lmdb.Error as exc:
            raise _os_error(exc, self._local) from exc
        nbytes = os.stat(self._local).st_size
        digest = file_digest(LocalFileSystem(), self._local)
        if self._upload:
            try:
                self._fs.put_file(self._local, self._path)
            finally:
                os.unlink(self._local)
        return nbytes, digest

    def abort(self) -> None:
        """Stop without finishing the shard (the ShardWriter deletes the destination temp file)."""
        with contextlib.suppress(lmdb.Error):
            self._env.close()
        if self._upload:
            with contextlib.suppress(OSError):
                os.unlink(self._local)


def _os_error(exc: lmdb.Error, path: str) -> OSError:
    """A failed LMDB write as the OSError it is (LMDB reports a short write on a full disk as
    EIO, a refused one as ENOSPC), so the ShardWriter reports it like any failed write."""
    code = errno.ENOSPC if "No space left" in str(exc) else errno.EIO
    return OSError(code, f"LMDB: {exc}", path)
