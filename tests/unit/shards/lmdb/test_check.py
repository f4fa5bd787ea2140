"""The LMDB tree check: every layout LMDB writes passes; everything a reader would misread fails.

Crash-prone reads (LMDB over a file the check would refuse) run in a child process, so a SIGBUS
fails one test instead of the run.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import lmdb
import numpy as np
import pytest

import streamload as sl
from streamload.errors import FormatError
from streamload.format import verified
from streamload.format.checksum import xxh3_64_file
from streamload.shards.lmdb.check import check_tree
from streamload.shards.lmdb.file import LmdbFile

PAGE = 4096
_META_MAIN = 16 + 24 + 48  # the main database's record in a meta page


# -- building LMDB files of every layout ------------------------------------------------------


def _env(path: Path, **kw: Any) -> Any:
    return lmdb.open(str(path), subdir=False, lock=False, map_size=1 << 26, **kw)


def _newest_meta(data: bytes | bytearray) -> int:
    txnids = [struct.unpack_from("<Q", data, n * PAGE + 144)[0] for n in (0, 1)]
    return 0 if txnids[0] >= txnids[1] else 1


def _promote_named_db(path: Path) -> None:
    """Make the file's one named database its main database (py-lmdb refuses flags such as
    dupsort on the main database; a file made elsewhere may have them)."""
    data = bytearray(path.read_bytes())
    meta = _newest_meta(data) * PAGE
    root = struct.unpack_from("<Q", data, meta + _META_MAIN + 40)[0]
    ptr = struct.unpack_from("<H", data, root * PAGE + 16)[0]
    node = root * PAGE + ptr
    ksize = struct.unpack_from("<H", data, node + 6)[0]
    record = data[node + 8 + ksize : node + 8 + ksize + 48]
    data[meta + _META_MAIN : meta + _META_MAIN + 48] = record
    path.write_bytes(bytes(data))


def _plain(path: Path) -> None:
    """Several transactions of mixed value sizes (overflow runs), then deletes (free pages)."""
    rng = np.random.default_rng(0)
    env = _env(path)
    for _ in range(3):
        with env.begin(write=True) as txn:
            for _ in range(600):
                size = int(rng.choice([0, 7, 300, 2500, 9000]))
                txn.put(rng.bytes(8), rng.bytes(size))
    with env.begin(write=True) as txn:
        cursor = txn.cursor()
        cursor.first()
        for _ in range(500):
            cursor.delete()
    env.close()


def _deep(path: Path) -> None:
    """A tree of depth 3."""
    rng = np.random.default_rng(1)
    env = _env(path)
    with env.begin(write=True) as txn:
        for _ in range(40_000):
            txn.put(rng.bytes(40), b"")
    env.close()


def _named(path: Path, **flags: Any) -> None:
    """One named database with ``flags`` (dupsort, dupfixed, integerkey...), promoted to main."""
    rng = np.random.default_rng(2)
    env = _env(path, max_dbs=1)
    db = env.open_db(b"x", **flags)
    with env.begin(write=True, db=db) as txn:
        for k in range(300):
            if flags.get("integerkey"):
                txn.put(struct.pack("=Q", k), b"v" * (k % 40), db=db)
                continue
            for j in range(int(rng.choice([1, 3, 40, 600]))):  # sub-pages and sub-databases
                value = struct.pack("<Q", j) if flags.get("dupfixed") else rng.bytes(1 + j % 90)
                txn.put(b"k%05d" % k, value, db=db)
    env.close()
    _promote_named_db(path)


def _streamload_shard(path: Path) -> None:
    """A shard as ShardWriter writes it (big-endian row keys, values on overflow pages too)."""
    with sl.ShardWriter(str(path.parent / "ds"), format="lmdb", shard_size="1GB") as writer:
        for i in range(400):
            writer.write({"id": i, "blob": bytes([i % 256]) * (i * 37 % 6000)})
    os.replace(path.parent / "ds" / "shard-00000.lmdb", path)


def _empty(path: Path) -> None:
    _env(path).close()


def _compacted(path: Path) -> None:
    _plain(path.with_suffix(".src"))
    env = _env(path.with_suffix(".src"))
    env.copy(str(path), compact=True)
    env.close()


BUILDERS: dict[str, Callable[[Path], None]] = {
    "streamload": _streamload_shard,
    "plain": _plain,
    "deep": _deep,
    "dupsort": lambda p: _named(p, dupsort=True),
    "dupfixed": lambda p: _named(p, dupsort=True, dupfixed=True, integerdup=True),
    "integerkey": lambda p: _named(p, integerkey=True),
    "empty": _empty,
    "compacted": _compacted,
}


@pytest.mark.parametrize("layout", list(BUILDERS))
def test_every_layout_lmdb_writes_passes_with_its_own_counts(tmp_path: Path, layout: str) -> None:
    """Valid files of every layout pass, and the walk counts what LMDB's stat reports."""
    path = tmp_path / "data.mdb"
    BUILDERS[layout](path)
    stats = check_tree(path.read_bytes(), layout)
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    want = env.stat()
    env.close()
    assert (stats.entries, stats.branch_pages, stats.leaf_pages, stats.overflow_pages) == (
        want["entries"],
        want["branch_pages"],
        want["leaf_pages"],
        want["overflow_pages"],
    )
    if layout == "deep":
        assert want["depth"] == 3
    if layout in ("plain", "streamload"):
        assert stats.overflow_pages > 0


