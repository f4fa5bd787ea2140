"""Opening an LMDB file for reading safely: header and tree checks before mapping, one env per process.

LMDB trusts its file. A file shorter than its own meta page says (an interrupted copy or
download) makes a reader touch mapped pages past end-of-file, and the process dies of SIGBUS
(measured); so does a node whose size field runs past the end of the file, in a file whose
checksum matches (a hostile dataset, or index.json rewritten over corrupted bytes). So before
``mdb_env_open`` ever maps a file, ``check_file`` reads the two meta pages with plain ``read()``
and checks them (page flags and magic, version 1, a sane power-of-two page size, both metas' last
page inside the file, the main tree's root page inside the file), and
`streamload.shards.lmdb.check.check_tree` walks the tree a read transaction will use and checks
everything LMDB dereferences. The walk costs about as much as hashing the file, so it runs once
per *file version* per machine, like checksums (a mark keyed by inode, size, mtime and ctime,
`streamload.format.verified`), whether or not checksums are verified. What this cannot catch: a
file truncated or rewritten in place *after* it was checked.

``LmdbFile`` owns one read-only environment (``readonly=True, lock=False, subdir=False``: no
lock file, no reader table, nothing left stale when a worker is killed) and one long-lived read
transaction over it (the file is immutable). LMDB must not be used across ``fork()``: the
environment remembers the pid that opened it and ``txn()`` re-opens it in a forked child.
A source that is not a local file (a remote URL) is first copied to a local temp file, which is
deleted when the ``LmdbFile`` is garbage-collected in the process that made it.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import shutil
import struct
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

import lmdb

from streamload.errors import FormatError
from streamload.format import verified
from streamload.shards.lmdb.check import check_tree

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
P_META = 0x08
P_INVALID = 2**64 - 1
_PAGE_HEAD = struct.Struct("<QHH4x")  # pgno, pad, flags, lower/upper
_META = struct.Struct("<IIQQ")  # magic, version, address, mapsize
_DB = struct.Struct("<IHHQQQQQ")  # pad (page size in the free DB), flags, depth, pages..., root
_TAIL = struct.Struct("<QQ")  # last page, txnid
_META_BYTES = _PAGE_HEAD.size + _META.size + 2 * _DB.size + _TAIL.size
_MAX_DEPTH = 64
# Names what ``check_tree`` checks in verification marks: bump it when the check gets stricter,
# so files passed by an older check are walked again.
TREE_CHECK = "lmdb-tree-v1"


@dataclass(frozen=True)
class LmdbHeader:
    """What the newest valid meta page says about an LMDB file."""

    page_size: int
    last_page: int
    txnid: int
    entries: int
    depth: int


def check_file(path: str, name: str) -> LmdbHeader:
    """Check an LMDB data file's meta pages against its size, without mapping it.

    Args:
        path: the local file.
        name: the shard/file name for error messages.

    Returns:
        The newest meta page's header.

    Raises:
        FormatError: not an LMDB file, an unsupported layout, or pages past the end of the file
            (truncated).
    """
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as f:
            first = f.read(_META_BYTES)
            if len(first) < _META_BYTES:
                raise FormatError(f"{name}: {size} bytes is too short to be an LMDB file")
            page_size = _DB.unpack_from(first, _PAGE_HEAD.size + _META.size)[0]
            if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
                raise FormatError(f"{name}: not an LMDB file (page size field is {page_size})")
            f.seek(page_size)
            second = f.read(_META_BYTES)
    except OSError as exc:
        raise FormatError(f"{name}: cannot read LMDB file: {exc}") from exc
    if len(second) < _META_BYTES:
        raise FormatError(f"{name}: truncated: {size} bytes holds no second LMDB meta page")
    metas = [_parse_meta(first, 0, name), _parse_meta(second, 1, name)]
    for meta in metas:
        if meta.page_size != page_size:
            raise FormatError(f"{name}: LMDB meta pages disagree on the page size")
        end = (meta.last_page + 1) * page_size
        if end > size:
            raise FormatError(
                f"{name}: truncated: LMDB meta page says the file holds {end} bytes, it has {size}"
            )
    return max(metas, key=lambda m: m.txnid)


def _parse_meta(page: bytes, number: int, name: str) -> LmdbHeader:
    pgno, _, flags = _PAGE_HEAD.unpack_from(page, 0)
    magic, version, _, _ = _META.unpack_from(page, _PAGE_HEAD.size)
    if pgno != number or not flags & P_META or magic != MAGIC:
        raise FormatError(f"{name}: not an LMDB file (meta page {number} is invalid)")
    if version != DATA_VERSION:
        raise FormatError(f"{name}: LMDB data version {version} is not supported (want 1)")
    free_db = _DB.unpack_from(page, _PAGE_HEAD.size + _META.size)
    main_db = _DB.unpack_from(page, _PAGE_HEAD.size + _META.size + _DB.size)
    last_page, txnid = _TAIL.unpack_from(page, _PAGE_HEAD.size + _META.size + 2 * _DB.size)
    depth, entries, root = main_db[2], main_db[6], main_db[7]
    if root != P_INVALID and not 2 <= root <= last_page:
        raise FormatError(f"{name}: LMDB meta page {number}: root page {root} is out of range")
    if depth > _MAX_DEPTH or (root == P_INVALID) != (depth == 0):
        raise FormatError(f"{name}: LMDB meta page {number}: tree depth {depth} is not sane")
    return LmdbHeader(free_db[0], last_page, txnid, entries, depth)


class LmdbFile:
    """One LMDB file opened read-only, checked first; re-opened after fork (module docstring)."""

    def __init__(
        self, source: str | os.PathLike[str] | Any, name: str, marks_dir: str | None = None
    ) -> None:
        """Check and open a file.

        Args:
            source: a local path, or a binary file object (copied to a local temp file first,
                then closed).
            name: the file's name in messages.
            marks_dir: the cache dir whose ``verified/`` remembers files whose tree passed on
                this machine (None: remembered in this process only).

        Raises:
            FormatError: the file fails ``check_file`` or ``check_tree``, or LMDB refuses it.
        """
        self.name = name
        if isinstance(source, str | os.PathLike):
            self.path = os.fspath(source)
        else:
            self.path = _spool(source)
            weakref.finalize(self, _remove_in, os.getpid(), self.path)
            marks_dir = None  # a private temp copy: no other process will open it
        self.header = check_file(self.path, name)
        self.size = os.stat(self.path).st_size
        check_tree_once(self.path, name, marks_dir)
        self._pid = -1
        self._env: Any = None
        self._txn: Any = None

    def txn(self) -> Any:
        """The read transaction of this process (``buffers=True``: values are views of the map).

        Raises:
            FormatError: LMDB refuses the file.
        """
        if self._pid != os.getpid():
            # Never touch an environment inherited over fork: drop the references unused.
            self._env = self._txn = None
            try:
                self._env = lmdb.open(
                    self.path,
                    subdir=False,
                    readonly=True,
                    lock=False,
                    readahead=False,
                    max_readers=1,
                    max_spare_txns=0,
                    max_dbs=0,
                )
                self._txn = self._env.begin(buffers=True)
            except lmdb.Error as exc:
                raise FormatError(f"{self.name}: LMDB refuses the file: {exc}") from exc
            self._pid = os.getpid()
        return self._txn

    def entries(self) -> int:
        """Entries in the main database (from LMDB's own stat, not just the meta page)."""
        self.txn()
        return int(self._env.stat()["entries"])

    def close(self) -> None:
        """Close this process's environment (LMDB refuses a second open of a file in one
        process, so a short-lived look such as counting entries must close before a reader opens)."""
        if self._pid == os.getpid() and self._env is not None:
            self._txn.abort()
            self._env.close()
        self._env = self._txn = None
        self._pid = -1


def check_tree_once(path: str, name: str, marks_dir: str | None) -> None:
    """``check_tree`` of a local file whose meta pages passed ``check_file``, once per file
    version on this machine (marks in ``marks_dir``) or per process.

    Raises:
        FormatError: the tree fails the check, or the file cannot be read.
    """
    try:
        key = verified.version_key(path, TREE_CHECK)
        if verified.is_verified(key, marks_dir):
            return
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        try:
            check_tree(mapped, name)
        finally:
            # A FormatError's traceback may still hold views of the map: then it is unmapped
            # when they are collected.
            with contextlib.suppress(BufferError):
                mapped.close()
    except OSError as exc:
        raise FormatError(f"{name}: cannot read LMDB file: {exc}") from exc
    verified.mark_verified(key, marks_dir)


def _spool(file: Any) -> str:
    """Copy a file object to a local temp file (then close it: the copy is what gets mapped)."""
    fd, path = tempfile.mkstemp(prefix="streamload-", suffix=".lmdb")
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(file, out, 4 * 2**20)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        file.close()
    return path


def _remove_in(pid: int, path: str) -> None:
    if os.getpid() == pid:
        with contextlib.suppress(OSError):
            os.unlink(path)
