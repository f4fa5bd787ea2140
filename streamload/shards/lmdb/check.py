"""Structural check of an LMDB file: everything a reader will dereference lies inside the file.

LMDB trusts its file. It refuses a page number at or past the newest meta page's last page, and
nothing else: a node's offset inside its page, its key size, its data size, an overflow page's
run length and a sub-page's bounds are used as they are. In a file whose checksum matches (a
hostile dataset, or index.json rewritten over corrupted bytes) a node whose size field runs past
the end of the file makes the reader touch unmapped pages and die of SIGBUS; a ``F_DUPDATA`` flag
in a database without sorted duplicates is a NULL dereference; a branch page with fewer than two
keys trips an assertion (abort). ``check_tree`` walks the B-tree of the main database the way a
read transaction sees it (the newest meta page) and refuses such a file with a `FormatError`
before LMDB maps it:

- every page of the tree is reached once (no cycles, no shared pages), lies in
  ``[2, last_page]``, carries its own page number and the flags of its level (branch pages above,
  leaf pages at the depth the meta page records), with ``16 <= lower <= upper <= page_size``;
- every node's slot points inside the page, past the slot array; its header and key, and its
  data unless it lives on overflow pages, end inside the page; branch pages have at least two
  keys, leaf pages at least one; node flags are ones the database's flags allow;
- every overflow run starts with an overflow page carrying its own number, is long enough for
  the value's size, ends at or before the last page and overlaps no other run or tree page;
- sorted-duplicate sub-pages lie inside their node and sub-databases are checked like the main
  tree; keys of integer-key databases are 4 or 8 bytes;
- the entry and page counts add up to what the meta page records.

The free-page tree is not checked: a read-only environment never reads it. Key order is not
checked (a misordered tree makes lookups miss, which the shard reader reports as a missing row).
The walk is vectorised per level with numpy (a few hundred pages at a time), reads only the
pages of the tree and the first page of each overflow run, and is pure: bytes in, summary or
`FormatError` out. Callers check the meta pages first (`streamload.shards.lmdb.file.check_file`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.errors import FormatError

PAGE_HEADER = 16
NODE_HEADER = 8
NUM_METAS = 2
P_INVALID = 2**64 - 1
# Page flags.
P_BRANCH, P_LEAF, P_OVERFLOW, P_META, P_LEAF2, P_SUBP = 0x01, 0x02, 0x04, 0x08, 0x20, 0x40
_TYPE_BITS = P_BRANCH | P_LEAF | P_OVERFLOW | P_META | P_LEAF2 | P_SUBP
# Node flags.
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
# Database flags.
MDB_REVERSEKEY, MDB_DUPSORT, MDB_INTEGERKEY = 0x02, 0x04, 0x08
MDB_DUPFIXED, MDB_INTEGERDUP, MDB_REVERSEDUP = 0x10, 0x20, 0x40
_DB_FLAGS = 0x7E
_DB = struct.Struct("<IHHQQQQQ")  # pad, flags, depth, branch, leaf, overflow pages, entries, root
_META_DBS = PAGE_HEADER + 24  # offset of the free DB record in a meta page (magic..mapsize)
_MAX_DEPTH = 32  # LMDB's cursor stack (CURSOR_STACK): a deeper tree cannot be read anyway
_CHUNK_PAGES = 512


@dataclass(frozen=True)
class TreeStats:
    """What the walk counted in one database (matches its record in the meta page)."""

    entries: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int


@dataclass(frozen=True)
class _DbRecord:
    pad: int  # key size of fixed-size duplicates (MDB_DUPFIXED sub-databases)
    flags: int
    depth: int
    branch_pages: int
    leaf_pages: int
    overflow_pages: int
    entries: int
    root: int

    @classmethod
    def parse(cls, raw: bytes | memoryview, offset: int = 0) -> _DbRecord:
        return cls(*_DB.unpack_from(raw, offset))


def check_tree(data: Any, name: str) -> TreeStats:
    """Check that reading the main database of an LMDB file stays inside the file.

    Args:
        data: the file's bytes (``bytes``, ``mmap``, anything with the buffer protocol); its
            meta pages already passed ``lmdb_file.check_file``.
        name: the file's name for messages.

    Returns:
        The counts of the main database.

    Raises:
        FormatError: a page, node, overflow run or count that LMDB would misread (the message
            names the page and what is wrong).
    """
    buf = np.frombuffer(data, np.uint8)
    raw = memoryview(data).cast("B")
    if len(buf) < 2 * PAGE_HEADER + _META_DBS:
        raise FormatError(f"{name}: {len(buf)} bytes is too short to be an LMDB file")
    page_size = int(_DB.unpack_from(raw, _META_DBS)[0])
    if not 512 <= page_size <= 65536 or page_size & (page_size - 1):
        raise FormatError(f"{name}: not an LMDB file (page size {page_size})")
    metas = []
    for number in range(NUM_METAS):
        at = number * page_size
        if at + _META_DBS + 2 * _DB.size + 16 > len(buf):
            raise FormatError(f"{name}: truncated: no room for LMDB meta page {number}")
        last_page, txnid = struct.unpack_from("<QQ", raw, at + _META_DBS + 2 * _DB.size)
        metas.append((txnid, -number, last_page, at + _META_DBS + _DB.size))
    # What a read transaction uses: the newest meta page (meta 0 on a tie).
    _, _, last_page, record_at = max(metas)
    main = _DbRecord.parse(raw, record_at)
    if (last_page + 1) * page_size > len(buf):
        raise FormatError(
            f"{name}: truncated: LMDB says {(last_page + 1) * page_size} bytes, the file has"
            f" {len(buf)}"
        )
    walker = _Walker(buf, page_size, last_page, name)
    stats = walker.tree(main, "main database", sub=False)
    walker.check_overflow_runs()
    return stats


class _Walker:
    """One walk over one file: the pages seen so far (each tree page and overflow run once)."""

    def __init__(self, buf: np.ndarray, page_size: int, last_page: int, name: str) -> None:
        self.buf = buf
        self.page_size = page_size
        self.last_page = last_page
        self.name = name
        self.seen = np.zeros(last_page + 1, np.bool_)  # tree pages reached so far
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # overflow (first page, pages)
        self.sub_pages = np.zeros(2, np.int64)  # branch and leaf pages of duplicates sub-trees

    def fail(self, what: str) -> FormatError:
        return FormatError(f"{self.name}: corrupt LMDB file: {what}")

    # -- one tree --------------------------------------------------------------------------------

    def tree(self, db: _DbRecord, what: str, sub: bool) -> TreeStats:
        """Walk one B-tree level by level from its root; return its counts."""
        if db.flags & ~_DB_FLAGS:
            raise self.fail(f"{what} has unknown flags 0x{db.flags:x}")
        if db.root == P_INVALID:
            if db.depth or db.entries:
                raise self.fail(f"{what} is empty but records depth {db.depth}")
            return TreeStats(0, 0, 0, 0)
        if not 1 <= db.depth <= _MAX_DEPTH:
            raise self.fail(f"{what} records tree depth {db.depth}")
        level = np.array([db.root], np.uint64)
        entries = branch_pages = leaf_pages = overflow_pages = 0
        for depth in range(db.depth):
            leaf = depth == db.depth - 1
            pages = self._claim(level, f"{what} level {depth}")
            children = []
            for first in range(0, len(pages), _CHUNK_PAGES):
                chunk = pages[first : first + _CHUNK_PAGES]
                if leaf:
                    n, ov = self._leaves(chunk, db, what, sub)
                    entries += n
                    overflow_pages += ov
                else:
                    children.append(self._branches(chunk, db, what))
            if leaf:
                leaf_pages += len(pages)
            else:
                branch_pages += len(pages)
                level = np.concatenate(children)
        if sub:  # a database's page counts include its duplicates' sub-trees
            self.sub_pages += (branch_pages, leaf_pages)
        else:
            branch_pages += int(self.sub_pages[0])
            leaf_pages += int(self.sub_pages[1])
        counted = TreeStats(entries, branch_pages, leaf_pages, overflow_pages)
        recorded = TreeStats(db.entries, db.branch_pages, db.leaf_pages, db.overflow_pages)
        if counted != recorded:
            raise self.fail(f"{what}: the tree holds {counted}, its record says {recorded}")
        return counted

    def _claim(self, pages: np.ndarray, what: str) -> np.ndarray:
        """Check page numbers are in range and reached for the first time; mark them seen."""
        bad = (pages < NUM_METAS) | (pages > self.last_page)
        if bad.any():
            page = int(pages[np.argmax(bad)])
            raise self.fail(f"{what}: page number {page} is outside [2, {self.last_page}]")
        pages = pages.astype(np.int64)
        if len(np.unique(pages)) != len(pages) or self.seen[pages].any():
            raise self.fail(f"{what}: a page is reached twice (the tree has a cycle)")
        self.seen[pages] = True
        return pages

    def _headers(
        self, pages: np.ndarray, flags_want: int, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Check page headers; return (lower, upper)."""
        base = pages * self.page_size
        head = self.buf[base[:, None] + np.arange(PAGE_HEADER)]
        pgno = head[:, 0:8].copy().view("<u8")[:, 0]
        flags = head[:, 10:12].copy().view("<u2")[:, 0]
        lower = head[:, 12:14].copy().view("<u2")[:, 0].astype(np.int64)
        upper = head[:, 14:16].copy().view("<u2")[:, 0].astype(np.int64)
        wrong = pgno != pages.astype(np.uint64)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(f"{what}: page {pages[i]} says it is page {pgno[i]}")
        wrong = (flags & _TYPE_BITS) != flags_want
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[i]} has flags 0x{int(flags[i]):x}, expected 0x{flags_want:x}"
            )
        wrong = (
            (lower < PAGE_HEADER) | (lower > upper) | (upper > self.page_size) | (lower & 1 == 1)
        )
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[i]} has free space [{lower[i]}, {upper[i]}) outside"
                f" [{PAGE_HEADER}, {self.page_size}]"
            )
        return lower, upper

    def _nodes(
        self, pages: np.ndarray, lower: np.ndarray, upper: np.ndarray, min_keys: int, what: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check node slots and headers of pages whose headers passed.

        Returns:
            (page of each node, absolute offset of each node, its 8-byte header as uint16[4]).
        """
        nkeys = (lower - PAGE_HEADER) // 2
        few = nkeys < min_keys
        if few.any():
            i = int(np.argmax(few))
            raise self.fail(f"{what}: page {pages[i]} has {nkeys[i]} keys (at least {min_keys})")
        owner = np.repeat(np.arange(len(pages)), nkeys)
        slot = np.arange(len(owner)) - np.repeat(np.cumsum(nkeys) - nkeys, nkeys)
        base = pages[owner] * self.page_size
        at = base + PAGE_HEADER + 2 * slot
        ptr = self.buf[at].astype(np.int64) | (self.buf[at + 1].astype(np.int64) << 8)
        wrong = (ptr < upper[owner]) | (ptr + NODE_HEADER > self.page_size)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[owner[i]]} slot {slot[i]} points at offset {ptr[i]},"
                f" outside [{upper[owner[i]]}, {self.page_size - NODE_HEADER}]"
            )
        node = base + ptr
        head = self.buf[node[:, None] + np.arange(NODE_HEADER)].copy().view("<u2")
        ksize = head[:, 3].astype(np.int64)
        wrong = ptr + NODE_HEADER + ksize > self.page_size
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[owner[i]]} slot {slot[i]}: a {ksize[i]}-byte key at offset"
                f" {ptr[i]} runs past the page"
            )
        return owner, node, head

    def _branches(self, pages: np.ndarray, db: _DbRecord, what: str) -> np.ndarray:
        lower, upper = self._headers(pages, P_BRANCH, what)
        owner, _, head = self._nodes(pages, lower, upper, 2, what)
        self._integer_keys(db, head, owner, pages, what, first_exempt=True)
        child = (
            head[:, 0].astype(np.uint64)
            | (head[:, 1].astype(np.uint64) << np.uint64(16))
            | (head[:, 2].astype(np.uint64) << np.uint64(32))
        )
        return child

    def _integer_keys(
        self,
        db: _DbRecord,
        head: np.ndarray,
        owner: np.ndarray,
        pages: np.ndarray,
        what: str,
        first_exempt: bool = False,
    ) -> None:
        """Integer keys are compared as 4- or 8-byte words: shorter ones would be over-read."""
        if not db.flags & MDB_INTEGERKEY:
            return
        ksize = head[:, 3]
        bad = (ksize != 4) & (ksize != 8)
        if first_exempt:  # a branch page's first key is never compared (and may be empty)
            first = np.ones(len(owner), np.bool_)
            first[1:] = owner[1:] != owner[:-1]
            bad &= ~first
        if bad.any():
            i = int(np.argmax(bad))
            raise self.fail(f"{what}: page {pages[owner[i]]}: integer key of {ksize[i]} bytes")

    def _leaves(self, pages: np.ndarray, db: _DbRecord, what: str, sub: bool) -> tuple[int, int]:
        """Check leaf pages; return (entries, overflow pages) under them."""
        if sub and db.flags & MDB_DUPFIXED:
            return self._leaf2(pages, db, what), 0
        lower, upper = self._headers(pages, P_LEAF, what)
        owner, node, head = self._nodes(pages, lower, upper, 1, what)
        self._integer_keys(db, head, owner, pages, what)
        flags = head[:, 2].astype(np.int64)
        ksize = head[:, 3].astype(np.int64)
        dsize = head[:, 0].astype(np.int64) | (head[:, 1].astype(np.int64) << 16)
        if sub:  # a key's duplicates: keys without data
            allowed = {0}
        elif db.flags & MDB_DUPSORT:
            allowed = {0, F_DUPDATA, F_DUPDATA | F_SUBDATA}
        else:  # F_SUBDATA: a named database's record in the main database
            allowed = {0, F_BIGDATA, F_SUBDATA}
        wrong = ~np.isin(flags, list(allowed))
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(f"{what}: page {pages[owner[i]]}: node flags 0x{flags[i]:x}")
        data = node + NODE_HEADER + ksize
        page_end = pages[owner] * self.page_size + self.page_size
        big = (flags & F_BIGDATA) != 0
        inline_end = data + np.where(big, 8, dsize)
        wrong = inline_end > page_end
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[owner[i]]}: a {dsize[i]}-byte value at offset"
                f" {data[i] - page_end[i] + self.page_size} runs past the page"
            )
        wrong = ((flags & F_SUBDATA) != 0) & (dsize != _DB.size)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: page {pages[owner[i]]}: a sub-database record of {dsize[i]} bytes"
            )
        entries = int(np.count_nonzero((flags & F_DUPDATA) == 0))
        overflow = 0
        if big.any():
            overflow = self._overflow(data[big], dsize[big], what)
        for i in np.flatnonzero(flags & F_DUPDATA).tolist():
            entries += self._duplicates(int(data[i]), int(dsize[i]), int(flags[i]), db, what)
        return entries, overflow

    def _overflow(self, data: np.ndarray, dsize: np.ndarray, what: str) -> int:
        """Check the overflow runs named by BIGDATA nodes; return their pages."""
        first = self.buf[data[:, None] + np.arange(8)].copy().view("<u8")[:, 0]
        bad = (first < NUM_METAS) | (first > self.last_page)
        if bad.any():
            i = int(np.argmax(bad))
            raise self.fail(
                f"{what}: overflow page number {first[i]} outside [2, {self.last_page}]"
            )
        first = first.astype(np.int64)
        head = self.buf[(first * self.page_size)[:, None] + np.arange(PAGE_HEADER)]
        pgno = head[:, 0:8].copy().view("<u8")[:, 0]
        flags = head[:, 10:12].copy().view("<u2")[:, 0]
        count = head[:, 12:16].copy().view("<u4")[:, 0].astype(np.int64)
        need = (PAGE_HEADER - 1 + dsize) // self.page_size + 1
        wrong = (pgno != first.astype(np.uint64)) | ((flags & _TYPE_BITS) != P_OVERFLOW)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(f"{what}: page {first[i]} is not the overflow page a value points at")
        wrong = (count < need) | (first + count - 1 > self.last_page)
        if wrong.any():
            i = int(np.argmax(wrong))
            raise self.fail(
                f"{what}: overflow run at page {first[i]} of {count[i]} pages cannot hold a"
                f" {dsize[i]}-byte value inside the file ({self.last_page + 1} pages)"
            )
        self.runs.append((first, count))
        return int(count.sum())

    def check_overflow_runs(self) -> None:
        """No two overflow runs overlap, and none overlaps a tree page."""
        if not self.runs:
            return
        first = np.concatenate([f for f, _ in self.runs])
        count = np.concatenate([c for _, c in self.runs])
        order = np.argsort(first, kind="stable")
        first, count = first[order], count[order]
        if (first[1:] < first[:-1] + count[:-1]).any():
            raise self.fail("two overflow runs overlap")
        cover = np.zeros(self.last_page + 2, np.int64)
        np.add.at(cover, first, 1)
        np.add.at(cover, first + count, -1)
        if (np.cumsum(cover)[:-1].astype(np.bool_) & self.seen).any():
            raise self.fail("an overflow run overlaps a page of the tree")

    # -- sorted duplicates -----------------------------------------------------------------------

    def _duplicates(self, data: int, dsize: int, flags: int, db: _DbRecord, what: str) -> int:
        """Check one key's duplicates (a sub-page inside the node, or a sub-database)."""
        sub_flags = 0
        if db.flags & MDB_DUPFIXED:
            sub_flags |= MDB_DUPFIXED
        if db.flags & MDB_INTEGERDUP:
            sub_flags |= MDB_INTEGERKEY
        if flags & F_SUBDATA:
            record = _DbRecord.parse(self.buf[data : data + _DB.size].tobytes())
            record = _DbRecord(
                record.pad,
                sub_flags | (record.flags & ~(MDB_DUPSORT | MDB_INTEGERKEY | MDB_DUPFIXED)),
                record.depth,
                record.branch_pages,
                record.leaf_pages,
                record.overflow_pages,
                record.entries,
                record.root,
            )
            if record.flags & MDB_DUPSORT:
                raise self.fail(f"{what}: duplicates of duplicates")
            return self.tree(record, f"sub-database under {what}", sub=True).entries
        return self._subpage(data, dsize, sub_flags, what)

    def _subpage(self, start: int, size: int, sub_flags: int, what: str) -> int:
        """A key's few duplicates stored inline: a small leaf page inside the node's data."""
        if size < PAGE_HEADER:
            raise self.fail(f"{what}: a {size}-byte duplicates sub-page")
        raw = self.buf[start : start + size].tobytes()
        flags, lower, upper = struct.unpack_from("<HHH", raw, 10)
        want = P_LEAF | P_SUBP | (P_LEAF2 if sub_flags & MDB_DUPFIXED else 0)
        if flags & _TYPE_BITS != want or not PAGE_HEADER <= lower <= upper <= size or lower & 1:
            raise self.fail(f"{what}: malformed duplicates sub-page at offset {start}")
        nkeys = (lower - PAGE_HEADER) // 2
        if nkeys < 1:
            raise self.fail(f"{what}: empty duplicates sub-page at offset {start}")
        if want & P_LEAF2:
            ksize = struct.unpack_from("<H", raw, 8)[0]
            if PAGE_HEADER + nkeys * ksize > size or (
                sub_flags & MDB_INTEGERKEY and ksize not in (4, 8)
            ):
                raise self.fail(f"{what}: duplicates sub-page at offset {start} overruns its node")
            return int(nkeys)
        for slot in range(nkeys):
            ptr = struct.unpack_from("<H", raw, PAGE_HEADER + 2 * slot)[0]
            if ptr < upper or ptr + NODE_HEADER > size:
                raise self.fail(f"{what}: duplicates sub-page at offset {start}: bad slot {slot}")
            lo, hi, node_flags, ksize = struct.unpack_from("<HHHH", raw, ptr)
            if node_flags or ptr + NODE_HEADER + ksize + (lo | hi << 16) > size:
                raise self.fail(f"{what}: duplicates sub-page at offset {start}: bad node {slot}")
            if sub_flags & MDB_INTEGERKEY and ksize not in (4, 8):
                raise self.fail(f"{what}: duplicates sub-page at offset {start}: integer key size")
        return int(nkeys)

    def _leaf2(self, pages: np.ndarray, db: _DbRecord, what: str) -> int:
        """Leaf pages of fixed-size duplicates: keys packed after the header, no nodes."""
        lower, _ = self._headers(pages, P_LEAF | P_LEAF2, what)
        base = pages * self.page_size
        pad = self.buf[base[:, None] + np.array([8, 9])].copy().view("<u2")[:, 0]
        nkeys = (lower - PAGE_HEADER) // 2
        ksize = np.maximum(pad.astype(np.int64), db.pad)  # LMDB reads keys of db.pad bytes
        if (nkeys < 1).any() or (PAGE_HEADER + nkeys * ksize > self.page_size).any():
            raise self.fail(f"{what}: a fixed-size duplicates page overruns itself")
        if db.flags & MDB_INTEGERKEY and not np.isin(ksize, (4, 8)).all():
            raise self.fail(f"{what}: fixed-size integer duplicates of the wrong size")
        return int(nkeys.sum())
