"""StreamLoader: a drop-in ``torch.utils.data.DataLoader`` with a columnar path for StreamingDataset.

Contract: for the same dataset, arguments, generator and global RNG state, iterating a
StreamLoader yields the same batches as DataLoader (structure, dtypes, shapes, values) and leaves
the torch RNGs in the same state. It reuses torch's own ``SequentialSampler``, ``RandomSampler``
and ``BatchSampler`` and ``default_collate`` / ``default_convert``, validates arguments in
DataLoader's order with the same exception types, and draws the iterator's base seed exactly
when DataLoader does (after ``iter(batch_sampler)``, before ``iter(dataset)``).

Each ``iter()`` builds one pass as a value (`streamload.loader.passes.Pass`): the ordered work
items (``batch_plan``, made here) and the recipe of a *fetcher* (`streamload.pipeline.fetch`:
``fetch`` reads and collates, ``finish`` is the trainer-side last step). The pass goes to
`SingleProcessIter` at num_workers=0 or to `MultiProcessIter` (worker processes, rings); no
iterator ever sees the loader.

Routes (chosen at each ``iter()``, see ``StreamLoader._route``):

- COLUMNAR: a StreamingDataset with no transform and torch's ``default_collate`` (the default)
  with auto-batching: ``get_batch(ids)`` -> `stack_columns` -> `columns_to_torch`; no
  per-sample dict is ever built. Ids are
  ``dataset.sample_order()`` cut into batches (what DataLoader yields iterating the dataset), or
  the batch sampler's index lists when shuffle/sampler/batch_sampler asked for random access.
- SAMPLES: a StreamingDataset without random access whose transform or custom collate_fn needs
  samples: the plan's id batches -> ``dataset.get_samples`` (the samples iteration yields) ->
  collate_fn.
- A MixedDataset takes COLUMNAR when none of its sources has a transform (with the default
  collate), else SAMPLES; its plan items are `streamload.plan.mixture.MixedBatch` (a source and
  an id per row).
- MAP: map-style datasets, and a StreamingDataset with random access whose transform or custom
  collate_fn (or batch_size=None) needs samples one by one: ``dataset[i]`` -> collate_fn.
- ITERABLE: other IterableDatasets, and a StreamingDataset with batch_size=None: the dataset's
  iterator -> collate_fn.

Plan and resume: a StreamingDataset (or a MixedDataset) read in its own order with batches
(COLUMNAR or SAMPLES without a sampler) follows ``dataset.epoch_plan``: this rank's batches of the epoch's global
order (`streamload.plan.partition.EpochPlan`), from the position ``load_state_dict`` set. Each
pass records its plan and the batches handed to the user in a `PassCursor`, so ``state_dict()``
describes the last
batch the user received (never what workers prefetched) as a global position that any world
size, worker count or batch size can continue. Passes through a sampler (shuffle=True,
sampler=, batch_sampler=) or over other datasets have no resumable plan: ``state_dict`` raises
StateError there.

Deliberate differences from DataLoader: it refuses ``shuffle``/``sampler``/``batch_sampler`` on
any IterableDataset, but a StreamingDataset has random access, so StreamLoader accepts them and
treats it as map-style — the batches equal DataLoader's over a map-style view of the dataset
(``__getitem__`` and ``__len__`` only). A StreamingDataset read in its own order yields the
plan's batches (its order cut into batches, split across ranks), whatever num_workers, where
DataLoader's workers would each batch their own share of the iterator. ``timeout > 0`` with
``num_workers=0`` raises ConfigError (a ValueError) from ``iter()``, where DataLoader raises
AssertionError. ``state_dict`` refuses ``in_order=False`` with workers (no position describes
batches received out of order). IterDataPipe datasets (deprecated in torch) get no special
treatment.

What a training script observes is DataLoader's: a worker's exception arrives as its own type
(also a `WorkerError`, `streamload.loader.worker_errors`), an IterableDataset that yields more
than ``len(loader)`` said warns, refusals and warnings use DataLoader's words (with
streamload's detail appended), a global ``multiprocessing.set_start_method`` is followed, and
``in_order=False`` yields whichever worker's batch is ready first.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import torch
from torch.utils.data import (
    BatchSampler,
    Dataset,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    default_collate,
    default_convert,
)
from torch.utils.data.dataloader import _InfiniteConstantSampler

from streamload import config
from streamload.dataset.mixed import MixedDataset
from streamload.dataset.streaming import StreamingDataset
from streamload.errors import ConfigError, StateError
from streamload.loader import heap
from streamload.loader.options import LoaderSettings, WorkerOptions, warn_if_too_many_workers
from streamload.loader.passes import Pass, PassCursor
from streamload.loader.stats import LoaderStats
from streamload.pipeline.collate import STRING_FORMS
from streamload.pipeline.fetch import FetchSpec, Route
from streamload.plan.mixture import MixturePlan
from streamload.plan.partition import EpochPlan, count_steps

# Attributes DataLoader refuses to change once constructed (changing them would desynchronise
# the samplers built from them).
T_co = TypeVar("T_co", covariant=True)

_FROZEN_ATTRIBUTES = frozenset(
    ("batch_size", "batch_sampler", "sampler", "drop_last", "dataset", "persistent_workers")
)


class StreamLoader(Generic[T_co]):
    """A drop-in for ``torch.utils.data.DataLoader`` (see the module docstring).

    Args:
        dataset: any torch map-style or iterable Dataset; a ``StreamingDataset`` gets the
            columnar fast path.
        batch_size: samples per batch; None disables auto-batching (each sample goes through
            ``default_convert`` or ``collate_fn``).
        shuffle: reshuffle every epoch (map-style datasets and StreamingDataset only).
        sampler: the index order (map-style datasets and StreamingDataset only).
        batch_sampler: yields whole index lists; excludes batch_size, shuffle, sampler, drop_last.
        num_workers: worker processes feeding the trainer through shared-memory rings; 0 loads
            in this process.
        collate_fn: builds a batch from a list of samples; None: torch's default_collate
            (default_convert without auto-batching).
        pin_memory: copy batches into pinned memory when an accelerator is present.
        drop_last: drop the last incomplete batch.
        timeout, worker_init_fn, multiprocessing_context, prefetch_factor, persistent_workers,
        in_order: worker settings, validated like DataLoader's (see ``WorkerOptions``).
            Without ``multiprocessing_context`` workers start per config ``start_method`` when
            it names a method, else per a global ``multiprocessing.set_start_method`` (as
            DataLoader), else ``auto`` (fork, or forkserver while the trainer runs other Python
            threads): `streamload.loader.options.effective_start_method`. ``in_order=False``
            yields batches as workers finish them (``state_dict`` then raises StateError).
        generator: torch.Generator for the shuffle and the iterator's base seed; None draws
            from the global torch RNG, as DataLoader does.
        pin_memory_device: deprecated in DataLoader; accepted with its warning.
        ring_size: shared-memory ring bytes per worker (an int or "64MiB"; rounded down to a power
            of two); default config ``ring_size`` (auto: 4 MiB). Batches of any size stream
            through it in chunks of a quarter ring; with ``zero_copy`` a batch is one record
            that must fit in half of it (auto then sizes it from index.json for a
            StreamingDataset without transform, else 64MiB). Without persistent_workers the
            rings (and, on the columnar route, the workers themselves) serve the next pass.
        zero_copy: with workers, hand out tensors that view the ring record instead of copying
            each batch out once. The record's ring space is reused only after every tensor of
            the batch is gone, so a loop that keeps more batches alive than fit in ``ring_size``
            stalls its workers (with ``timeout`` > 0 that becomes a WorkerError). Default False:
            one copy per batch, and the ring never waits on user code.
        strings: how str/bytes columns reach the loop on the columnar route (a StreamingDataset
            without transform or collate_fn): ``"list"`` (default) as the list
            ``default_collate`` gives; ``"blobs"`` as one ``sl.Blobs`` per column, a uint8
            tensor of every row back to back plus int64 offsets (one copy, no per-row object).

    Raises:
        ConfigError: an invalid or contradictory setting (a ValueError, as in DataLoader, with
            DataLoader's message where it has one).
        ValueError: from torch's samplers (bad batch_size, drop_last, num_samples).
        TypeError: a bad multiprocessing_context or sampler argument type.
        CacheError: a remote StreamingDataset whose cache cannot hold what ``num_workers``
            workers may pin at once (checked before any worker starts).
    """

    def __init__(
        self,
        dataset: Dataset[T_co],
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler[Any] | Iterable[Any] | None = None,
        batch_sampler: Sampler[list[Any]] | Iterable[list[Any]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: str | multiprocessing.context.BaseContext | None = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        ring_size: int | str | None = None,
        zero_copy: bool = False,
        strings: str = "list",
    ) -> None:
        if strings not in STRING_FORMS:
            raise ConfigError(
                f"StreamLoader strings: one of {', '.join(STRING_FORMS)}, got {strings!r}"
            )
        self.strings = strings
        # An entry point: the configuration's part in this loader, resolved once.
        self.settings = LoaderSettings.from_config(config.load(ring_size=ring_size), ring_size)
        self.ring_size = ring_size
        # Rings of a finished non-persistent pass, reused by the next pass; the whole worker pool
        # when the next pass may run on it (`streamload.loader.pool.reuse_key`).
        self._spare_rings: list[Any] = []
        self._idle_pools: list[Any] = []
        if not isinstance(zero_copy, bool):
            raise ConfigError(f"StreamLoader zero_copy: must be True or False, got {zero_copy!r}")
        self.zero_copy = zero_copy
        self._cursor: PassCursor | None = None
        self._worker_iter: Any = None
        self._stats = LoaderStats()
        self.worker_options = WorkerOptions.validated(
            num_workers,
            prefetch_factor,
            persistent_workers,
            timeout,
            worker_init_fn,
            multiprocessing_context,
            in_order,
        )
        self.dataset = dataset
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        random_access = bool(shuffle) or sampler is not None or batch_sampler is not None
        if isinstance(dataset, IterableDataset) and not (
            isinstance(dataset, StreamingDataset) and random_access
        ):
            self._map_style = False
            _refuse_random_access(shuffle, sampler, batch_sampler)
        else:
            shuffle = bool(shuffle)
            self._map_style = True
        if sampler is not None and shuffle:
            raise ConfigError(
                "sampler option is mutually exclusive with shuffle (StreamLoader: shuffle=True"
                " draws a RandomSampler; pass one or the other)"
            )
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ConfigError(
                    "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler,"
                    " and drop_last (StreamLoader: got batch_size="
                    f"{batch_size}, shuffle={shuffle}, sampler={sampler}, drop_last={drop_last})"
                )
            batch_size, drop_last = None, False
        elif batch_size is None and drop_last:
            raise ConfigError(
                "batch_size=None option disables auto-batching and is mutually exclusive with"
                " drop_last (StreamLoader: pass drop_last=False)"
            )
        if sampler is None:
            if not self._map_style:
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
            else:
                sampler = SequentialSampler(dataset)  # type: ignore[arg-type]
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.generator = generator
        if collate_fn is None:
            collate_fn = default_collate if self._auto_collation else default_convert
        self.collate_fn = collate_fn
        self._iterable_len_called: int | None = None
        if isinstance(dataset, StreamingDataset) and self.num_workers > 0:
            # The workers' cache working set, refused here (CacheError) before any worker
            # starts rather than inside one.
            dataset.check_cache_for_workers(self.num_workers)
        warn_if_too_many_workers(num_workers)
        self._initialized = True

    # -- DataLoader's attribute surface ---------------------------------------------------------

    @property
    def num_workers(self) -> int:
        return self.worker_options.num_workers

    @property
    def prefetch_factor(self) -> int | None:
        return self.worker_options.prefetch_factor

    @property
    def persistent_workers(self) -> bool:
        return self.worker_options.persistent_workers

    @property
    def timeout(self) -> float:
        return self.worker_options.timeout

    @property
    def worker_init_fn(self) -> Callable[[int], None] | None:
        return self.worker_options.worker_init_fn

    @property
    def multiprocessing_context(self) -> multiprocessing.context.BaseContext | None:
        return self.worker_options.multiprocessing_context

    @property
    def in_order(self) -> bool:
        return self.worker_options.in_order

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN_ATTRIBUTES and getattr(self, "_initialized", False):
            raise ConfigError(
                f"{name} attribute should not be set after {type(self).__name__} is initialized"
                " (StreamLoader: build a new loader instead)"
            )
        super().__setattr__(name, value)

    @property
    def _auto_collation(self) -> bool:
        return self.batch_sampler is not None

    @property
    def _index_sampler(self) -> Any:
        return self.batch_sampler if self._auto_collation else self.sampler

    def __len__(self) -> int:
        """Batches per epoch: from the (batch) sampler; for a StreamingDataset's own order, this
        rank's steps of a whole epoch (the same on every rank); ``len(dataset)`` based for other
        iterable datasets.

        Raises:
            TypeError: the dataset or sampler has no length.
        """
        if self._map_style:
            return len(self._index_sampler)
        if self._planned():
            world_size = self.dataset.topology().world_size  # type: ignore[attr-defined]
            return count_steps(
                len(self.dataset),  # type: ignore[arg-type]
                world_size,
                int(self.batch_size or 1),
                self.drop_last,
            )
        length = len(self.dataset)  # type: ignore[arg-type]
        self._iterable_len_called = length
        if self.batch_size is None:
            return length
        return length // self.batch_size if self.drop_last else math.ceil(length / self.batch_size)

    # -- iteration ------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[T_co]:
        """A new pass over the data (draws the base seed now, as DataLoader's iterator does)."""
        if self.worker_options.num_workers > 0:
            from streamload.loader.pool import MultiProcessIter, WorkerSetup

            if self.persistent_workers and self._worker_iter is not None:
                return self._worker_iter.reset(self._new_pass())
            # As DataLoader: again whenever a pool of workers is about to start.
            warn_if_too_many_workers(self.worker_options.num_workers)
            pass_ = self._new_pass()
            setup = WorkerSetup.for_pass(
                pass_,
                self.worker_options,
                self.settings,
                self._spare_rings,
                self.zero_copy,
                self._idle_pools,
            )
            iterator = MultiProcessIter(pass_, _draw_seed(self.generator), setup)
            if self.persistent_workers:
                self._worker_iter = iterator
            return iterator
        from streamload.loader.single import SingleProcessIter

        pass_ = self._new_pass()
        # Drawn and unused at num_workers=0, exactly like DataLoader: the RNG state after an
        # epoch must match, and workers would derive their seeds from it.
        _draw_seed(self.generator)
        heap.prime(self.settings.heap_retain)  # reuse freed batch memory (glibc's own policy)
        return SingleProcessIter(pass_)

    def _new_pass(self) -> Pass:
        """This pass as a value (``iter()`` of the index sampler happens here, eagerly)."""
        spec = self.fetch_spec()
        items = self.batch_plan(spec.route)
        return Pass(
            dataset=self.dataset,
            spec=spec,
            items=items,
            cursor=self._cursor,
            length=functools.partial(len, self._index_sampler),
            map_style=self._map_style,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            stats=self._stats,
            len_called=self._iterable_len_called,
            pin_memory=self.pin_memory,
            pin_memory_device=self.pin_memory_device,
            timeout=float(self.timeout),
        )

    def _route(self) -> Route:
        dataset = self.dataset
        sources = dataset.sources.values() if isinstance(dataset, MixedDataset) else [dataset]
        if (
            all(isinstance(d, StreamingDataset) and d.transform is None for d in sources)
            and self._auto_collation
            and self.collate_fn is default_collate
        ):
            return Route.COLUMNAR
        if self._planned():
            return Route.SAMPLES
        return Route.MAP if self._map_style else Route.ITERABLE

    def _planned(self) -> bool:
        """Whether passes follow the dataset's own plan (a StreamingDataset or MixedDataset:
        and so can resume)."""
        return (
            isinstance(self.dataset, (StreamingDataset, MixedDataset))
            and not self._map_style
            and self.batch_size is not None
        )

    def fetch_spec(self) -> FetchSpec:
        """What a process needs, besides the dataset, to build this run's fetcher."""
        return FetchSpec(
            route=self._route(),
            auto_collation=self._auto_collation,
            collate_fn=self.collate_fn,
            drop_last=self.drop_last,
            strings=self.strings,
        )

    def batch_plan(self, route: Route) -> Iterator[Any]:
        """This run's work items, in order (see the module docstring).

        ``iter()`` of the index sampler happens here, eagerly, as in DataLoader; a planned pass
        starts here (from the position ``load_state_dict`` set) and becomes the one
        ``state_dict`` describes.
        """
        if self._planned():
            cursor = self._begin_pass()
            return cursor.plan.batches(cursor.rank)
        self._cursor = None
        return iter(self._index_sampler)

    def _begin_pass(self) -> PassCursor:
        dataset: Any = self.dataset
        start = dataset.take_resume_position()
        plan = dataset.epoch_plan(int(self.batch_size or 1), self.drop_last, start)
        rank = dataset.topology().rank
        mixed = isinstance(dataset, MixedDataset)
        self._cursor = PassCursor(
            plan,
            rank,
            dataset.epoch,
            start=dataset.plan_start(plan),
            sources=dataset.names if mixed else None,
            stats=self._stats if mixed else None,
        )
        workers = self.worker_options.num_workers
        if workers == 0:  # workers follow their own shares (`streamload.loader.worker`)
            dataset.follow_plan(plan, rank)
        # Only for whole epochs: a resumed pass near its end is short by nature, not misconfigured.
        if not start and 0 < plan.num_steps < workers:
            warnings.warn(
                f"StreamLoader: rank {rank} has {plan.num_steps} batches this epoch for"
                f" {workers} workers; {workers - plan.num_steps} workers stay idle (use fewer"
                " workers or a smaller batch_size)",
                stacklevel=5,  # the user's iter(): _begin_pass <- batch_plan <- _new_pass <- __iter__
            )
        return self._cursor

    # -- statistics ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """What this loader measured since it was built: throughput, data-wait per step
        (p50/p95/p99/max), busy time per pipeline stage and worker, ring occupancy, padding and
        cache counters, as a plain JSON-serialisable dict (keys: ``stats.LoaderStats.snapshot``),
        plus ``heap``: what streamload did to this process's malloc (``heap.report``).
        """
        snapshot = self._stats.snapshot(self.padded_samples)
        snapshot["heap"] = heap.report()
        return snapshot

    # -- plan and resume ------------------------------------------------------------------------

    def epoch_plan(self) -> EpochPlan | MixturePlan:
        """The plan of the current pass (or of the next one, before any): steps, ``padding``.

        Raises:
            StateError: this loader does not read a StreamingDataset in its own order.
        """
        dataset = self._require_plan("epoch_plan")
        if self._cursor is not None:
            return self._cursor.plan
        return dataset.epoch_plan(int(self.batch_size or 1), self.drop_last)

    @property
    def padded_samples(self) -> int:
        """Repeated samples this rank yields in the current (or next) epoch so every rank takes
        the same number of steps: 0, or 1 when the epoch's tail has fewer samples than ranks."""
        if not self._planned():
            return 0
        plan = self.epoch_plan()
        return plan.padded(self.dataset.topology().rank)  # type: ignore[attr-defined]

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: after the last batch its user received.

        Returns:
            ``{"version", "fingerprint", "epoch", "position"}``, JSON-serialisable and the same
            on every rank; ``position`` counts samples of the epoch's global order consumed by
            all ranks. After an epoch's last batch it names the next epoch at position 0.

        Raises:
            StateError: the loader does not read a StreamingDataset in its own order (a sampler,
                shuffle=True, batch_size=None or another dataset), or reads it with workers and
                ``in_order=False``.
        """
        dataset = self._require_plan("state_dict")
        if not self.in_order and self.num_workers > 0:
            raise StateError(
                "StreamLoader.state_dict: not supported with in_order=False: batches arrive in"
                " whichever order workers finish them, so the batches received are no prefix of"
                " the plan and no position describes them; use in_order=True (the default) to"
                " checkpoint"
            )
        cursor = self._cursor
        if cursor is None or dataset.resume_pending or dataset.epoch != cursor.epoch:
            return dataset.state_dict()
        return dataset.plan_state(cursor.epoch, cursor.plan, cursor.steps)  # type: ignore[arg-type]

    def load_state_dict(self, state: dict[str, Any], *, allow_append: bool = False) -> None:
        """Continue from ``state`` at the next ``iter()``: its epoch (``dataset.epoch``), from
        its position, on this loader's world size, workers and batch size.

        Args:
            state: what ``state_dict`` returned.
            allow_append: accept a state saved before shards were appended to the dataset
                (``StreamingDataset.load_state_dict`` says what that means for exactly-once).

        Raises:
            StateError: another dataset or other shuffle settings (both sides shown), an
                unknown version, a malformed state, or a loader without a resumable plan.
        """
        dataset = self._require_plan("load_state_dict")
        if isinstance(dataset, MixedDataset):
            if allow_append:
                raise StateError(
                    "StreamLoader.load_state_dict: allow_append=True is not supported for a"
                    " MixedDataset (a mixture's sources must match the state's fingerprints)"
                )
            dataset.load_state_dict(state)
        else:
            dataset.load_state_dict(state, allow_append=allow_append)
        self._cursor = None

    def _require_plan(self, what: str) -> StreamingDataset | MixedDataset:
        if self._planned():
            return self.dataset  # type: ignore[return-value]
        if not isinstance(self.dataset, (StreamingDataset, MixedDataset)):
            reason = f"a {type(self.dataset).__name__} has no resumable plan"
        elif self.batch_size is None:
            reason = "batch_size=None reads samples without a plan"
        else:
            reason = (
                "a sampler (shuffle=True, sampler= or batch_sampler=) decides the order, and"
                " samplers carry no resumable state; shuffle with"
                " StreamingDataset(shuffle=True, seed=...) and StreamLoader(shuffle=None)"
            )
        raise StateError(f"StreamLoader.{what}: not supported here: {reason}")


def _refuse_random_access(shuffle: Any, sampler: Any, batch_sampler: Any) -> None:
    """DataLoader's refusals of an order on an IterableDataset (its wording, our detail)."""
    detail = (
        " (StreamLoader: only a StreamingDataset, which has random access, takes shuffle,"
        " sampler or batch_sampler; other iterable datasets decide their own order)"
    )
    if shuffle not in (False, None):
        raise ConfigError(
            "DataLoader with IterableDataset: expected unspecified shuffle option, but got"
            f" shuffle={shuffle}{detail}"
        )
    if sampler is not None:
        raise ConfigError(
            "DataLoader with IterableDataset: expected unspecified sampler option, but got"
            f" sampler={sampler}{detail}"
        )
    if batch_sampler is not None:
        raise ConfigError(
            "DataLoader with IterableDataset: expected unspecified batch_sampler option, but got"
            f" batch_sampler={batch_sampler}{detail}"
        )


def _draw_seed(generator: torch.Generator | None) -> int:
    """The iterator's base seed, drawn as DataLoader draws it (one int64 from ``generator``)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())