# -- corrupting one thing at a time ------------------------------------------------------------


def _pages_of(data: bytes | bytearray, flag: int) -> list[int]:
    """Page numbers of the newest tree whose page flags include ``flag`` (a walk, like LMDB's)."""
    meta = _newest_meta(data) * PAGE
    root = struct.unpack_from("<Q", data, meta + _META_MAIN + 40)[0]
    out, level = [], [root]
    while level:
        nxt = []
        for page in level:
            flags, lower = struct.unpack_from("<HH", data, page * PAGE + 10)
            if flags & flag:
                out.append(page)
            if flags & 1:  # branch
                for slot in range((lower - 16) // 2):
                    ptr = struct.unpack_from("<H", data, page * PAGE + 16 + 2 * slot)[0]
                    lo, hi, top = struct.unpack_from("<HHH", data, page * PAGE + ptr)
                    nxt.append(lo | hi << 16 | top << 32)
        level = nxt
    return sorted(out)


def _node(data: bytes | bytearray, page: int, slot: int) -> int:
    """Absolute offset of node ``slot`` of ``page``."""
    return page * PAGE + struct.unpack_from("<H", data, page * PAGE + 16 + 2 * slot)[0]


def _big_node(data: bytes | bytearray) -> tuple[int, int]:
    """(node offset, overflow page) of the last value stored on overflow pages."""
    for page in reversed(_pages_of(data, 2)):
        lower = struct.unpack_from("<H", data, page * PAGE + 12)[0]
        for slot in reversed(range((lower - 16) // 2)):
            node = _node(data, page, slot)
            if struct.unpack_from("<H", data, node + 4)[0] & 1:
                ksize = struct.unpack_from("<H", data, node + 6)[0]
                return node, struct.unpack_from("<Q", data, node + 8 + ksize)[0]
    raise AssertionError("no overflow value")


def _last_leaf_node(data: bytearray) -> int:
    page = _pages_of(data, 2)[-1]
    lower = struct.unpack_from("<H", data, page * PAGE + 12)[0]
    return _node(data, page, (lower - 16) // 2 - 1)


def _inline_node(data: bytearray) -> int:
    """A leaf node whose value is stored in the page (not on overflow pages)."""
    for page in reversed(_pages_of(data, 2)):
        lower = struct.unpack_from("<H", data, page * PAGE + 12)[0]
        for slot in range((lower - 16) // 2):
            node = _node(data, page, slot)
            if struct.unpack_from("<H", data, node + 4)[0] == 0:
                return node
    raise AssertionError("no inline value")


def _inline_value_past_the_page(data: bytearray) -> None:
    """A value's size field (2 bytes) says ~4 GB."""
    struct.pack_into("<H", data, _inline_node(data) + 2, 0xFFFF)


def _overflow_value_past_the_file(data: bytearray) -> None:
    """The SIGBUS of issue 16: a value on overflow pages claims more pages than the file has."""
    node, _ = _big_node(data)
    struct.pack_into("<H", data, node + 2, 0x7FFF)


def _overflow_run_past_the_file(data: bytearray) -> None:
    _, page = _big_node(data)
    struct.pack_into("<I", data, page * PAGE + 12, 10**6)


def _overflow_page_not_overflow(data: bytearray) -> None:
    _, page = _big_node(data)
    struct.pack_into("<H", data, page * PAGE + 10, 0x02)


def _slot_past_the_page(data: bytearray) -> None:
    page = _pages_of(data, 2)[-1]
    struct.pack_into("<H", data, page * PAGE + 16, PAGE - 2)


def _key_past_the_page(data: bytearray) -> None:
    struct.pack_into("<H", data, _last_leaf_node(data) + 6, 0xFFF0)


def _child_past_the_file(data: bytearray) -> None:
    page = _pages_of(data, 1)[0]
    struct.pack_into("<H", data, _node(data, page, 1) + 2, 0x7FFF)


def _branch_with_one_key(data: bytearray) -> None:
    page = _pages_of(data, 1)[0]
    struct.pack_into("<H", data, page * PAGE + 12, 16 + 2)


def _cycle(data: bytearray) -> None:
    """A branch's child is the branch itself."""
    page = _pages_of(data, 1)[0]
    node = _node(data, page, 1)
    struct.pack_into("<HHH", data, node, page & 0xFFFF, page >> 16, 0)


def _wrong_page_number(data: bytearray) -> None:
    page = _pages_of(data, 2)[0]
    struct.pack_into("<Q", data, page * PAGE, page + 1)


def _leaf_flagged_branch(data: bytearray) -> None:
    page = _pages_of(data, 2)[0]
    struct.pack_into("<H", data, page * PAGE + 10, 0x01)


def _free_space_inverted(data: bytearray) -> None:
    page = _pages_of(data, 2)[0]
    upper = struct.unpack_from("<H", data, page * PAGE + 14)[0]
    struct.pack_into("<HH", data, page * PAGE + 12, upper + 2, upper)


def _duplicates_flag_without_dupsort(data: bytearray) -> None:
    """F_DUPDATA in a database without sorted duplicates: LMDB dereferences a NULL cursor."""
    struct.pack_into("<H", data, _inline_node(data) + 4, 0x04)


def _entry_count(data: bytearray) -> None:
    meta = _newest_meta(data) * PAGE
    entries = struct.unpack_from("<Q", data, meta + _META_MAIN + 32)[0]
    struct.pack_into("<Q", data, meta + _META_MAIN + 32, entries + 1)


CORRUPTIONS: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "inline value past the page": (_inline_value_past_the_page, "runs past the page"),
    "overflow value past its run": (_overflow_value_past_the_file, "cannot hold"),
    "overflow run past the file": (_overflow_run_past_the_file, "cannot hold"),
    "overflow page of the wrong type": (_overflow_page_not_overflow, "not the overflow page"),
    "slot past the page": (_slot_past_the_page, "points at offset"),
    "key past the page": (_key_past_the_page, "runs past the page"),
    "child past the file": (_child_past_the_file, "outside"),
    "branch with one key": (_branch_with_one_key, "has 1 keys"),
    "cycle": (_cycle, "reached twice"),
    "wrong page number": (_wrong_page_number, "says it is page"),
    "leaf flagged branch": (_leaf_flagged_branch, "has flags"),
    "free space inverted": (_free_space_inverted, "free space"),
    "duplicates flag without dupsort": (_duplicates_flag_without_dupsort, "node flags"),
    "entry count": (_entry_count, "its record says"),
}


@pytest.fixture(scope="module")
def shard(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A streamload LMDB shard with a branch level, inline values and overflow values."""
    path = tmp_path_factory.mktemp("shard") / "shard.lmdb"
    _streamload_shard(path)
    data = path.read_bytes()
    assert _pages_of(data, 1), "the fixture needs a branch page"
    return data


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_each_thing_lmdb_would_misread_is_a_format_error(shard: bytes, corruption: str) -> None:
    """Every corruption class fails the check with a message saying what is wrong where."""
    corrupt, message = CORRUPTIONS[corruption]
    data = bytearray(shard)
    corrupt(data)
    with pytest.raises(FormatError, match=message) as info:
        check_tree(bytes(data), "shard-00007.lmdb")
    assert "shard-00007.lmdb: corrupt LMDB file" in str(info.value)


# -- through the dataset, in a child process ----------------------------------------------------

_READ = textwrap.dedent(
    """
    import sys
    import streamload as sl
    url, workers = sys.argv[1], int(sys.argv[2])
    try:
        ds = sl.StreamingDataset(url)
        if workers:
            for _ in sl.StreamLoader(ds, batch_size=8, num_workers=workers):
                pass
        else:
            for i in range(len(ds)):
                ds[i]
        print("read all")
    except sl.StreamloadError as exc:
        print(type(exc).__name__ + ":", str(exc).replace(chr(10), " "))
    """
)


def _rehash(root: Path, name: str) -> None:
    """Make index.json agree with a tampered shard: only the structure check can save us."""
    index = json.loads((root / "index.json").read_text())
    for entry in index["shards"]:
        if entry["name"] == name:
            entry["bytes"] = os.path.getsize(root / name)
            entry["xxh3_64"] = xxh3_64_file(fsspec.filesystem("file"), str(root / name))
    (root / "index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize(
    "corruption",
    # Before the check: SIGBUS in txn.get, SIGABRT (an LMDB assertion), a "missing row".
    ["overflow value past its run", "branch with one key", "key past the page"],
)
def test_corrupt_shard_with_a_matching_checksum_is_a_format_error_not_a_sigbus(
    tmp_path: Path, corruption: str, workers: int
) -> None:
    """A shard tampered past its checksum fails with FormatError naming it, in the trainer
    (num_workers=0) and in workers, instead of killing the process (SIGBUS, SIGABRT)."""
    root = tmp_path / "ds"
    _streamload_shard(tmp_path / "unused.lmdb")  # writes tmp_path/ds with one shard
    os.replace(tmp_path / "unused.lmdb", root / "shard-00000.lmdb")
    data = bytearray((root / "shard-00000.lmdb").read_bytes())
    CORRUPTIONS[corruption][0](data)
    (root / "shard-00000.lmdb").write_bytes(bytes(data))
    _rehash(root, "shard-00000.lmdb")
    env = {**os.environ, "STREAMLOAD_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", _READ, str(root), str(workers)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, f"reader died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    out = proc.stdout.strip()
    assert "FormatError" in out and "shard-00000.lmdb: corrupt LMDB file" in out, out


# -- once per file version --------------------------------------------------------------------


def test_the_tree_is_walked_once_per_file_version_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second open (even in a fresh process: marks in the cache dir) skips the walk; a
    rewritten file is walked again."""
    import streamload.shards.lmdb.file as lmdb_file

    path = tmp_path / "shard.lmdb"
    _streamload_shard(path)
    walks: list[str] = []
    monkeypatch.setattr(
        lmdb_file, "check_tree", lambda data, name: walks.append(name) or check_tree(data, name)
    )
    monkeypatch.setattr(verified, "_SEEN", set())
    marks = str(tmp_path / "cache")
    LmdbFile(str(path), "a", marks).close()
    LmdbFile(str(path), "b", marks).close()
    assert walks == ["a"]
    verified._SEEN.clear()  # what a fresh process sees: only the marks on disk
    LmdbFile(str(path), "c", marks).close()
    assert walks == ["a"]
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)  # a new version of the file (new inode and ctime)
    LmdbFile(str(path), "d", marks).close()
    assert walks == ["a", "d"]


def test_a_refused_tree_leaves_no_mark(tmp_path: Path, shard: bytes) -> None:
    """A file that failed is checked (and refused) again on every open."""
    data = bytearray(shard)
    _inline_value_past_the_page(data)
    path = tmp_path / "bad.lmdb"
    path.write_bytes(bytes(data))
    for _ in range(2):
        with pytest.raises(FormatError, match="runs past the page"):
            LmdbFile(str(path), "bad", str(tmp_path / "cache"))
