"""The plan: which sample ids each rank and worker yields, in order, as a pure function.

Three layers, each a pure function of small integers (no I/O, no randomness beyond the seed):

1. **Global order** (``global_order``): a permutation of ``[0, num_samples)`` from (shard sizes,
   seed, epoch, shuffle settings). It never depends on world size, rank, batch size or workers,
   so every topology walks the same sequence. Modes: ``full`` (a uniform permutation) and
   ``block`` (shuffle the shard order, then shuffle the samples inside each window of
   ``shuffle_block`` consecutive shards of that order, so a reader touches only one window of
   shards at a time: bounded read-ahead and cache, weaker mixing).
2. **Steps** (``EpochPlan``): the global order is consumed front to back, one *step* at a time;
   a step is one batch on every rank. A full step takes ``world_size * batch_size`` consecutive
   ids and rank ``r`` gets the ``r``-th slice of ``batch_size``. The tail (fewer ids than a full
   step) is dropped with ``drop_last``; otherwise it is one last step split as evenly as possible
   (batch sizes differ by at most one), and only when the tail has fewer ids than ranks do the
   ranks left without one repeat a tail sample (``padding`` counts them). So every rank takes
   the same number of steps (DDP never waits on a rank that ran dry), every id appears exactly
   once across ranks per epoch (plus ``padding`` repeats, fewer than ``world_size``).
3. **Workers**: worker ``k`` of ``n`` builds steps ``k, k + n, ...`` counted from the plan's
   start; the trainer reads them round-robin, so batch contents never depend on ``n``.

**Position** counts the ids of the global order consumed by all ranks together (padding not
counted): a plan can start at any position, and the same position on a different world size,
batch size or worker count continues the same global order without loss or repeats. A resume
state is therefore ``(settings fingerprint, epoch, position)`` (``make_state``/``check_state``),
identical on every rank.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from streamload.errors import ConfigError, StateError

SHUFFLE_MODES = ("full", "block")
STATE_VERSION = 1
_STATE_KEYS = frozenset(("version", "fingerprint", "epoch", "position"))


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


@dataclass(frozen=True)
class Topology:
    """Where this process sits in a distributed job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def topology(rank: int | None = None, world_size: int | None = None) -> Topology:
    """This process's rank and world size.

    Explicit arguments win (both or neither); else ``torch.distributed`` when it is initialized;
    else the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); else a single
    process.

    Raises:
        ConfigError: only one of rank/world_size given, a non-integer environment variable, or
            a rank outside ``[0, world_size)``.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    if (rank is None) != (world_size is None):
        raise ConfigError(
            f"rank/world_size: give both or neither, got rank={rank!r} world_size={world_size!r}"
        )
    if rank is None or world_size is None:
        rank, world_size, source = _distributed_or_env()
    else:
        source = "arguments"
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size from {source}: must be an int >= 1, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank from {source}: must be in [0, {world_size}), got {rank!r}")
    return Topology(rank, world_size, local_rank, local_world)


def _distributed_or_env() -> tuple[int, int, str]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), "torch.distributed"
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), "RANK/WORLD_SIZE"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: not an integer: {raw!r}") from None


def count_steps(
    num_samples: int, world_size: int, batch_size: int, drop_last: bool, start: int = 0
) -> int:
    """How many steps (batches per rank) an ``EpochPlan`` with these settings has."""
    full, tail = divmod(num_samples - start, world_size * batch_size)
    return full + (1 if tail and not drop_last else 0)


class EpochPlan:
    """One epoch's steps for every rank, from a start position (see the module docstring).

    Args:
        order: the epoch's global order (``global_order``).
        world_size: ranks taking one batch per step.
        batch_size: ids per rank per full step.
        drop_last: drop the tail that does not fill a whole step.
        start: position (ids of ``order`` already consumed) the plan starts from.

    Raises:
        ConfigError: world_size or batch_size < 1, start outside ``[0, len(order)]``.
    """

    def __init__(
        self,
        order: np.ndarray,
        world_size: int,
        batch_size: int,
        drop_last: bool = False,
        start: int = 0,
    ) -> None:
        if world_size < 1 or batch_size < 1:
            raise ConfigError(
                f"plan: world_size and batch_size must be >= 1, got {world_size}, {batch_size}"
            )
        if not 0 <= start <= len(order):
            raise ConfigError(f"plan: start position {start} outside [0, {len(order)}]")
        self.order = order
        self.world_size = world_size
        self.batch_size = batch_size
        self.drop_last = bool(drop_last)
        self.start = start
        step = world_size * batch_size
        remaining = len(order) - start
        self.full_steps = remaining // step
        self.tail = 0 if self.drop_last else remaining - self.full_steps * step
        self.num_steps = self.full_steps + (1 if self.tail else 0)
        #: Repeated ids in this epoch (the ranks left without a tail id), 0 <= padding < world_size.
        self.padding = max(world_size - self.tail, 0) if self.tail else 0

    @property
    def end(self) -> int:
        """The position after the last step (``len(order)`` unless drop_last drops a tail)."""
        return self.position_after(self.num_steps)

    def position_after(self, steps: int) -> int:
        """The global position once ``steps`` steps (on every rank) have been consumed."""
        steps = min(max(steps, 0), self.num_steps)
        full = min(steps, self.full_steps)
        position = self.start + full * self.world_size * self.batch_size
        return position + (self.tail if steps > self.full_steps else 0)

    def padded(self, rank: int) -> int:
        """How many repeated ids ``rank`` yields this epoch (0 or 1)."""
        return int(self.tail > 0 and rank >= self.tail)

    def batch(self, rank: int, step: int) -> np.ndarray:
        """The ids ``rank`` yields at ``step`` (0-based from the plan's start).

        Raises:
            IndexError: step or rank out of range.
        """
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} outside [0, {self.world_size})")
        if not 0 <= step < self.num_steps:
            raise IndexError(f"step {step} outside [0, {self.num_steps})")
        b = self.batch_size
        if step < self.full_steps:
            first = self.start + (step * self.world_size + rank) * b
            return self.order[first : first + b]
        tail = self.order[self.start + self.full_steps * self.world_size * b :]
        if rank >= self.tail:  # fewer tail ids than ranks: repeat one so every rank takes a step
            return tail[rank % self.tail : rank % self.tail + 1]
        share, extra = divmod(self.tail, self.world_size)
        first = rank * share + min(rank, extra)
        return tail[first : first + share + (1 if rank < extra else 0)]

    def batches(self, rank: int, first: int = 0, stride: int = 1) -> Iterator[np.ndarray]:
        """``rank``'s batches at steps ``first, first + stride, ...`` (worker ``first`` of
        ``stride``)."""
        for step in range(first, self.num_steps, stride):
            yield self.batch(rank, step)

    def rank_ids(self, rank: int) -> np.ndarray:
        """Every id ``rank`` yields this epoch, in order."""
        step = self.world_size * self.batch_size
        full = self.order[self.start : self.start + self.full_steps * step]
        ids = full.reshape(self.full_steps, self.world_size, self.batch_size)[:, rank].ravel()
        if self.num_steps > self.full_steps:
            ids = np.concatenate((ids, self.batch(rank, self.full_steps)))
        return ids


# -- resume state ---------------------------------------------------------------------------------


def fingerprint(num_samples: int, index_digest: str, settings: ShuffleSettings) -> dict[str, Any]:
    """What a resume state must agree on: the dataset's identity and its shuffle settings."""
    return {"num_samples": num_samples, "index": index_digest, **asdict(settings)}


