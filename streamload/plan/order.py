"""The global order of one epoch: a permutation of the sample ids that no topology changes.

`global_order` is a pure function of (shard sizes, `ShuffleSettings`, epoch): it never depends on
world size, rank, batch size or workers, so every topology walks the same sequence. Modes:
``full`` (a uniform permutation) and ``block`` (shuffle the shard order, then shuffle the samples
inside each window of ``block`` consecutive shards of that order, so a reader touches only one
window of shards at a time: bounded read-ahead and cache, weaker mixing). Without shuffle the
order is the ids in index order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streamload.errors import ConfigError

SHUFFLE_MODES = ("full", "block")


@dataclass(frozen=True)
class ShuffleSettings:
    """How a dataset orders its samples each epoch (part of the resume fingerprint)."""

    shuffle: bool = False
    seed: int = 0
    mode: str = "full"
    block: int = 1

    def validated(self) -> ShuffleSettings:
        """Self, after checking each field.

        Raises:
            ConfigError: a seed < 0, an unknown mode or a block < 1 (the setting named).
        """
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ConfigError(f"StreamingDataset seed: must be an int >= 0, got {self.seed!r}")
        if self.mode not in SHUFFLE_MODES:
            raise ConfigError(
                f"StreamingDataset shuffle_mode: must be one of {SHUFFLE_MODES}, got {self.mode!r}"
            )
        if not isinstance(self.block, int) or isinstance(self.block, bool) or self.block < 1:
            raise ConfigError(
                f"StreamingDataset shuffle_block: must be an int >= 1 (shards per window),"
                f" got {self.block!r}"
            )
        return self


def global_order(
    shard_sizes: Sequence[int] | np.ndarray, settings: ShuffleSettings, epoch: int
) -> np.ndarray:
    """The sample ids of one epoch, in order, for every rank and worker count.

    Args:
        shard_sizes: samples per shard, in index order (ids are numbered shard by shard).
        settings: shuffle settings.
        epoch: epoch number (>= 0).

    Returns:
        int64 array, a permutation of ``[0, sum(shard_sizes))``: ``arange`` without shuffle; a
        PCG64 permutation seeded with (seed, epoch) in ``full`` mode; in ``block`` mode the
        shards in a seeded order, shuffled within windows of ``settings.block`` shards.
    """
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    total = int(sizes.sum())
    if not settings.shuffle:
        return np.arange(total, dtype=np.int64)
    if settings.mode == "full":
        rng = np.random.Generator(np.random.PCG64([settings.seed, epoch]))
        return rng.permutation(total).astype(np.int64, copy=False)
    # A separate stream (third seed word) so block mode never shares draws with full mode.
    rng = np.random.Generator(np.random.PCG64([settings.seed, epoch, 1]))
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])) if len(sizes) else sizes
    shard_order = rng.permutation(len(sizes))
    out = np.empty(total, dtype=np.int64)
    filled = 0
    for first in range(0, len(shard_order), settings.block):
        window = shard_order[first : first + settings.block]
        ids = np.concatenate([np.arange(starts[k], starts[k] + sizes[k]) for k in window])
        rng.shuffle(ids)
        out[filled : filled + len(ids)] = ids
        filled += len(ids)
    return out
