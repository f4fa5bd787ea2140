"""StreamingDataset: a sharded dataset as a torch IterableDataset with random access.

The dataset is its validated index.json plus shard readers opened lazily, per process: a reader
(an mmap and a file handle) is never carried across ``fork``; when ``os.getpid()`` changes, the
readers are dropped and re-opened in the child. At most ``MAX_OPEN_SHARDS`` readers stay open.

Checksums: with ``verify`` on (config ``verify_local``, default True) a shard's checksum is
checked once per process, on its first open, before it is mapped (a forked child trusts what
its parent verified for the same file, size and mtime): this catches silent bit flips, which
Arrow cannot see. Independently of ``verify``, the shard reader fully validates each record
batch on first touch, so a malformed shard raises FormatError rather than crashing the process.

Order: ``sample_order(epoch)`` is a pure function of (num_samples, shuffle, seed, epoch) —
``epoch_order`` below. Iterating inside a DataLoader worker yields ``order[worker_id::num_workers]``,
which is exactly the num_workers=0 order when the DataLoader takes one sample per worker turn
(``batch_size=1``); with larger batches each sample is still yielded exactly once.

Ids in ``get_batch`` are grouped by shard (searchsorted on cumulative counts), each shard does one
columnar ``take``, and the parts are scattered back into the order of ``ids``; conventions per
column kind are those of ``ArrowShardReader.take`` (arrow_reader.py).
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch.utils.data
from fsspec.implementations.local import LocalFileSystem

from streamload import store
from streamload.arrow_reader import ArrowShardReader
from streamload.checksum import file_digest
from streamload.errors import ConfigError, FormatError
from streamload.index import INDEX_NAME, DatasetIndex, ShardInfo, read_index
from streamload.readahead import OPEN_SHARDS, RemoteShards, reads_in_place, remote_shards
from streamload.schema import Column, Schema

MAX_OPEN_SHARDS = 64
_ITER_CHUNK = 256
# Files verified in this process (or the parent it forked from): (fs class, path, size, mtime, digest).
_VERIFIED: set[tuple[str, str, int, str, str]] = set()


def epoch_order(num_samples: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The global sample ids of one epoch, in order.

    Args:
        num_samples: dataset size.
        shuffle: False gives ``arange(num_samples)``.
        seed: shuffle seed (>= 0).
        epoch: epoch number (>= 0).

    Returns:
        int64 array: ``arange`` or a permutation drawn by numpy's PCG64 seeded with (seed, epoch).
    """
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([seed, epoch]))
    return rng.permutation(num_samples).astype(np.int64, copy=False)


class ShardCheck(NamedTuple):
    """Result of verifying one shard: ``actual`` is None when the file is missing."""

    shard: str
    ok: bool
    expected: str
    actual: str | None


