"""Fixed-length blocks of a concatenated token stream: pure index arithmetic.

A token corpus is a dataset whose token column holds one document per row. Reading it as blocks
concatenates every document of every shard, in index order, into one stream of ``N`` tokens and
cuts it into ``N // block_size`` blocks: block ``b`` is tokens ``[b * block_size, (b + 1) *
block_size)``; the last ``N % block_size`` tokens (the tail) are in no block. A block may span
documents and shards. Nothing here reads data: the inputs are token counts (per shard from
index.json) and the outputs are counts and offsets.

Blocks are the items the plan orders. The plan groups items by shard (``plan.global_order`` takes
items per shard); a block belongs to the shard holding its *first* token, so ``blocks_per_shard``
numbers blocks shard by shard in the same order as block ids (block ``b`` is item ``b``), and a
block-shuffle window of shards touches those shards plus at most the first tokens of the next.

Invariant (property-tested): shard ``k`` gets exactly the blocks whose first token it holds, so
``sum(blocks_per_shard(c, L)) == sum(c) // L``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
