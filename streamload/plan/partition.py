"""Steps: one epoch's global order cut into per-rank batches, from any start position.

The global order (`streamload.plan.order.EpochOrder`, evaluated lazily: a plan never holds the
epoch's ids, only slices the order for the steps someone builds) is consumed front to back, one
*step* at a time; a step is one batch on every rank. A full step takes ``world_size * batch_size``
consecutive ids and rank ``r`` gets the ``r``-th slice of ``batch_size``. The tail (fewer ids
than a full step) is dropped with ``drop_last``; otherwise it is one last step split as evenly as
possible (batch sizes differ by at most one), and only when the tail has fewer ids than ranks do
the ranks left without one repeat a tail sample (``padding`` counts them). So every rank takes
the same number of steps (DDP never waits on a rank that ran dry), and every id appears exactly
once across ranks per epoch (plus ``padding`` repeats, fewer than ``world_size``).

Workers: worker ``k`` of ``n`` builds steps ``k, k + n, ...`` counted from the plan's start
(`EpochPlan.batches`); the trainer reads them round-robin, so batch contents never depend on
``n``. `EpochPlan.rank_positions` gives the positions of many steps of one rank at once (what
iterating a dataset sample by sample reads, a chunk at a time), still without the epoch's ids.

**Position** counts the ids of the global order consumed by all ranks together (padding not
counted): a plan can start at any position, and the same position on a different world size,
batch size or worker count continues the same global order without loss or repeats. A resume
state is therefore ``(settings fingerprint, epoch, position)`` (`streamload.plan.state`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from streamload.errors import ConfigError
from streamload.plan.order import EpochOrder


def count_steps(
    num_samples: int, world_size: int, batch_size: int, drop_last: bool, start: int = 0
) -> int:
    """How many steps (batches per rank) an ``EpochPlan`` with these settings has."""
    full, tail = divmod(num_samples - start, world_size * batch_size)
    return full + (1 if tail and not drop_last else 0)


class EpochPlan:
    """One epoch's steps for every rank, from a start position (see the module docstring).

    Args:
        order: the epoch's global order: an `streamload.plan.order.EpochOrder` (or anything with
            ``len`` and slicing that gives int64 ids, e.g. an array).
        world_size: ranks taking one batch per step.
        batch_size: ids per rank per full step.
        drop_last: drop the tail that does not fill a whole step.
        start: position (ids of ``order`` already consumed) the plan starts from.

    Raises:
        ConfigError: world_size or batch_size < 1, start outside ``[0, len(order)]``.
    """

    def __init__(
        self,
        order: EpochOrder | np.ndarray,
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

    def rank_positions(self, rank: int, first: int, stop: int, stride: int = 1) -> np.ndarray:
        """Positions of the ids ``rank`` yields at steps ``first, first + stride, ...`` below
        ``stop``, concatenated in step order (a padded rank's repeat included): ``order`` at
        these positions is those batches, joined.

        Raises:
            IndexError: rank out of range.
        """
        if not 0 <= rank < self.world_size:
            raise IndexError(f"rank {rank} outside [0, {self.world_size})")
        b, world = self.batch_size, self.world_size
        steps = np.arange(max(first, 0), min(stop, self.num_steps), stride, dtype=np.int64)
        full = steps[steps < self.full_steps]
        positions = (self.start + (full[:, None] * world + rank) * b + np.arange(b)).reshape(-1)
        if len(steps) and steps[-1] >= self.full_steps:  # the tail step
            tail_start = self.start + self.full_steps * world * b
            if rank >= self.tail:
                tail = np.array([tail_start + rank % self.tail], dtype=np.int64)
            else:
                share, extra = divmod(self.tail, world)
                begin = tail_start + rank * share + min(rank, extra)
                tail = np.arange(begin, begin + share + (1 if rank < extra else 0), dtype=np.int64)
            positions = np.concatenate((positions, tail))
        return positions.astype(np.int64, copy=False)
