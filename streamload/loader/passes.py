"""One pass over the data, as a value: what an iterator needs, and nothing that points back.

`StreamLoader.__iter__` builds a `Pass` (the work items in order, how to fetch them, where the
pass stands) and hands it to an iterator: `streamload.loader.single.SingleProcessIter` at
num_workers=0, `streamload.loader.pool.MultiProcessIter` with workers. No iterator ever sees the
loader, so the loader's attributes can change between passes without an iterator reading a
half-updated loader, and a persistent worker pool holds no reference cycle back to its loader.

A planned pass (a StreamingDataset or a MixedDataset read in its own order) carries a
`PassCursor`: the epoch's plan, this rank, and how many batches the user has received. ``StreamLoader.state_dict`` reads
the cursor, so a checkpoint describes the last batch the user received, never what workers
prefetched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from streamload.loader.stats import LoaderStats
from streamload.pipeline.fetch import FetchSpec
from streamload.plan.mixture import MixturePlan
from streamload.plan.partition import EpochPlan


@dataclass
class PassCursor:
    """One planned pass: its plan, this rank, and how many batches the user has received.

    Attributes:
        plan: the epoch's plan (`streamload.plan.partition.EpochPlan`, or a mixture's
            `streamload.plan.mixture.MixturePlan`).
        rank, epoch: whose batches, of which epoch.
        start: the plan's start as the dataset describes it to workers (``plan_start``).
        sources: a mixture's source names (the stats count what each delivered), else None.
        stats: where those per-source counts go.
        steps: batches the user has received.
    """

    plan: EpochPlan | MixturePlan
    rank: int
    epoch: int
    start: Any = 0
    sources: tuple[str, ...] | None = None
    stats: LoaderStats | None = None
    steps: int = 0

    def worker_message(self) -> dict[str, Any]:
        """What a worker needs to rebuild this pass's plan (`streamload.loader.protocol`)."""
        return {
            "epoch": self.epoch,
            "start": self.start,
            "rank": self.rank,
            "world_size": self.plan.world_size,
            "batch_size": self.plan.batch_size,
            "drop_last": self.plan.drop_last,
        }

    def delivered(self, batch: Any) -> None:
        """The user received the next batch: count it (and, for a mixture, per source)."""
        if self.sources is not None and self.stats is not None:
            plan: Any = self.plan
            rank, step = self.rank, self.steps
            samples = plan.source_counts(rank, step)  # no per-row array unless stats need one
            self.stats.count_sources(
                self.sources, samples, batch, lambda: plan.sources_of(rank, step)
            )
        self.steps += 1


@dataclass
class Pass:
    """One pass over the data (see the module docstring).

    Attributes:
        dataset: the loader's dataset.
        spec: how each work item becomes a batch (`streamload.pipeline.fetch.FetchSpec`).
        items: the pass's work items, in order (plan batches, sampler index lists, or tickets).
        cursor: a planned pass's cursor (None when a sampler decides the order).
        length: batches a whole pass yields (``len()`` of the iterator).
        map_style: the dataset is read by index (a sampler decides the order).
        batch_size, drop_last: the loader's batching.
        stats: the loader's statistics, fed by the iterator.
        len_called: ``len(loader)`` of an iterable dataset, if asked (DataLoader's warning).
        pin_memory, pin_memory_device: whether (and, deprecated, where) to pin batches.
        timeout: seconds to wait for a worker's batch (0: forever, with liveness checks).
    """

    dataset: Any
    spec: FetchSpec
    items: Iterator[Any]
    cursor: PassCursor | None
    length: Callable[[], int]
    map_style: bool
    batch_size: int | None
    drop_last: bool
    stats: LoaderStats
    len_called: int | None = None
    pin_memory: bool = False
    pin_memory_device: str = ""
    timeout: float = 0.0

    def warn_if_past_len(self, num_yielded: int, num_workers: int) -> None:
        """DataLoader's warning when an IterableDataset yields more than ``len(loader)`` said.

        As in DataLoader, ``len_called`` is the dataset's length in samples and ``num_yielded``
        counts batches; with workers the warning names the classic cause (each worker iterating
        the whole dataset instead of its share). Called from an iterator's ``_next_batch``, so
        the warning points at the user's loop.
        """
        if self.map_style or self.len_called is None or num_yielded <= self.len_called:
            return
        message = (
            f"Length of IterableDataset {self.dataset} was reported to be {self.len_called}"
            f"(when accessing len(dataloader)), but {num_yielded} samples have been fetched. "
        )
        if num_workers > 0:
            message += (
                "For multiprocessing data-loading, this could be caused by not properly configuring"
                " the IterableDataset replica at each worker. Please see"
                " https://pytorch.org/docs/stable/data.html#torch.utils.data.IterableDataset for"
                " examples."
            )
        # warn_if_past_len <- _next_batch <- timed_step <- __next__ <- the user's loop
        warnings.warn(message, stacklevel=5)
