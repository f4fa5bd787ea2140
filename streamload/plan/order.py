"""One epoch's global order, evaluated lazily: position -> item id, never an array of the epoch.

Items are numbered shard by shard (shard ``k`` holds ids ``[offsets[k], offsets[k + 1])``);
what an item is (a sample, a token block) is the caller's business: the order takes *items per
shard* and gives ids. `EpochOrder(sizes, settings, epoch)` is a permutation of ``[0, sum(sizes))``
that depends only on (shard sizes, shuffle settings, epoch), never on world size, rank, batch
size or workers, so every topology walks the same sequence. ``order.at(positions)`` evaluates
any positions; ``order[a:b]`` the ids of a position range (what `streamload.plan.partition.EpochPlan` slices).

Modes (``ShuffleSettings``):

- no shuffle: position ``p`` is id ``p`` (arithmetic, nothing stored);
- ``full``: a seeded bijection of ``[0, N)`` (`streamload.plan.permutation.Permutation`, keyed by seed and epoch);
- ``block``: the shards in a seeded order (a permutation of the shard indices, the one array
  this keeps: O(shards)); consecutive windows of ``block`` shards of that order; inside each
  window its items in a seeded bijection of the window (keyed by seed, epoch and window). A
  reader is inside one window at a time, so at most ``block`` shards are started and not yet
  finished at any position: read-ahead and cache need one window of shards.

Memory: O(shards) for block mode's shard order, plus a cache of at most ``CACHED_CHUNKS``
evaluated chunks of ``CHUNK`` positions (readers ask for nearby positions again and again: a
batch, the next batch, the read-ahead a few batches further); no mode stores anything per item of
the epoch. A query that spans more than a few chunks is evaluated directly, uncached.

The order for a given seed is not numpy's: before issue 12 the epoch order was a
``numpy.random.Generator.permutation``; it is now this keyed permutation, so a seed gives another
(equally uniform-looking) order than it did. Resume states of the older order are refused by the
fingerprint's ``order`` version (see `streamload.plan.state.fingerprint`).

An `EpochOrder` is also a read-only sequence: ``order[i]``, ``order[a:b]``, ``order[positions]``,
``len(order)``, iteration (chunk by chunk); ``np.asarray(order)`` and ``order.tolist()``
materialise it. `global_order` materialises a whole epoch (O(items): for tests and small datasets); everything
in the library evaluates `EpochOrder` lazily.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.errors import ConfigError
from streamload.plan.permutation import Permutation, derive_key, key_array, permute

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


CHUNK = 1 << 14  # positions evaluated together and cached (128 KiB of ids)
CACHED_CHUNKS = 4
ORDER_VERSION = 2  # 1: numpy Generator permutations (before issue 12); 2: keyed bijections

# Purpose tags of the keys (so no two uses of one seed share a permutation).
_FULL, _SHARD_ORDER, _WINDOW = 0, 1, 2


class EpochOrder:
    """The global order of one epoch (see the module docstring).

    Args:
        sizes: items per shard, in index order.
        settings: shuffle settings (validated by the caller).
        epoch: epoch number (>= 0).
    """

    dtype = np.dtype(np.int64)  # of the ids, as an array of them would have

    def __init__(
        self, sizes: Sequence[int] | np.ndarray, settings: ShuffleSettings, epoch: int
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        self.settings = settings
        self.epoch = int(epoch)
        #: ``offsets[k]`` is the first id of shard k; ``offsets[-1]`` the item count.
        self.offsets = np.zeros(len(self.sizes) + 1, dtype=np.int64)
        np.cumsum(self.sizes, out=self.offsets[1:])
        self.n = int(self.offsets[-1])
        self._lock = threading.Lock()
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._last_chunk: tuple[int, np.ndarray] | None = None  # the chunk asked for last
        self._full: Permutation | None = None
        self._mode = "plain" if not settings.shuffle else settings.mode
        if self._mode == "full":
            self._full = Permutation(self.n, derive_key(settings.seed, epoch, _FULL))
        elif self._mode == "block":
            count = len(self.sizes)
            shards = Permutation(count, derive_key(settings.seed, epoch, _SHARD_ORDER))
            #: Shard indices in the order this epoch reads them.
            self.shard_order = shards(np.arange(count, dtype=np.int64))
            # Item offsets of the shards laid out in shard_order, and where each window starts.
            self._laid = np.zeros(count + 1, dtype=np.int64)
            np.cumsum(self.sizes[self.shard_order], out=self._laid[1:])
            self._window_starts = self._laid[:: settings.block].copy()
            if self._window_starts[-1] != self.n or len(self._window_starts) == 1:
                self._window_starts = np.append(self._window_starts, self.n)
            self._window_key = derive_key(settings.seed, epoch, _WINDOW)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: Any) -> Any:
        """``order[i]`` an int id (negative counts from the end), ``order[a:b]`` or
        ``order[positions]`` an int64 array, as numpy indexing of the whole order would give.

        Raises:
            IndexError: a position outside the epoch.
        """
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            if step != 1:
                return self.at(np.arange(start, stop, step, dtype=np.int64))
            return self.ids(start, stop)
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.n if index < 0 else 0)
            return int(self.at(np.array([i], np.int64))[0])
        return self.at(index)

    def __iter__(self) -> Iterator[int]:
        """Every id in order, evaluated a chunk at a time."""
        for start in range(0, self.n, CHUNK):
            yield from self.ids(start, start + CHUNK).tolist()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """The whole epoch as an array (O(items): for tests and small datasets)."""
        ids = self.ids(0, self.n)
        return ids if dtype is None else ids.astype(dtype)

    def tolist(self) -> list[int]:
        """The whole epoch as a list (O(items): for tests and small datasets)."""
        return self.ids(0, self.n).tolist()

    def ids(self, start: int, stop: int) -> np.ndarray:
        """The ids at positions ``[start, stop)`` (clipped to the epoch), int64."""
        start, stop = max(int(start), 0), min(int(stop), self.n)
        if stop <= start:
            return np.empty(0, np.int64)
        if self._mode == "plain":
            return np.arange(start, stop, dtype=np.int64)
        c = start // CHUNK
        if (stop - 1) // CHUNK == c:  # one cached chunk: a slice of it
            return self._chunk(c)[start - c * CHUNK : stop - c * CHUNK].copy()
        return self.at(np.arange(start, stop, dtype=np.int64))

    def at(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """The ids at ``positions`` (each in ``[0, len)``), int64, same shape.

        Raises:
            IndexError: a position outside the epoch.
        """
        pos = np.asarray(positions, dtype=np.int64)
        flat = pos.reshape(-1)
        if flat.size == 0:
            return flat.copy().reshape(pos.shape)
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi >= self.n:
            raise IndexError(f"EpochOrder: positions must be in [0, {self.n}), got {lo}..{hi}")
        if self._mode == "plain":
            return flat.copy().reshape(pos.shape)
        first, last = lo // CHUNK, hi // CHUNK
        if last - first >= CACHED_CHUNKS:  # a wide query: evaluate it as is
            return self._evaluate(flat).reshape(pos.shape)
        if first == last:
            return self._chunk(first)[flat - first * CHUNK].reshape(pos.shape)
        out = np.empty(len(flat), np.int64)
        which = flat // CHUNK
        for c in range(first, last + 1):
            mask = which == c
            out[mask] = self._chunk(c)[flat[mask] - c * CHUNK]
        return out.reshape(pos.shape)

    def _chunk(self, c: int) -> np.ndarray:
        last = self._last_chunk  # one read of a tuple: no lock needed
        if last is not None and last[0] == c:
            return last[1]
        with self._lock:
            ids = self._chunks.get(c)
            if ids is not None:
                self._chunks.move_to_end(c)
                self._last_chunk = (c, ids)
                return ids
        start = c * CHUNK
        ids = self._evaluate(np.arange(start, min(start + CHUNK, self.n), dtype=np.int64))
        with self._lock:
            self._chunks[c] = ids
            while len(self._chunks) > CACHED_CHUNKS:
                self._chunks.popitem(last=False)
            self._last_chunk = (c, ids)
        return ids

    def _evaluate(self, pos: np.ndarray) -> np.ndarray:
        if self._full is not None:
            return self._full(pos)
        window = np.searchsorted(self._window_starts, pos, "right") - 1
        start = self._window_starts[window]
        size = self._window_starts[window + 1] - start
        keys = key_array(self._window_key, window)  # one permutation per window, one call
        laid = start + permute(pos - start, size, keys)
        slot = np.searchsorted(self._laid, laid, "right") - 1
        shard = self.shard_order[slot]
        return self.offsets[shard] + (laid - self._laid[slot])

    def window_shards(self, position: int) -> np.ndarray:
        """Block mode: the shards of the window that holds ``position`` (for read-ahead)."""
        if self._mode != "block":
            raise ValueError("window_shards: only block mode has windows")
        w = int(np.searchsorted(self._window_starts, position, "right")) - 1
        block = self.settings.block
        return self.shard_order[w * block : (w + 1) * block]

    def __repr__(self) -> str:
        return (
            f"EpochOrder(items={self.n}, shards={len(self.sizes)}, mode={self._mode},"
            f" epoch={self.epoch})"
        )


def global_order(
    shard_sizes: Sequence[int] | np.ndarray, settings: ShuffleSettings, epoch: int
) -> np.ndarray:
    """One whole epoch's order as an int64 array (``EpochOrder(...)[:]``): O(items) memory, for
    tests and small datasets only."""
    return EpochOrder(shard_sizes, settings, epoch)[:]
