"""The remote shards one process reads: pinned copies in the node's disk cache, read ahead.

`remote_shards` builds the process's `streamload.cache.readahead.RemoteShards` from plain values:
the dataset's identity (URL, filesystem, root, index), its resolved settings and a `ReadSource`:
what this process will read, epoch by epoch (the item ids of its pass, chunk by chunk, lazily:
`streamload.dataset.streaming.StreamingDataset.follow`), and a generation number that changes
when it starts another pass. Every worker and local rank of the node counts toward the cache's
working-set check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from streamload.cache.disk import DiskCache
from streamload.cache.readahead import RemoteShards, check_working_set
from streamload.dataset.settings import DatasetSettings
from streamload.dataset.topology import local_world_size
from streamload.format.index import DatasetIndex


@dataclass(frozen=True)
class ReadSource:
    """What one process will read: ``reads(epoch)`` -> its item ids of that epoch in order, as a
    lazy iterable of int64 chunks (real sample ids, numbered shard by shard in index order; a
    token stream hands over the first sample of the shard that starts each block or row);
    ``generation()`` changes when the process starts another pass."""

    reads: Callable[[int], Iterable[np.ndarray]]
    generation: Callable[[], int]


def remote_shards(
    url: str,
    fs: Any,
    root: str,
    index: DatasetIndex,
    settings: DatasetSettings,
    source: ReadSource,
) -> RemoteShards:
    """The `RemoteShards` of a remote dataset in this process.

    Args:
        url, fs, root, index: the dataset (fsspec filesystem and root inside it).
        settings: its resolved cache, verification and read-ahead settings.
        source: what this process reads (the read-ahead walks it).

    Raises:
        CacheError: the cache directory is unwritable or too small for the working set.
    """
    worker = torch.utils.data.get_worker_info()
    workers = worker.num_workers if worker is not None else 1
    return RemoteShards(
        url,
        fs,
        root,
        index,
        DiskCache(settings.cache_dir, settings.cache_limit, verify=settings.verify),
        source.reads,
        generation=source.generation,
        readahead_shards=settings.readahead_shards,
        readahead_bytes=settings.readahead_bytes,
        processes=workers * local_world_size(),
    )


def check_cache(index: DatasetIndex, settings: DatasetSettings, workers: int) -> None:
    """Refuse a cache too small for ``workers`` reading processes on every local rank.

    The loader calls this in the trainer before it starts its workers, so a ``cache_limit`` the
    workers could not live with is a `CacheError` there, not a failure inside each worker.

    Raises:
        CacheError: the cache directory is unwritable or too small for the working set.
    """
    check_working_set(
        DiskCache(settings.cache_dir, settings.cache_limit, verify=settings.verify),
        index,
        workers * local_world_size(),
        settings.readahead_shards,
        settings.readahead_bytes,
    )
