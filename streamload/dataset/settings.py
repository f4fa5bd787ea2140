"""What a dataset needs from the configuration, resolved once when it is opened.

`DatasetSettings` is frozen and travels with the dataset into worker processes (pickled with it
under spawn or forkserver), so a worker reads the cache, verifies and retries exactly as the
trainer resolved it, whatever the worker's own environment says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamload.store.retry import RetryPolicy


@dataclass(frozen=True)
class DatasetSettings:
    """The resolved settings of one dataset.

    Attributes:
        cache_dir: the node's shard cache (remote shards, index.json copies, verification marks).
        cache_limit: byte limit of that cache.
        verify: check each shard's checksum on first open.
        readahead_shards, readahead_bytes: remote shards (and bytes) each reading process
            downloads ahead of use.
        retry: the retry policy of every remote request.
    """

    cache_dir: str
    cache_limit: int
    verify: bool
    readahead_shards: int
    readahead_bytes: int
    retry: RetryPolicy

    @classmethod
    def from_config(cls, cfg: Any) -> DatasetSettings:
        """From a resolved `streamload.config.Config`."""
        return cls(
            cache_dir=cfg.cache_dir,
            cache_limit=cfg.cache_limit,
            verify=bool(cfg.verify_local),
            readahead_shards=cfg.readahead_shards,
            readahead_bytes=cfg.readahead_bytes,
            retry=RetryPolicy.from_config(cfg),
        )
