"""The remote shards one process reads: pinned copies in the node's disk cache, read ahead.

`remote_shards` builds the process's `streamload.cache.readahead.RemoteShards` from plain values:
the dataset's identity (URL, filesystem, root, index), its resolved settings and ``order_of``
(epoch -> the sample ids this process reads, in order). Inside a loader worker the process reads
``order[id::num_workers]``, as the dataset's iteration does, and every worker and local rank of
the node counts toward the cache's working-set check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch.utils.data

from streamload.cache.disk import DiskCache
from streamload.cache.readahead import RemoteShards, shard_sequence
from streamload.dataset.settings import DatasetSettings
from streamload.dataset.topology import local_world_size
from streamload.format.index import DatasetIndex


def remote_shards(
    url: str,
    fs: Any,
    root: str,
    index: DatasetIndex,
    settings: DatasetSettings,
    order_of: Callable[[int], np.ndarray],
) -> RemoteShards:
    """The `RemoteShards` of a remote dataset in this process.

    Args:
        url, fs, root, index: the dataset (fsspec filesystem and root inside it).
        settings: its resolved cache, verification and read-ahead settings.
        order_of: epoch -> the global sample order of that epoch (this process's share is
            taken here).

    Raises:
        CacheError: the cache directory is unwritable or too small for the working set.
    """
    worker = torch.utils.data.get_worker_info()
    wid, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
    offsets = index.sample_offsets

    def plan(epoch: int) -> np.ndarray:
        return shard_sequence(order_of(epoch)[wid::workers], offsets)

    return RemoteShards(
        url,
        fs,
        root,
        index,
        DiskCache(settings.cache_dir, settings.cache_limit, verify=settings.verify),
        plan,
        readahead_shards=settings.readahead_shards,
        readahead_bytes=settings.readahead_bytes,
        processes=workers * local_world_size(),
    )