class StreamingDataset(torch.utils.data.IterableDataset):
    """A sharded dataset: iterate it (torch IterableDataset) or index it (``ds[i]``, ``get_batch``)."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        shuffle: bool = False,
        seed: int = 0,
        columns: list[str] | tuple[str, ...] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        verify: bool | None = None,
    ) -> None:
        """Open a dataset (reads and validates index.json; shards open on first use).

        Args:
            url: dataset root: local path, ``file://`` or ``memory://`` URL.
            cache_dir: shard cache directory for remote datasets (None: config ``cache_dir``);
                local and ``memory://`` data is read in place, never copied.
            cache_limit: byte limit of that cache (None: config ``cache_limit``).
            shuffle: iterate in a seeded permutation instead of index order.
            seed: shuffle seed (int >= 0).
            columns: columns to return (None: all); results keep schema order.
            transform: applied to each sample by ``ds[i]`` and iteration (not by ``get_batch``).
            storage_options: passed to fsspec.
            verify: check shard checksums on first open; None takes config ``verify_local``.

        Raises:
            FormatError: index.json missing (incomplete dataset) or invalid; unknown column.
            ConfigError: bad seed.
            CacheError: remote dataset: cache_dir unwritable or cache_limit below the working set.
        """
        super().__init__()
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"StreamingDataset seed: must be an int >= 0, got {seed!r}")
        if verify is None:
            from streamload import config

            verify = bool(config.load().verify_local)
        self._url = os.fspath(url)
        self._fs, self._root = store.resolve(url, storage_options)
        self._index = read_index(
            self._fs, store.join(self._root, INDEX_NAME), f"{self._url}/{INDEX_NAME}"
        )
        if self._index.format != "arrow":
            raise FormatError(
                f"{self._url}: format {self._index.format!r} shards are not readable yet"
            )
        self._selected = self._index.schema.select(columns)
        self.cache_dir = cache_dir
        self.cache_limit = cache_limit
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.transform = transform
        self.verify = verify
        self._epoch = 0
        self._pid = os.getpid()
        self._readers: OrderedDict[int, ArrowShardReader] = OrderedDict()
        self._remote: tuple[int, RemoteShards] | None = None  # (pid, shards) if not in place
        self._remote_shards()  # a remote dataset checks its cache settings now

    # -- metadata ---------------------------------------------------------------------------

    @property
    def index(self) -> DatasetIndex:
        """The validated index.json."""
        return self._index

    @property
    def schema(self) -> Schema:
        """The schema of the returned columns (the projection of the dataset schema)."""
        return self._selected

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self._index.shards)

    @property
    def url(self) -> str:
        """The dataset URL as given."""
        return self._url

    def __len__(self) -> int:
        return self._index.num_samples

    def __repr__(self) -> str:
        return (
            f"StreamingDataset({self._url!r}, samples={len(self)}, shards={self.num_shards},"
            f" columns={list(self._selected.names)}, shuffle={self.shuffle}, seed={self.seed})"
        )

    # -- order --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch whose order iteration uses."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the shuffle permutation).

        Raises:
            ConfigError: not an int >= 0.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(
                f"StreamingDataset.set_epoch: epoch must be an int >= 0, got {epoch!r}"
            )
        self._epoch = epoch

    def sample_order(self, epoch: int | None = None) -> np.ndarray:
        """Global sample ids of ``epoch`` (default: the current one), see ``epoch_order``."""
        return epoch_order(
            len(self),
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self._epoch if epoch is None else epoch,
        )

    # -- access -------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> Any:
        """Sample ``i`` (negative counts from the end), transformed if a transform is set.

        Raises:
            IndexError: out of range.
            FormatError: the shard is missing, corrupt or fails its checksum.
        """
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index out of range for dataset of {n} samples")
        offsets = self._index.sample_offsets
        k = int(np.searchsorted(offsets, i, "right")) - 1
        sample = self._reader(k).get(i - int(offsets[k]))
        return self.transform(sample) if self.transform is not None else sample

    def get_batch(self, ids: np.ndarray) -> dict[str, Any]:
        """Columnar rows ``ids`` (any order, duplicates allowed), no transform.

        Returns:
            ``{column: values}`` in schema order; conventions per kind as in ``ArrowShardReader.take``.

        Raises:
            IndexError: an id is outside ``[0, len(self))``.
            FormatError: a shard is missing, corrupt or fails its checksum.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        if n and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"sample ids out of range [0, {len(self)})")
        if n == 0:
            return {col.name: _empty_column(col) for col in self._selected.columns}
        offsets = self._index.sample_offsets
        shard_of = np.searchsorted(offsets, ids, "right") - 1
        first = int(shard_of[0])
        if (shard_of == first).all():
            return self._reader(first).take(ids - offsets[first])
        order = np.argsort(shard_of, kind="stable")
        parts = np.split(order, np.flatnonzero(np.diff(shard_of[order])) + 1)
        taken = [
            (p, self._reader(int(shard_of[p[0]])).take(ids[p] - offsets[shard_of[p[0]]]))
            for p in parts
        ]
        out: dict[str, Any] = {}
        for col in self._selected.columns:
            first_part = taken[0][1][col.name]
            if isinstance(first_part, np.ndarray):
                merged = np.empty((n, *first_part.shape[1:]), first_part.dtype)
                for positions, columns in taken:
                    merged[positions] = columns[col.name]
                out[col.name] = merged
            else:
                objects = np.empty(n, dtype=object)
                for positions, columns in taken:
                    holder = np.empty(len(positions), dtype=object)
                    holder[:] = columns[col.name]
                    objects[positions] = holder
                out[col.name] = objects.tolist()
        return out

    def __iter__(self) -> Iterator[Any]:
        """Samples in ``sample_order()``; inside a DataLoader worker, this worker's share.

        Samples are read with ``get_batch`` in chunks of a few hundred ids; a sample's fixed-shape
        arrays are rows of that chunk's array (writable, disjoint from every other sample's).
        """
        order = self.sample_order()
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        columns = self._selected.columns
        for start in range(0, len(order), _ITER_CHUNK):
            batch = self.get_batch(order[start : start + _ITER_CHUNK])
            rows = [_rows(col, batch[col.name]) for col in columns]
            for values in zip(*rows, strict=True):
                sample = dict(zip(self._selected.names, values, strict=True))
                yield self.transform(sample) if self.transform is not None else sample

    # -- shards -------------------------------------------------------------------------------

    def _reader(self, k: int) -> ArrowShardReader:
        if os.getpid() != self._pid:  # forked: the parent's mmaps and handles are not ours
            self._readers = OrderedDict()
            self._pid = os.getpid()
        reader = self._readers.get(k)
        if reader is not None:
            self._readers.move_to_end(k)
            return reader
        reader = self._open_shard(self._index.shards[k])
        self._readers[k] = reader
        remote = self._remote_shards()
        if len(self._readers) > (MAX_OPEN_SHARDS if remote is None else OPEN_SHARDS):
            dropped, _ = self._readers.popitem(last=False)
            if remote is not None:  # the reader is gone: its cached copy may be evicted
                remote.release(self._index.shards[dropped])
        return reader

    def _open_shard(self, info: ShardInfo) -> ArrowShardReader:
        fs, path = self._fs, store.join(self._root, info.name)
        remote = self._remote_shards()
        if remote is not None:  # a pinned, verified copy in the shared disk cache, mapped in place
            fs, path = LocalFileSystem(), remote.open(info, self._epoch)
        try:
            stat = fs.info(path)
        except FileNotFoundError:
            raise FormatError(f"shard {info.name} of {self._url} is missing") from None
        if stat.get("size") != info.bytes:
            raise FormatError(
                f"shard {info.name} of {self._url}: size is {stat.get('size')} bytes, index.json says"
                f" {info.bytes} (truncated or replaced)"
            )
        if self.verify and remote is None:  # the cache verifies its copies itself
            _verify_once(fs, path, info, stat, self._url)
        local = store.local_path(fs, path)
        source = local if local is not None else fs.open(path, "rb")
        return ArrowShardReader(
            source,
            self._index.schema,
            info.name,
            info.bytes,
            num_samples=info.num_samples,
            columns=self._selected.names,
        )

    def _remote_shards(self) -> RemoteShards | None:
        """This process's pinned cached copies of remote shards; None if read in place."""
        if reads_in_place(self._fs):
            return None
        if self._remote is None or self._remote[0] != os.getpid():
            self._remote = (os.getpid(), remote_shards(self, self._fs, self._root))
        return self._remote[1]

    def __getstate__(self) -> dict[str, Any]:
        # Readers hold mmaps and file handles: a pickled copy (spawned worker) re-opens its own.
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        state["_remote"] = None  # pins and a read-ahead thread belong to this process
        return state


