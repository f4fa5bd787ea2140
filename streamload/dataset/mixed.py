"""MixedDataset: named sources drawn in fixed proportions, exactly, resumable on any topology.

``MixedDataset({"web": ds1, "code": ds2}, weights={"web": 0.7, "code": 0.3}, samples=N)`` is a
torch IterableDataset of ``N`` positions per epoch; a ``StreamLoader`` over it yields batches in
which every global batch (``world_size x batch_size`` positions, a *step*) takes
``floor(w B)`` or ``ceil(w B)`` items of each source, every rank's slice ``floor``/``ceil`` of its
share, and each source's total stays within one item of ``w x position`` at every step (two
after a resume on another batch size; the arithmetic is `mixture.apportion`). Each source keeps its own epochs: draw ``k`` of a source of
``n`` items is position ``k mod n`` of its epoch ``k // n``, a permutation of its own (its
``shuffle_mode``, its window below, its ``subset``); a source that runs out starts its next
epoch, independently of the others, so no source's end ever ends or skews the run.

Windows: a source shuffled in block mode reads its shards in windows (`streamload.plan.order`),
and a mixed batch touches every source's current window, so the mixture shares one budget of
shards among its sources: ``shuffle_block`` (default: the largest of their own
``shuffle_block``) split by the weights given at construction (`mixture.source_windows`: at
least one shard each), so a mixed batch reads from about as many shards as one dataset's
batch does (each source then mixes within fewer shards than it would alone; a larger budget or
``shuffle_block={name: shards}`` trades read cost for mixing). A source's window is part of its
permutation, so the windows are fixed for the run: ``set_weights`` keeps them, and a loaded
state brings its own (a version-1 state, from before windows, each source's own
``shuffle_block``); a mapping ``shuffle_block`` that contradicts a state is a `StateError`.

Cursors: how many items each source has given. A mixture epoch starts where the previous one
left the cursors (epoch ``e``'s start is computed by walking the earlier epochs' steps, O(S) per
step without touching data, and remembered; a loader pass that finishes an epoch records it).

Resume state (``state_dict``; a StreamLoader's has the same shape and counts what its user
received)::

    {"version", "kind": "mixture", "fingerprint": {"order", "seed", "shuffle", "samples",
     "sources": {name: source fingerprint}}, "epoch", "position", "cursors": {name: k},
     "segments": [{"epoch", "position", "weights": {name: share}, "cursors": {name: k}}],
     "windows": {name: shards or null}}

Small (O(sources x segments)), JSON, and enough to continue exactly on any world size, worker
count or batch size. Loading it into a mixture with other weights appends a segment at the
state's position: every source continues from its cursor under the new weights. A state whose
sources differ (added, removed, or another dataset, subset or shuffle) is a `StateError` naming
them.

Schemas: every source must return the same columns (names, kinds, dtypes, shapes); select the
common ones with ``StreamingDataset(url, columns=[...])``, else `FormatError` names the source
and the difference. ``source_column="source"`` adds a str column naming each row's source.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data

from streamload.dataset.streaming import ShardTable, StreamingDataset, merge_parts, take_sources
from streamload.dataset.topology import Topology, topology
from streamload.errors import ConfigError, FormatError, StateError
from streamload.format.blobs import BlobColumn
from streamload.format.schema import Column, Schema
from streamload.plan.mixture import (
    MixedBatch,
    MixturePlan,
    Segment,
    SourceOrder,
    advance,
    check_weights,
    shares,
    source_windows,
)
from streamload.plan.order import ORDER_VERSION, ShuffleSettings
from streamload.plan.permutation import derive_key
from streamload.plan.state import check_mixture_state, make_mixture_state

_ITER_BATCH = 256  # positions per rank per step when the mixture is iterated directly


class MixedDataset(torch.utils.data.IterableDataset):
    """Sources mixed in exact proportions (see the module docstring).

    Args:
        sources: name -> StreamingDataset (each with its own columns, subset, shuffle_mode,
            shuffle_block, transform); names are non-empty strings.
        weights: name -> positive number (normalised); None: equal weights.
        samples: positions per epoch (>= 1); None: the sum of the sources' lengths.
        seed: seed of every source's permutations (int >= 0), combined with the source's
            name and its own seed, so two sources over one dataset read different orders.
        shuffle: shuffle each source (a source with ``shuffle=True`` is shuffled either way).
        source_column: add a str column of this name holding each row's source name.
        shuffle_block: the shuffle windows of the sources shuffled in block mode (see
            "Windows" in the module docstring): an int is the mixture's budget of shards,
            apportioned by the weights given here; ``{name: shards}`` sets every source's
            window; None: a budget of the largest of those sources' own ``shuffle_block``.
        rank, world_size: this process's place in a distributed job (both or neither); None:
            torch.distributed or RANK/WORLD_SIZE at each pass.

    Raises:
        ConfigError: no sources, a bad name, weight, samples, seed, source_column or
            shuffle_block.
        FormatError: sources whose selected columns differ.
        TypeError: a source that is not a StreamingDataset.
    """

    def __init__(
        self,
        sources: Mapping[str, StreamingDataset],
        weights: Mapping[str, float] | None = None,
        samples: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        source_column: str | None = None,
        *,
        shuffle_block: int | Mapping[str, int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(sources, Mapping) or not sources:
            raise ConfigError("MixedDataset sources: a non-empty {name: StreamingDataset} mapping")
        for name, source in sources.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"MixedDataset sources: names are non-empty str, got {name!r}")
            if not isinstance(source, StreamingDataset):
                raise TypeError(
                    f"MixedDataset source {name!r}: expected a StreamingDataset, got"
                    f" {type(source).__name__}"
                )
            if len(source) == 0:
                raise ConfigError(f"MixedDataset source {name!r}: has no samples")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"MixedDataset seed: must be an int >= 0, got {seed!r}")
        self.names = tuple(sources)
        self.sources = dict(sources)
        self.seed = seed
        self.shuffle = bool(shuffle)
        total = sum(len(s) for s in self.sources.values())
        if samples is None:
            samples = total
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
            raise ConfigError(f"MixedDataset samples: must be an int >= 1, got {samples!r}")
        self.samples = samples
        self._schema = _common_schema(self.sources)
        if source_column is not None and (
            not isinstance(source_column, str) or source_column in self._schema.names
        ):
            raise ConfigError(
                f"MixedDataset source_column: must be a str that is not a column"
                f" ({list(self._schema.names)}), got {source_column!r}"
            )
        self.source_column = source_column
        if source_column is not None:
            self._schema = Schema((*self._schema.columns, Column(source_column, "str")))
        if rank is not None or world_size is not None:
            topology(rank, world_size)
        self._rank_arg, self._world_size_arg = rank, world_size
        weights_in = shares(check_weights(self.names, weights))
        self._explicit_windows = isinstance(shuffle_block, Mapping)
        #: Each source's shuffle window in shards (None: not shuffled in block mode), fixed
        #: for the run: a loaded state's windows replace these.
        self.windows = self._initial_windows(shuffle_block, weights_in)
        self._orders = [
            SourceOrder(s.item_sizes(), self._source_settings(n)) for n, s in sources.items()
        ]
        zeros = (0,) * len(self.names)
        #: Weight segments: (epoch, position, Segment), oldest first; the last is in force.
        self.segments: list[tuple[int, int, Segment]] = [(0, 0, Segment(weights_in, zeros))]
        self._epoch = 0
        self._resume: dict[str, Any] | None = None  # {"position", "cursors"} of a loaded state
        # Cursors at the start of epochs, per (step size, drop_last, segment count).
        self._epoch_starts: dict[tuple[int, bool, int], dict[int, tuple[int, ...]]] = {}
        self._last_steps: tuple[int, bool] | None = None
        self._table: ShardTable | None = None  # the sources' shards numbered as one (per process)

    # -- metadata ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.samples

    @property
    def schema(self) -> Schema:
        """The columns every batch has (the sources' common ones, plus ``source_column``)."""
        return self._schema

    def item_nbytes(self) -> float:
        """Bytes of one item as the loader receives it, at most (the largest source's): what
        ring sizing plans for."""
        return max(source.item_nbytes() for source in self.sources.values())

    @property
    def weights(self) -> dict[str, float]:
        """The weights in force, normalised."""
        segment = self.segments[-1][2]
        return {n: w / segment.total for n, w in zip(self.names, segment.shares, strict=True)}

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New weights from the next pass on (from a loaded state's position if one is
        pending, else from the start of the current epoch): every source continues from its
        cursor there. Between epochs, call ``set_epoch(next)`` first: called while the
        finished epoch is still current, the change starts at that epoch's position 0 and the
        next epoch's cursors are recomputed as if it had run under the new weights.

        Raises:
            ConfigError: unknown or missing names, bad values.
        """
        weights_in = shares(check_weights(self.names, weights))
        if weights_in == self.segments[-1][2].shares:
            return
        if self._resume is not None:
            position, cursors = self._resume["position"], tuple(self._resume["cursors"])
        else:
            step, drop_last = self._default_steps()
            position, cursors = 0, self.epoch_start(self._epoch, step, drop_last, 1)
        self._add_segment(self._epoch, position, Segment(weights_in, cursors))

    def __repr__(self) -> str:
        weights = ", ".join(f"{n}={w:.4g}" for n, w in self.weights.items())
        return f"MixedDataset({weights}; samples={self.samples}, seed={self.seed})"

    # -- order --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a resume point loaded for another epoch is dropped.

        Raises:
            ConfigError: not an int >= 0.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(f"MixedDataset.set_epoch: epoch must be an int >= 0, got {epoch!r}")
        if epoch != self._epoch:
            self._resume = None
        self._epoch = epoch

    def topology(self) -> Topology:
        """This process's rank and world size."""
        return topology(self._rank_arg, self._world_size_arg)

    def epoch_start(
        self, epoch: int, batch_size: int, drop_last: bool, world_size: int | None = None
    ) -> tuple[int, ...]:
        """Every source's cursor at the start of ``epoch`` of a run with these steps.

        Walks the steps from where the weights in force at that epoch's start were set (O(S)
        integer work per step, no data), remembering each epoch's start on the way.
        """
        world = world_size or self.topology().world_size
        step = world * batch_size
        index, (seg_epoch, seg_position, segment) = self._segment_at(epoch, 0)
        memo = self._epoch_starts.setdefault((step, drop_last, index), {})
        if epoch in memo:
            return memo[epoch]
        known = [e for e in memo if e <= epoch]
        if known:
            e0, position = max(known), 0
            cursors = memo[e0]
        else:
            e0, position, cursors = seg_epoch, seg_position, segment.cursors
        while e0 < epoch:
            sizes = _step_sizes(self.samples - position, step, drop_last)
            cursors = advance(segment, cursors, sizes)
            e0, position = e0 + 1, 0
            memo[e0] = cursors
        return cursors

    def _segment_at(self, epoch: int, position: int) -> tuple[int, tuple[int, int, Segment]]:
        """The weight segment in force at (epoch, position), with its index."""
        index = 0
        for i, (e, p, _) in enumerate(self.segments):
            if (e, p) <= (epoch, position):
                index = i
        return index, self.segments[index]

    def _default_steps(self) -> tuple[int, bool]:
        """(step size, drop_last) of the last planned pass, else of direct iteration."""
        return self._last_steps or (self.topology().world_size * _ITER_BATCH, False)

    def epoch_plan(
        self,
        batch_size: int,
        drop_last: bool = False,
        start: int | Mapping[str, Any] | None = None,
        world_size: int | None = None,
        epoch: int | None = None,
    ) -> MixturePlan:
        """An epoch's steps for every rank.

        Args:
            batch_size: positions per rank per step.
            drop_last: drop the tail that does not fill a whole step.
            start: None: the loaded resume point, else the epoch's start; an int: that
                position of a run with these steps; a mapping: ``{"position", "cursors"}``
                (and optionally ``"shares"``, ``"segment"``: the weights in force) as
                `plan_start` gives it (and ``"windows"``: the sources' windows, which then
                replace this mixture's).
            world_size: ranks (None: ``topology()``).
            epoch: the epoch (None: the current one); where its cursors start, for an int start.
        """
        epoch = self._epoch if epoch is None else epoch
        world = world_size or self.topology().world_size
        self._last_steps = (world * batch_size, bool(drop_last))
        if start is None:
            start = self._resume
        if start is None or isinstance(start, int):
            position = int(start or 0)
            segment = self._segment_at(epoch, position)[1][2]
            cursors = self.epoch_start(epoch, batch_size, drop_last, world)
            step = world * batch_size
            if position % step and position != self.samples:
                raise ConfigError(
                    f"MixedDataset.epoch_plan: start {position} is not a step boundary"
                    f" ({world} x {batch_size})"
                )
            cursors = advance(segment, cursors, [step] * (position // step))
        else:
            position, cursors = int(start["position"]), tuple(start["cursors"])
            if "windows" in start:
                self._use_windows(dict(zip(self.names, start["windows"], strict=True)))
            if "shares" in start:
                segment = Segment(tuple(start["shares"]), tuple(start["segment"]))
            else:
                segment = self._segment_at(epoch, position)[1][2]
        return MixturePlan(
            self.samples, world, batch_size, drop_last, position, cursors, segment, self._orders
        )

    def plan_start(self, mixture_plan: MixturePlan, steps: int = 0) -> dict[str, Any]:
        """What a worker needs to rebuild ``mixture_plan`` from ``steps`` steps in (JSON):
        position, cursors, the weights in force and the sources' windows (a persistent
        worker's copy of this mixture may predate a weight change or a loaded state)."""
        return {
            "position": mixture_plan.position_after(steps),
            "cursors": list(mixture_plan.cursors_at(steps)),
            "shares": list(mixture_plan.segment.shares),
            "segment": list(mixture_plan.segment.cursors),
            "windows": [self.windows[n] for n in self.names],
        }

    def follow_plan(self, plan: MixturePlan, rank: int, first: int = 0, stride: int = 1) -> None:
        """Make each source's read-ahead follow its items in ``rank``'s batches of ``plan`` at
        steps ``first, first + stride, ...`` (a loader worker's share), then in the next
        epoch's, from where this plan leaves the cursors."""
        ref = weakref.ref(self)  # kept by the sources: must not keep the mixture alive
        start = self.plan_start(plan)
        for s, name in enumerate(self.names):
            source = self.sources[name]
            share = _SourceShare(ref, plan.batch_size, plan.drop_last, plan.world_size, start)
            source.follow(_SourceReads(share, rank, first, stride, s, source.epoch))

    @property
    def resume_pending(self) -> bool:
        """Whether ``load_state_dict`` set a start no pass has taken yet."""
        return self._resume is not None

    def take_resume_position(self) -> dict[str, Any] | None:
        """The start of the next pass (a loaded resume point or None: the epoch's start), which
        the dataset then forgets."""
        start, self._resume = self._resume, None
        return start

    # -- resume state ---------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a state must agree on: the sources (each one's fingerprint), seed, shuffle,
        samples per epoch and the order's version."""
        return {
            "order": ORDER_VERSION,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "samples": self.samples,
            "sources": {n: s.fingerprint() for n, s in self.sources.items()},
        }

    def state_dict(self) -> dict[str, Any]:
        """Where the next pass starts (see the module docstring for the shape)."""
        if self._resume is not None:
            position, cursors = self._resume["position"], tuple(self._resume["cursors"])
        else:
            step, drop_last = self._default_steps()
            position, cursors = 0, self.epoch_start(self._epoch, step, drop_last, 1)
        return self.make_state(self._epoch, position, cursors)

    def plan_state(self, epoch: int, mixture_plan: MixturePlan, steps: int) -> dict[str, Any]:
        """The state after ``steps`` steps of ``mixture_plan`` (an epoch's last step names the
        next epoch at position 0, whose start it records)."""
        cursors = mixture_plan.cursors_at(steps)
        position = mixture_plan.position_after(steps)
        if steps >= mixture_plan.num_steps:
            step = mixture_plan.world_size * mixture_plan.batch_size
            index = self._segment_at(epoch + 1, 0)[0]
            if self.segments[index][2] == mixture_plan.segment:
                key = (step, mixture_plan.drop_last, index)
                self._epoch_starts.setdefault(key, {})[epoch + 1] = cursors
            epoch, position = epoch + 1, 0
        return self.make_state(epoch, position, cursors)

    def make_state(self, epoch: int, position: int, cursors: tuple[int, ...]) -> dict[str, Any]:
        """A JSON-serialisable state of this mixture at (epoch, position) with these cursors."""
        segments = [(e, p, seg.shares, seg.cursors) for e, p, seg in self.segments]
        windows = [self.windows[n] for n in self.names]
        return make_mixture_state(
            self.fingerprint(), self.names, epoch, position, cursors, segments, windows
        )

    def load_state_dict(self, state: Mapping[str, Any], what: str = "MixedDataset") -> None:
        """Continue ``state`` at the next pass: its epoch, position and cursors; its weight
        segments, plus one more from its position if this mixture's weights differ; its
        sources' windows (a version-1 state, which predates them: each source's own
        ``shuffle_block``, as that version shuffled).

        Raises:
            StateError: not a mixture state, another version, sources that differ (named), other
                seed/shuffle/samples (both sides shown), windows other than an explicit
                ``shuffle_block={...}`` (named), or malformed values.
        """
        where = f"{what}.load_state_dict"
        epoch, position, cursors, loaded, saved_windows = check_mixture_state(
            state, self.fingerprint(), self.names, where
        )
        if saved_windows is None:
            windows = {n: self._own_window(n) for n in self.names}
        else:
            windows = dict(zip(self.names, saved_windows, strict=True))
            missing = [n for n in self.names if self._in_blocks(n) and windows[n] is None]
            if missing:
                raise StateError(f"{where}: the state has no shuffle window for {missing}")
            windows = {n: self._window_or_none(n, w) for n, w in windows.items()}
        if self._explicit_windows and windows != self.windows:
            differ = [
                f"{n!r}: state {windows[n]}, now {self.windows[n]}"
                for n in self.names
                if windows[n] != self.windows[n]
            ]
            raise StateError(
                f"{where}: the state's shuffle windows differ from shuffle_block=: "
                + "; ".join(differ)
                + " (a source's window decides its permutation; pass shuffle_block=None to"
                " continue with the state's)"
            )
        current = self.segments[-1][2].shares
        if position >= self.samples:
            epoch, position = epoch + 1, 0
        self.segments = [(e, p, Segment(w, c)) for e, p, w, c in loaded]
        self._epoch_starts = {}
        if current != self.segments[-1][2].shares:
            self._add_segment(epoch, position, Segment(current, cursors))
        self._epoch = epoch
        self._resume = {"position": position, "cursors": list(cursors)}
        self._use_windows(windows)

    def _add_segment(self, epoch: int, position: int, segment: Segment) -> None:
        self.segments = [s for s in self.segments if (s[0], s[1]) < (epoch, position)]
        self.segments.append((epoch, position, segment))
        self._epoch_starts = {}

    # -- access ---------------------------------------------------------------------------------

    def get_batch(self, batch: MixedBatch, strings: str = "list") -> dict[str, Any]:
        """Columnar rows of a mixed batch, in its order: every source's shards taken as in its
        ``get_batch`` (`streaming.take_sources`: one sort of the whole batch by source and
        shard), the rows put in place by one merge.

        Raises:
            FormatError: a shard is missing, corrupt or fails its checksum.
        """
        n = len(batch)
        table = self._table
        if table is None:
            table = self._table = ShardTable([self.sources[name] for name in self.names])
        taken = take_sources(table, batch.by_source, strings)  # one sort, one merge
        if len(taken) == 1 and np.array_equal(taken[0][0], np.arange(n)):
            out = dict(taken[0][1])  # one shard of one source holds the batch, in order
        else:
            out = merge_parts(self.sources[self.names[0]].schema, taken, n)
        if self.source_column is not None:
            out[self.source_column] = self._source_names(batch.source, strings)
        return out

    def get_samples(self, batch: MixedBatch) -> list[Any]:
        """Samples of a mixed batch as iteration yields them (each source's transform applied;
        ``source_column`` added to dict samples), in the batch's order."""
        out: list[Any] = [None] * len(batch)
        for s, where, ids in batch.parts():
            name = self.names[s]
            samples = self.sources[name].get_samples(ids)
            for i, sample in zip(where.tolist(), samples, strict=True):
                if self.source_column is not None and isinstance(sample, dict):
                    sample[self.source_column] = name
                out[i] = sample
        return out

    def _source_names(self, source: np.ndarray, strings: str) -> Any:
        if strings == "list":
            return [self.names[s] for s in source.tolist()]
        encoded = [n.encode() for n in self.names]
        lengths = np.array([len(e) for e in encoded], np.int64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        blob = np.frombuffer(b"".join(encoded), np.uint8)
        return BlobColumn.gather(True, blob, starts[source], lengths[source])

    def __iter__(self) -> Iterator[Any]:
        """This rank's samples of the current epoch (steps of ``world_size x 256`` positions,
        from a loaded resume point); inside a DataLoader worker, steps ``id, id + n, ...``."""
        worker = torch.utils.data.get_worker_info()
        start = self._resume if worker is not None else self.take_resume_position()
        mixture_plan = self.epoch_plan(_ITER_BATCH, start=start)
        first, stride = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        rank = self.topology().rank
        self.follow_plan(mixture_plan, rank, first, stride)
        for batch in mixture_plan.batches(rank, first, stride):
            yield from self.get_samples(batch)

    # -- helpers --------------------------------------------------------------------------------

    def _source_settings(self, name: str) -> ShuffleSettings:
        source = self.sources[name]
        settings = source.shuffle_settings
        tag = int.from_bytes(name.encode(), "little")
        seed = derive_key(self.seed, tag, settings.seed) >> 1
        block = self.windows[name] or settings.block
        return ShuffleSettings(self.shuffle or settings.shuffle, seed, settings.mode, block)

    def _in_blocks(self, name: str) -> bool:
        """Whether source ``name`` is shuffled in block mode (what a window applies to)."""
        settings = self.sources[name].shuffle_settings
        return (self.shuffle or settings.shuffle) and settings.mode == "block"

    def _own_window(self, name: str) -> int | None:
        """Source ``name``'s own ``shuffle_block`` (None: not shuffled in block mode)."""
        return self.sources[name].shuffle_settings.block if self._in_blocks(name) else None

    def _window_or_none(self, name: str, window: int | None) -> int | None:
        return window if self._in_blocks(name) else None

    def _initial_windows(
        self, shuffle_block: int | Mapping[str, int] | None, weights: tuple[int, ...]
    ) -> dict[str, int | None]:
        """The windows of a new run (see "Windows" in the module docstring).

        Raises:
            ConfigError: a budget that is not an int >= 1, a mapping that does not give every
                source an int >= 1.
        """
        if isinstance(shuffle_block, Mapping):
            unknown = sorted(set(shuffle_block) - set(self.names))
            missing = [n for n in self.names if n not in shuffle_block]
            bad = {n: w for n, w in shuffle_block.items() if not _is_window(w)}
            if unknown or missing or bad:
                raise ConfigError(
                    "MixedDataset shuffle_block: {name: shards >= 1} for every source"
                    f" {list(self.names)}; unknown {unknown}, missing {missing}, bad {bad}"
                )
            return {n: self._window_or_none(n, shuffle_block[n]) for n in self.names}
        blocks = [n for n in self.names if self._in_blocks(n)]
        if shuffle_block is None:
            if not blocks:
                return dict.fromkeys(self.names)
            shuffle_block = max(self.sources[n].shuffle_settings.block for n in blocks)
        elif not _is_window(shuffle_block):
            raise ConfigError(
                "MixedDataset shuffle_block: an int >= 1 (shards for all sources together),"
                f" {{name: shards}}, or None; got {shuffle_block!r}"
            )
        windows: dict[str, int | None] = dict.fromkeys(self.names)
        if blocks:
            of = dict(zip(self.names, weights, strict=True))
            split = source_windows(shuffle_block, [of[n] for n in blocks])
            windows.update(zip(blocks, split, strict=True))
        return windows

    def _use_windows(self, windows: Mapping[str, int | None]) -> None:
        """Shuffle the sources within these windows from now on (their orders rebuilt)."""
        if dict(windows) == self.windows:
            return
        self.windows = dict(windows)
        self._orders = [
            SourceOrder(s.item_sizes(), self._source_settings(n)) for n, s in self.sources.items()
        ]

    def __getstate__(self) -> dict[str, Any]:
        # Evaluated source orders are per process: a spawned worker builds its own.
        state = self.__dict__.copy()
        state["_orders"] = [SourceOrder(o.sizes, o.settings) for o in self._orders]
        state["_table"] = None
        return state


@dataclass(frozen=True)
class _SourceShare:
    """The shape and start of a mixed pass, with the mixture held weakly."""

    mixture: weakref.ReferenceType[MixedDataset]
    batch_size: int
    drop_last: bool
    world_size: int
    start: dict[str, Any]


@dataclass(frozen=True)
class _SourceReads:
    """A source's reads in a mixed pass (for its read-ahead): its items in ``rank``'s batches
    at steps ``first, first + stride, ...`` of this epoch, then of the next; only for the
    source's own epoch (a source in a mixture never changes it)."""

    share: _SourceShare
    rank: int
    first: int
    stride: int
    source: int
    epoch: int

    def __call__(self, epoch: int) -> Iterator[np.ndarray]:
        mixture = self.share.mixture()
        if mixture is None or epoch != self.epoch:
            return iter(())
        shape = (self.share.batch_size, self.share.drop_last)
        # Plans of their own: each source's read-ahead walks them at its own pace.
        mine = mixture.epoch_plan(*shape, self.share.start, self.share.world_size)
        return self._walk(mine)

    def _walk(self, mine: MixturePlan) -> Iterator[np.ndarray]:
        for step in range(self.first, mine.num_steps, self.stride):
            yield mine.source_ids(self.rank, step, self.source)
        following = MixturePlan(
            mine.samples,
            mine.world_size,
            mine.batch_size,
            mine.drop_last,
            0,
            mine.cursors_at(mine.num_steps),
            mine.segment,
            mine.sources,
        )
        for step in range(self.first, following.num_steps, self.stride):
            yield following.source_ids(self.rank, step, self.source)


def _is_window(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _step_sizes(positions: int, step: int, drop_last: bool) -> list[int]:
    full, tail = divmod(positions, step)
    return [step] * full + ([tail] if tail and not drop_last else [])


def _common_schema(sources: Mapping[str, StreamingDataset]) -> Schema:
    """The schema every source returns, or FormatError naming the first difference."""
    items = list(sources.items())
    first_name, first = items[0]
    for name, source in items[1:]:
        if source.schema == first.schema:
            continue
        a, b = first.schema, source.schema
        only_a = [c for c in a.names if c not in b.names]
        only_b = [c for c in b.names if c not in a.names]
        typed = [
            f"{c}: {_describe(a.column(c))} vs {_describe(b.column(c))}"
            for c in a.names
            if c in b.names and a.column(c) != b.column(c)
        ]
        parts = []
        if only_a:
            parts.append(f"only {first_name!r} has {only_a}")
        if only_b:
            parts.append(f"only {name!r} has {only_b}")
        if typed:
            parts.append("types differ: " + "; ".join(typed))
        if not parts:
            parts.append(f"column order {list(a.names)} vs {list(b.names)}")
        raise FormatError(
            f"MixedDataset: sources {first_name!r} ({first.url}) and {name!r} ({source.url})"
            f" return different columns: {', '.join(parts)}; select the common columns with"
            " StreamingDataset(url, columns=[...])"
        )
    return first.schema


def _describe(col: Column) -> str:
    if col.kind != "ndarray":
        return col.kind
    shape = ["?" if d is None else d for d in (col.shape or ())]
    return f"ndarray {col.dtype} {shape}"
