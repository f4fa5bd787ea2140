"""Existing LMDB environments as datasets: ``StreamingDataset(url)`` with no conversion step.

When ``url`` holds no index.json but is an LMDB environment (a directory with ``data.mdb``, or
a ``data.mdb`` / ``*.lmdb`` / ``*.mdb`` file), ``detect`` describes it as a one-shard dataset of
format ``"lmdb-env"`` with the schema ``{"key": bytes, "value": bytes}``: one row per entry of
the main database, in key order. Everything above the shard reader (order, shuffling, workers,
the loader, ``transform=`` to decode values) then works unchanged. The index is made in memory
and never written; the entry count and file size are taken when the dataset is opened, and a
reader refuses the file if either has changed since (an environment written to while we read is
not a stable dataset). There is no checksum to verify.

Remote environments (any fsspec URL) go through the shard cache like shards (LMDB can only
memory-map local files): fetched once per node, keyed by the object's size and version tag.
"""

from __future__ import annotations

from typing import Any

from streamload.format.index import FORMAT_VERSIONS, DatasetIndex, ShardInfo
from streamload.shards.lmdb import ENV_FORMAT
from streamload.shards.lmdb.reader import ENV_SCHEMA
from streamload.store import filesystem as store

DATA_FILE = "data.mdb"
FILE_SUFFIXES = (".mdb", ".lmdb")


def find_data_file(fs: Any, root: str) -> tuple[str, str] | None:
    """Where the LMDB data file of ``root`` is, as ``(directory, file name)``, or None.

    ``root`` is a directory holding ``data.mdb``, or itself an ``.mdb``/``.lmdb`` file.
    """
    try:
        if fs.isfile(root):
            directory, _, name = root.rstrip("/").rpartition("/")
            if name.endswith(FILE_SUFFIXES):
                return directory or "/", name
            return None
        if fs.isfile(store.join(root, DATA_FILE)):
            return root, DATA_FILE
    except OSError:
        return None
    return None


def detect(
    fs: Any, root: str, url: str, cache: tuple[str, int] | None = None
) -> tuple[str, DatasetIndex] | None:
    """Describe the LMDB environment at ``root`` as a dataset, or None if it is not one.

    Args:
        cache: ``(cache_dir, cache_limit)`` for a remote environment: its data file is fetched
            into the shard cache once (here, to count its entries) and read from there; its
            cache key is a digest of the object's size and version tag (ETag, generation, ...),
            so a rewritten environment is fetched again. None: a temp copy.

    Returns:
        ``(dataset root, index)``: the directory holding the data file and a one-shard index of
        format ``"lmdb-env"``.

    Raises:
        FormatError: it looks like an environment but is not a readable LMDB file.
    """
    found = find_data_file(fs, root)
    if found is None:
        return None
    directory, name = found
    path = store.join(directory, name)
    local = store.local_path(fs, path)
    from streamload.shards.lmdb.file import LmdbFile

    version = ""
    if local is not None:
        file = LmdbFile(local, f"{url} ({name})")
        nbytes = file.size
        entries = file.entries()
    elif cache is not None:
        entries, nbytes, version = _through_cache(fs, path, url, name, cache)
    else:
        with fs.open(path, "rb") as f:
            file = LmdbFile(f, f"{url} ({name})")
        nbytes = file.size
        entries = file.entries()
    shard = ShardInfo(name, entries, nbytes, "size" if version else "xxh3_64", version)
    index = DatasetIndex(FORMAT_VERSIONS[0], ENV_FORMAT, ENV_SCHEMA, entries, (shard,))
    return directory, index


def _through_cache(
    fs: Any, path: str, url: str, name: str, cache: tuple[str, int]
) -> tuple[int, int, str]:
    """Fetch the remote data file into the shard cache; ``(entries, bytes, version digest)``."""
    import xxhash

    from streamload.cache.disk import DiskCache
    from streamload.cache.index_copy import version_tag
    from streamload.cache.layout import SIZE_ONLY, ShardKey
    from streamload.shards.lmdb.file import LmdbFile

    meta = store.info(fs, path)
    nbytes = int(meta["size"])
    tag = version_tag(meta) or f"size={nbytes}"
    version = xxhash.xxh3_64_hexdigest(tag.encode())
    key = ShardKey(url, name, nbytes, SIZE_ONLY, version)

    def fetch(f: Any) -> None:
        store.download(fs, path, f, expected_size=nbytes)

    # No checksum to verify against: the cache checks the size, LmdbFile the structure.
    with DiskCache(cache[0], cache[1]).pin(key, fetch) as pin:
        file = LmdbFile(pin.path, f"{url} ({name})")
        try:
            entries = file.entries()
        finally:
            file.close()
    return entries, nbytes, version