def _verify_once(fs: Any, path: str, info: ShardInfo, stat: dict[str, Any], url: str) -> None:
    mtime = str(stat.get("mtime", stat.get("created", "")))
    key = (type(fs).__name__, path, info.bytes, mtime, info.checksum)
    if key in _VERIFIED:
        return
    actual = file_digest(fs, path, info.checksum_algorithm)
    if actual != info.checksum:
        raise FormatError(
            f"shard {info.name} of {url}: {info.checksum_algorithm} checksum mismatch: index.json says"
            f" {info.checksum}, the file hashes to {actual} (corrupted or replaced)"
        )
    _VERIFIED.add(key)


def _empty_column(col: Column) -> Any:
    if col.kind in ("str", "bytes") or col.uses_var_layout:
        return []
    return np.empty((0, *col.row_shape), dtype=col.numpy_dtype)


def _rows(col: Column, values: Any) -> list[Any]:
    """A get_batch column as per-sample values, matching what ``ds[i]`` returns."""
    if col.kind in ("int", "float", "bool"):
        return values.tolist()
    # Fixed arrays: rows of the chunk's own freshly copied array (writable, never the mapping);
    # shape [] gives numpy scalars; str/bytes/variable arrays are already per-row objects.
    return list(values)


def verify_dataset(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    on_shard: Callable[[ShardCheck], None] | None = None,
) -> list[ShardCheck]:
    """Hash every shard and compare with index.json (for ``streamload verify``).

    Args:
        url: dataset root.
        storage_options: passed to fsspec.
        on_shard: called with each result as it is known (progress display).

    Returns:
        One ShardCheck per shard, in index order.

    Raises:
        FormatError: index.json missing or invalid.
    """
    fs, root = store.resolve(url, storage_options)
    index = read_index(fs, store.join(root, INDEX_NAME), f"{os.fspath(url)}/{INDEX_NAME}")
    results = []
    for info in index.shards:
        try:
            actual: str | None = file_digest(
                fs, store.join(root, info.name), info.checksum_algorithm
            )
        except FileNotFoundError:
            actual = None
        check = ShardCheck(info.name, actual == info.checksum, info.checksum, actual)
        if on_shard is not None:
            on_shard(check)
        results.append(check)
    return results


def describe(
    url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Summary of a dataset for ``streamload info`` (reads only index.json).

    Returns:
        ``{"url", "format", "format_version", "num_samples", "num_shards", "bytes", "schema"}``
        with the schema in its JSON form.
    """
    fs, root = store.resolve(url, storage_options)
    index = read_index(fs, store.join(root, INDEX_NAME), f"{os.fspath(url)}/{INDEX_NAME}")
    return {
        "url": os.fspath(url),
        "format": index.format,
        "format_version": index.format_version,
        "num_samples": index.num_samples,
        "num_shards": len(index.shards),
        "bytes": index.total_bytes,
        "schema": index.schema.to_json(),
    }
