"""Subsets of a dataset as *virtual shards*: items per shard in, real item ids out, lazily.

``StreamingDataset(url, subset=...)`` reads a fixed part of a dataset; the part is described by
virtual shards, each a part of one real shard, so the plan (which only sees items per shard)
keeps its shard locality and never sees the real ids. `Subset.to_real(ids)` maps virtual ids
(numbered virtual shard by virtual shard) to real ones, vectorised.

Specs (`make_subset`):

- an int ``N`` (``0 < N <= n``) or a fraction ``f`` (``0 < f <= 1``: ``N = round(f n)``): a
  seeded subset of ``N`` items. ``N`` is apportioned over the shards in proportion to their
  sizes (largest remainder); shard ``k`` contributes the first ``c_k`` positions of a seeded
  permutation of its items (`permutation.permute`, keyed by the seed and ``k``): the same
  subset for a seed in every process, every epoch, whatever the shuffle;
- a list of ``(start, stop)`` id ranges: exactly those ids, in id order (overlaps refused),
  cut at shard boundaries.

Memory O(shards + ranges); nothing per item.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.errors import ConfigError
from streamload.plan.permutation import derive_key, key_array, permute

_SUBSET_TAG = 3


@dataclass(frozen=True)
class Subset:
    """Virtual shards over a dataset's real shards (see the module docstring)."""

    sizes: np.ndarray  # items per virtual shard
    shard: np.ndarray  # the real shard each virtual shard lies in
    first: np.ndarray  # ranges: the real id of each virtual shard's first item; seeded: -1
    seed_key: int  # seeded subsets: the key of the per-shard permutations
    real_sizes: np.ndarray  # items per real shard
    spec: Any  # what the user gave, JSON-able (part of the resume fingerprint)

    def __post_init__(self) -> None:
        object.__setattr__(self, "offsets", _offsets(self.sizes))
        object.__setattr__(self, "_real_offsets", _offsets(self.real_sizes))

    #: First virtual id of each virtual shard, and the count at the end.
    offsets: np.ndarray = dataclasses.field(init=False, repr=False)
    _real_offsets: np.ndarray = dataclasses.field(init=False, repr=False)

    def __len__(self) -> int:
        return int(self.sizes.sum())

    def to_real(self, ids: np.ndarray) -> np.ndarray:
        """Real item ids of virtual ``ids`` (each in ``[0, len)``).

        Raises:
            IndexError: an id outside the subset.
        """
        ids = np.asarray(ids, dtype=np.int64)
        offsets = self.offsets
        if ids.size and (ids.min() < 0 or ids.max() >= offsets[-1]):
            raise IndexError(f"subset ids out of range [0, {int(offsets[-1])})")
        v = np.searchsorted(offsets, ids, "right") - 1
        local = ids - offsets[v]
        if self.seed_key < 0:  # id ranges
            return self.first[v] + local
        shard = self.shard[v]
        keys = key_array(self.seed_key, shard)
        return self._real_offsets[shard] + permute(local, self.real_sizes[shard], keys)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    out = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=out[1:])
    return out


def make_subset(
    shard_sizes: Sequence[int] | np.ndarray, spec: Any, seed: int, what: str = "subset"
) -> Subset:
    """The `Subset` of a dataset with these items per shard (see the module docstring).

    Raises:
        ConfigError: a count outside ``(0, n]``, a fraction outside ``(0, 1]``, malformed,
            empty, out-of-range or overlapping ranges (the offending value named).
    """
    sizes = np.asarray(shard_sizes, dtype=np.int64)
    n = int(sizes.sum())
    if isinstance(spec, bool):
        raise ConfigError(f"{what}: expected a count, a fraction or id ranges, got {spec!r}")
    if isinstance(spec, (int, np.integer)):
        count = int(spec)
        if not 0 < count <= n:
            raise ConfigError(
                f"{what}: a count must be in [1, {n}] (the dataset's size), got {count}"
            )
        return _seeded(sizes, count, seed, count)
    if isinstance(spec, float):
        if not (math.isfinite(spec) and 0 < spec <= 1):
            raise ConfigError(f"{what}: a fraction must be in (0, 1], got {spec!r}")
        count = min(n, math.floor(spec * n + 0.5))
        if count == 0:
            raise ConfigError(f"{what}: {spec!r} of {n} samples is none")
        return _seeded(sizes, count, seed, spec)
    if isinstance(spec, (list, tuple)):
        return _ranges(sizes, spec, what)
    raise ConfigError(f"{what}: expected a count, a fraction or id ranges, got {spec!r}")


def _seeded(sizes: np.ndarray, count: int, seed: int, spec: Any) -> Subset:
    n = int(sizes.sum())
    exact = sizes * count  # apportion count over shards by size: floors, then largest remainders
    take = exact // n
    remainder = exact - take * n
    short = count - int(take.sum())
    if short:
        order = np.lexsort((np.arange(len(sizes)), -remainder))
        take[order[:short]] += 1
    return Subset(
        sizes=take,
        shard=np.arange(len(sizes), dtype=np.int64),
        first=np.full(len(sizes), -1, dtype=np.int64),
        seed_key=derive_key(seed, _SUBSET_TAG) >> 1,  # >= 0: marks a seeded subset
        real_sizes=sizes,
        spec=spec,
    )


def _ranges(sizes: np.ndarray, spec: Sequence[Any], what: str) -> Subset:
    n = int(sizes.sum())
    ranges = []
    for item in spec:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in item)
        ):
            raise ConfigError(f"{what}: ranges are (start, stop) int pairs, got {item!r}")
        start, stop = int(item[0]), int(item[1])
        if not 0 <= start < stop <= n:
            raise ConfigError(
                f"{what}: range ({start}, {stop}) must satisfy 0 <= start < stop <= {n}"
            )
        ranges.append((start, stop))
    if not ranges:
        raise ConfigError(f"{what}: no id ranges given")
    ranges.sort()
    for (a0, b0), (a1, b1) in itertools.pairwise(ranges):
        if a1 < b0:
            raise ConfigError(f"{what}: ranges ({a0}, {b0}) and ({a1}, {b1}) overlap")
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    pieces: list[tuple[int, int, int]] = []  # (real shard, first id, count)
    for start, stop in ranges:
        k = int(np.searchsorted(offsets, start, "right")) - 1
        while start < stop:
            while offsets[k + 1] <= start:  # skip empty shards
                k += 1
            end = min(stop, int(offsets[k + 1]))
            pieces.append((k, start, end - start))
            start = end
    table = np.asarray(pieces, dtype=np.int64).reshape(-1, 3)
    return Subset(
        sizes=table[:, 2].copy(),
        shard=table[:, 0].copy(),
        first=table[:, 1].copy(),
        seed_key=-1,
        real_sizes=sizes,
        spec=[list(r) for r in ranges],
    )
