"""Existing LMDB environments as datasets: ``StreamingDataset(url)`` with no conversion step.

When ``url`` holds no index.json but is an LMDB environment (a directory with ``data.mdb``, or
a ``data.mdb`` / ``*.lmdb`` / ``*.mdb`` file), ``detect`` describes it as a one-shard dataset of
format ``"lmdb-env"`` with the schema ``{"key": bytes, "value": bytes}``: one row per entry of
the main database, in key order. Everything above the shard reader (order, shuffling, workers,
the loader, ``transform=`` to decode values) then works unchanged. The index is made in memory
and never written; the entry count and file size are taken when the dataset is opened, and a
reader refuses the file if either has changed since (an environment written to while we read is
not a stable dataset). There is no checksum to verify.

Remote environments (any fsspec URL) are copied to a local temp file when first read, since
LMDB can only memory-map local files; the shard cache will take this over.
"""

from __future__ import annotations

from typing import Any

from streamload import store
from streamload.index import FORMAT_VERSIONS, DatasetIndex, ShardInfo
from streamload.lmdb_reader import ENV_SCHEMA
from streamload.shard_reader import ENV_FORMAT

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


def detect(fs: Any, root: str, url: str) -> tuple[str, DatasetIndex] | None:
    """Describe the LMDB environment at ``root`` as a dataset, or None if it is not one.

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
    from streamload.lmdb_file import LmdbFile

    if local is not None:
        file = LmdbFile(local, f"{url} ({name})")
        nbytes = file.size
    else:
        with fs.open(path, "rb") as f:
            file = LmdbFile(f, f"{url} ({name})")
        nbytes = file.size
    entries = file.entries()
    shard = ShardInfo(name, entries, nbytes, "xxh3_64", "")
    index = DatasetIndex(FORMAT_VERSIONS[-1], ENV_FORMAT, ENV_SCHEMA, entries, (shard,))
    return directory, index
