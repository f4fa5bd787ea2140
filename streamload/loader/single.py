"""The single-process iterator: one pass fetched in the trainer (num_workers=0).

It mirrors torch's ``_SingleProcessDataLoaderIter`` step for step: each ``next()`` takes the
pass's next work item, fetches and collates it here, pins it if asked, and counts it on the
pass cursor (so ``state_dict`` describes it). An IterableDataset that yields more than
``len(loader)`` said triggers DataLoader's warning (`Pass.warn_if_past_len`).
"""

from __future__ import annotations

from typing import Any

from streamload.errors import ConfigError
from streamload.loader.passes import Pass
from streamload.loader.pin_memory import pin, pin_memory_device
from streamload.loader.stats import timed_step


class SingleProcessIter:
    """One pass in this process (see the module docstring)."""

    def __init__(self, pass_: Pass) -> None:
        self._pin_device = pin_memory_device(pass_.pin_memory, pass_.pin_memory_device)
        if pass_.timeout != 0:
            raise ConfigError(
                f"StreamLoader timeout: only used with num_workers > 0, got timeout={pass_.timeout}"
            )
        self._pass = pass_
        self._items = pass_.items
        self._cursor = pass_.cursor
        self._stats = pass_.stats
        self._fetcher = pass_.spec.build(pass_.dataset, self._stats.local)
        self._stats.begin_pass()
        self._num_yielded = 0

    def __iter__(self) -> SingleProcessIter:
        return self

    def __len__(self) -> int:
        return self._pass.length()

    def __next__(self) -> Any:
        return timed_step(self._stats, self._next_batch)

    def _next_batch(self) -> Any:
        item = next(self._items)
        batch = self._fetcher.finish(self._fetcher.fetch(item))
        self._stats.local.batches += 1
        if self._cursor is not None:
            self._cursor.delivered(batch)
        if self._pin_device is not None:
            batch = pin(batch, self._pin_device)
        self._num_yielded += 1
        self._pass.warn_if_past_len(self._num_yielded, num_workers=0)
        return batch
