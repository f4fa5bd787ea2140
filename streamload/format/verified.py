"""Which shard files have passed their checksum: remembered per process and, for local files, per machine.

A local shard is hashed once per *file version*, not once per process. Loader workers start
afresh every epoch (DataLoader semantics without ``persistent_workers``), and each would otherwise
re-hash every shard it touches, every epoch — for a large corpus more work than the training read.
A version is the file's (device, inode, size, mtime_ns, ctime_ns) plus the digest index.json
expects: rewriting, truncating, replacing or touching the file changes it (user code cannot set
ctime back), so a changed file is always hashed again. A mark is an empty file named by the xxh3
of that key under ``<cache_dir>/verified/``, created only after the digest matched; when the
directory cannot be written, marks stay in this process.

Not caught: bits that flip on the medium under an unchanged inode after verification — the
trade-off of ``make`` and rsync's quick check. ``streamload verify`` always re-hashes.
"""

from __future__ import annotations

import os

import xxhash

MARKS_DIR = "verified"

# Keys verified by this process (or inherited from the parent it forked from).
_SEEN: set[str] = set()


def version_key(path: str, digest: str, st: os.stat_result | None = None) -> str:
    """The key naming this version of local file ``path`` expected to hash to ``digest``.

    Raises:
        OSError: ``path`` cannot be stat'ed.
    """
    st = os.stat(path) if st is None else st
    text = "\0".join(
        map(str, (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest))
    )
    return xxhash.xxh3_128_hexdigest(text.encode())


def is_verified(key: str, cache_dir: str | None) -> bool:
    """Whether ``key`` was verified by this process or, per its mark, on this machine."""
    if key in _SEEN:
        return True
    if cache_dir is not None and os.path.exists(os.path.join(cache_dir, MARKS_DIR, key)):
        _SEEN.add(key)
        return True
    return False


def mark_verified(key: str, cache_dir: str | None) -> None:
    """Remember ``key`` as verified (best effort on disk: an unwritable cache dir is not an error)."""
    _SEEN.add(key)
    if cache_dir is None:
        return
    marks = os.path.join(cache_dir, MARKS_DIR)
    try:
        os.makedirs(marks, exist_ok=True)
        fd = os.open(os.path.join(marks, key), os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    except OSError:
        pass  # read-only or full cache dir: verification then repeats per process
