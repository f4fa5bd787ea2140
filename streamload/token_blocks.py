"""Fixed-length blocks of a concatenated token stream: pure index arithmetic.

A token corpus is a dataset whose token column holds one document per row. Reading it as blocks
concatenates every document of every shard, in index order, into one stream of ``N`` tokens and
cuts it into ``N // block_size`` blocks: block ``b`` is tokens ``[b * block_size, (b + 1) *
block_size)``; the last ``N % block_size`` tokens (the tail) are in no block. A block may span
documents and shards. Nothing here reads data: the inputs are token counts (per shard from
index.json, per record batch from a shard's footer) and the outputs say which ranges to copy.

Blocks are the items the plan orders. The plan groups items by shard (``plan.global_order`` takes
items per shard); a block belongs to the shard holding its *first* token, so ``blocks_per_shard``
numbers blocks shard by shard in the same order as block ids (block ``b`` is item ``b``), and a
block-shuffle window of shards touches those shards plus at most the first tokens of the next.

Invariants (property-tested): ``sum(blocks_per_shard(c, L)) == sum(c) // L``; the pieces of
``split_ranges`` of a range tile it exactly, in order, each inside one part.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from streamload.errors import ConfigError


def offsets(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """``[0, c0, c0 + c1, ...]`` as int64: part ``k`` holds positions ``[o[k], o[k + 1])``."""
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def check_block_size(block_size: object, what: str = "block_size") -> int:
    """``block_size`` as an int >= 1.

    Raises:
        ConfigError: anything else (the setting named).
    """
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ConfigError(f"StreamingDataset {what}: must be an int >= 1, got {block_size!r}")
    return block_size


def num_blocks(total_tokens: int, block_size: int) -> int:
    """Whole blocks in a stream of ``total_tokens`` (the tail is dropped)."""
    return total_tokens // block_size


def blocks_per_shard(token_counts: Sequence[int] | np.ndarray, block_size: int) -> np.ndarray:
    """How many blocks start in each shard (int64, one per shard; empty shards get 0).

    Args:
        token_counts: tokens per shard, in index order.
        block_size: tokens per block.
    """
    bounds = offsets(token_counts)
    total = num_blocks(int(bounds[-1]), block_size)
    first = np.minimum(-(-bounds // block_size), total)  # first block starting at or after
    return np.diff(first)


class Pieces(NamedTuple):
    """Ranges cut at part boundaries: piece ``j`` is positions ``[start[j], stop[j])`` of part
    ``part[j]`` (local to the part), belonging to input range ``range_index[j]`` at offset
    ``at[j]`` from that range's start. Pieces are ordered by range, then position."""

    range_index: np.ndarray
    part: np.ndarray
    start: np.ndarray
    stop: np.ndarray
    at: np.ndarray


def split_ranges(starts: np.ndarray, stops: np.ndarray, bounds: np.ndarray) -> Pieces:
    """Cut global ranges ``[starts[i], stops[i])`` where they cross part boundaries.

    Args:
        starts, stops: int64 arrays of equal length, ``0 <= start <= stop <= bounds[-1]``.
        bounds: part offsets (``offsets(counts)``), non-decreasing; empty parts get no piece.

    Returns:
        The non-empty pieces (see ``Pieces``).
    """
    starts = np.asarray(starts, np.int64)
    stops = np.asarray(stops, np.int64)
    nonempty = stops > starts
    first = np.searchsorted(bounds, starts, "right") - 1
    last = np.searchsorted(bounds, stops - 1, "right") - 1
    spans = np.where(nonempty, last - first + 1, 0)
    index = np.repeat(np.arange(len(starts)), spans)
    step = np.arange(len(index)) - np.repeat(np.cumsum(spans) - spans, spans)
    part = first[index] + step
    lo = np.maximum(bounds[part], starts[index])
    hi = np.minimum(bounds[part + 1], stops[index])
    keep = hi > lo  # drop empty parts inside a range
    index, part, lo, hi = index[keep], part[keep], lo[keep], hi[keep]
    return Pieces(index, part, lo - bounds[part], hi - bounds[part], lo - starts[index])


def block_pieces(block_ids: np.ndarray, shard_bounds: np.ndarray, block_size: int) -> Pieces:
    """The shard pieces of blocks ``block_ids``: ``range_index`` is the row of the output batch,
    ``at`` the column there, ``start``/``stop`` token positions inside shard ``part``."""
    ids = np.asarray(block_ids, np.int64)
    starts = ids * block_size
    return split_ranges(starts, starts + block_size, shard_bounds)