def make_state(fp: Mapping[str, Any], epoch: int, position: int) -> dict[str, Any]:
    """A JSON-serialisable resume state (plain ints and strings)."""
    return {"version": STATE_VERSION, "fingerprint": dict(fp), "epoch": epoch, "position": position}


def check_state(state: Any, fp: Mapping[str, Any], what: str) -> tuple[int, int]:
    """Validate a resume state against this dataset's fingerprint.

    Args:
        state: what ``make_state`` produced (possibly through JSON or torch.save).
        fp: this dataset's ``fingerprint``.
        what: the object loading it, for messages (e.g. ``"StreamLoader.load_state_dict"``).

    Returns:
        ``(epoch, position)``.

    Raises:
        StateError: not a state, unknown version, missing/extra keys, a fingerprint that differs
            (each differing field with both values), or a bad epoch/position.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"{what}: expected a state dict, got {type(state).__name__}")
    if state.get("version") != STATE_VERSION:
        raise StateError(
            f"{what}: state version {state.get('version')!r} is not supported"
            f" (this streamload reads version {STATE_VERSION})"
        )
    keys = set(state)
    if keys != _STATE_KEYS:
        raise StateError(
            f"{what}: state keys {sorted(keys)} differ from the expected {sorted(_STATE_KEYS)}"
        )
    saved = state["fingerprint"]
    if not isinstance(saved, Mapping) or dict(saved) != dict(fp):
        saved = dict(saved) if isinstance(saved, Mapping) else {"?": saved}
        diffs = [
            f"{key}: state has {saved.get(key, '<missing>')!r}, this dataset has"
            f" {fp.get(key, '<missing>')!r}"
            for key in sorted(set(saved) | set(fp))
            if saved.get(key, "<missing>") != fp.get(key, "<missing>")
        ]
        raise StateError(
            f"{what}: the state belongs to another dataset or other shuffle settings; "
            + "; ".join(diffs)
            + f"\nstate fingerprint: {json.dumps(saved, sort_keys=True, default=str)}"
            + f"\nthis dataset:      {json.dumps(dict(fp), sort_keys=True)}"
        )
    epoch, position = state["epoch"], state["position"]
    for name, value in (("epoch", epoch), ("position", position)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StateError(f"{what}: state {name} must be an int >= 0, got {value!r}")
    if position > fp["num_samples"]:
        raise StateError(
            f"{what}: state position {position} is past the end of the dataset"
            f" ({fp['num_samples']} samples)"
        )
    return epoch, position
