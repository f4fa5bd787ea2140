"""The storage seam: a dataset URL becomes an fsspec filesystem plus a root path inside it.

Local paths, ``file://`` and ``memory://`` URLs work today; other fsspec protocols (s3, gs,
http) resolve the same way and later go through the shard cache. Everything above this module
talks to storage only through ``(fs, path)`` pairs made here, so a new backend changes one file.
Local files are reported by ``local_path`` so readers can memory-map them in place instead of
copying them.
"""

from __future__ import annotations

import os
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from streamload.errors import StoreError


def resolve(
    url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[Any, str]:
    """Resolve a dataset URL to its filesystem and root path.

    Args:
        url: a local path, ``file://...``, ``memory://...`` or any fsspec URL.
        storage_options: keyword arguments passed to the fsspec filesystem.

    Returns:
        ``(fs, root)``: an ``fsspec.AbstractFileSystem`` and the dataset root inside it, without
        a trailing slash. Local roots are absolute.

    Raises:
        StoreError: the URL's protocol is unknown or its filesystem cannot be created.
    """
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise StoreError(f"dataset URL must be a non-empty string or path, got {url!r}")
    if "://" not in text:
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        fs, root = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except (ImportError, ValueError) as exc:
        raise StoreError(f"cannot open dataset URL {text!r}: {exc}") from exc
    if isinstance(fs, LocalFileSystem):
        root = os.path.abspath(root)
    return fs, root.rstrip("/") or "/"


def join(root: str, name: str) -> str:
    """The path of ``name`` (a validated plain file name) inside the dataset root ``root``."""
    return root.rstrip("/") + "/" + name


def local_path(fs: Any, path: str) -> str | None:
    """``path`` as a local file path when ``fs`` is the local filesystem (so it can be mmapped), else None."""
    if isinstance(fs, LocalFileSystem):
        return path
    return None
