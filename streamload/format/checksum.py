"""Shard checksums: xxh3_64 (what ShardWriter writes) and sha256 (also allowed in index.json).

Files are hashed in fixed-size chunks, never read whole into RAM. Digests are lowercase hex.
Arrow has no checksums of its own (a flipped bit reads back as silently wrong data), so the
checksum in index.json is the only defence against bit rot and bad copies.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

import xxhash

CHUNK_BYTES = 4 * 2**20
ALGORITHMS = ("xxh3_64", "sha256")
DIGEST_HEX_LEN = {"xxh3_64": 16, "sha256": 64}


class Hasher(Protocol):
    """What hashlib and xxhash objects share."""

    def update(self, data: Any, /) -> None: ...

    def hexdigest(self) -> str: ...


def new_hasher(algorithm: str) -> Hasher:
    """A fresh incremental hasher for ``algorithm`` (one of ALGORITHMS)."""
    if algorithm == "xxh3_64":
        return xxhash.xxh3_64()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unknown checksum algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


def xxh3_64_bytes(data: bytes | bytearray | memoryview) -> str:
    """The xxh3_64 hex digest of ``data``."""
    return xxhash.xxh3_64_hexdigest(data)


def file_digest(fs: Any, path: str, algorithm: str = "xxh3_64") -> str:
    """Hash one file of filesystem ``fs`` in CHUNK_BYTES chunks.

    Args:
        fs: an fsspec filesystem.
        path: the file's path in ``fs``.
        algorithm: one of ALGORITHMS.

    Returns:
        The hex digest.

    Raises:
        OSError: the file cannot be read (FileNotFoundError if it is missing).
    """
    hasher = new_hasher(algorithm)
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with fs.open(path, "rb") as f:
        readinto = getattr(f, "readinto", None)
        while True:
            if readinto is not None:
                n = readinto(view)
                if not n:
                    break
                hasher.update(view[:n])
            else:
                chunk = f.read(CHUNK_BYTES)
                if not chunk:
                    break
                hasher.update(chunk)
    return hasher.hexdigest()


def xxh3_64_file(fs: Any, path: str) -> str:
    """The xxh3_64 hex digest of one file, streamed in chunks (see ``file_digest``)."""
    return file_digest(fs, path, "xxh3_64")
