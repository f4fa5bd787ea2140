"""Weighted mixtures of sources: which source fills each position of a step, as pure arithmetic.

A mixture of S sources draws from source ``s`` its ``k``-th item for ``k = 0, 1, 2, ...``; a
*cursor* is how many items a source has given so far. The run is a sequence of *steps* (one
global batch: ``world_size x batch_size`` positions; an epoch's last step may be smaller);
`apportion` decides how many positions of a step each source fills, `split_step` how those
are divided among the ranks' slices, `interleave` where each source's items sit inside a slice.
`MixturePlan` composes them into the steps of one epoch, and `SourceOrder` turns a source's
draws into its item ids (its own epochs, each a new permutation).

Weights are exact: `shares` turns them into integers in the same ratio (a float is read as the
decimal it prints as, so ``0.2`` is exactly one fifth); every quantity below is an exact integer,
so every process computes the same steps and ``w B`` means what the user wrote.

Invariants (tested):

- **Exact per step**: a step of ``B`` positions gives source ``s`` either ``floor(w_s B)`` or
  ``ceil(w_s B)`` of them, and the counts sum to ``B``.
- **Exact over the run**: after every step, each source's count since the weights were set is
  within one item of ``w_s`` x the positions since then (its *lag*, ``ideal - count``, stays in
  (-1, 1)) — for a run's steps: one global batch size, an epoch's shorter last step. Steps are
  apportioned greedily by earliest deadline: a source gets one of the step's extra positions
  (beyond the floors) when, without it, its lag would reach 1 soonest at this step size. After
  a resume on another batch size (or sizes changing at every step) steps stay exact and the
  lag stays within (-2, 2): hypothesis found 1.014 after a resume from 135 to 1 positions.
- **Exact per rank**: a rank's slice of ``b`` positions of a step gets ``floor(n_s b / B)`` or
  ``ceil(n_s b / B)`` of source ``s``'s ``n_s`` positions (the same greedy, within the step).
- **Each source keeps its own epochs**: draw ``k`` of a source of ``n`` items is position
  ``k mod n`` of that source's epoch ``k // n`` — no item repeats within a source epoch, and a
  source that runs out starts its next epoch (a new permutation) independently of the others.
- **Pure**: a step depends only on the cursors at its start, the weights and the cursors where
  they were set (together: the lags), and the step's size. Nothing depends on how many workers
  or ranks compute it, so a state of ``(position, cursors, segment)`` resumes on any topology.

A rank (or a worker) computes the counts of every step of its epoch (O(S) integer work per step,
no data touched) and the rank split, interleave and item ids only of the steps it builds.
"""

from __future__ import annotations

import functools
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from streamload.errors import ConfigError
from streamload.plan.order import EpochOrder, ShuffleSettings
from streamload.plan.partition import EpochPlan

_NEVER = 1 << 62
#: A rank's share of a step: per source its count and first draw, then the source of each
#: position and each source's positions (`MixturePlan._row`).
_Row = tuple[tuple[int, ...], tuple[int, ...], np.ndarray, tuple[np.ndarray, ...]]
_WALK_MEMORY = 16  # steps whose cursors a plan remembers (a worker's stride, a prefetch window)


def shares(weights: Sequence[float], what: str = "MixedDataset weights") -> tuple[int, ...]:
    """Positive weights as coprime integers in exactly the same ratio.

    A float counts as the shortest decimal that prints as it (``0.3`` is 3/10, not the binary
    fraction nearest to it), so the shares of ``0.5, 0.3, 0.2`` are ``5, 3, 2``.

    Raises:
        ConfigError: no weights, or a weight that is not a finite number > 0 (named by index).
    """
    if not weights:
        raise ConfigError(f"{what}: at least one weight is needed")
    exact = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ConfigError(f"{what}: weight {i} must be a finite number > 0, got {w!r}")
        exact.append(Fraction(w) if isinstance(w, int) else Fraction(repr(float(w))))
    denominator = math.lcm(*(f.denominator for f in exact))
    ints = [int(f * denominator) for f in exact]
    common = math.gcd(*ints)
    return tuple(i // common for i in ints)


def apportion(
    weights: Sequence[int], total: int, lags: Sequence[int], size: int
) -> tuple[list[int], list[int]]:
    """How many of ``size`` positions each source fills, and the lags after them.

    Args:
        weights: non-negative integer weights summing to ``total``.
        total: the weights' sum (the scale of the lags).
        lags: per source, ``total`` x (ideal count - actual count) before this step; they sum
            to 0 and each lies in ``(-total, total)``.
        size: positions to fill.

    Returns:
        ``(counts, lags)``: counts sum to ``size``, each ``floor(w size / total)`` or the ceiling;
        the lags after the step (same scale).
    """
    counts, new_lags = _apportion(tuple(weights), total, tuple(lags), size)
    return list(counts), list(new_lags)


@functools.lru_cache(maxsize=1024)
def _apportion(
    weights: tuple[int, ...], total: int, lags: tuple[int, ...], size: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`apportion`, remembered: a run's steps revisit few (lags, size) states (the lags of
    weights summing to ``total`` take at most ``total ** (S - 1)`` values, and one step size
    recurs), so a loader's per-step arithmetic is mostly a lookup."""
    n = len(weights)
    base = [w * size // total for w in weights]
    rem = [w * size % total for w in weights]
    extras = size - sum(base)
    deficit = [lags[s] + rem[s] for s in range(n)]
    counts = base
    if extras:

        def urgency(s: int) -> tuple[int, int, int]:
            # Steps of this size until the lag would reach 1 without an extra (0: this one).
            r = rem[s]
            due = -(-(total - lags[s]) // r) - 1 if r else _NEVER
            return (max(due, 0), -deficit[s], s)

        # An extra is only given where it keeps the lag above -1 (deficit > 0); the earliest
        # deadlines go first.
        eligible = sorted((s for s in range(n) if deficit[s] > 0 and rem[s]), key=urgency)
        if len(eligible) < extras:  # never seen in tests; keep the step exact regardless
            rest = sorted((s for s in range(n) if s not in eligible and rem[s]), key=urgency)
            eligible += rest
        counts = base[:]
        for s in eligible[:extras]:
            counts[s] += 1
    new_lags = tuple(deficit[s] - total * (counts[s] - base[s]) for s in range(n))
    return tuple(counts), new_lags


def source_windows(budget: int, weights: Sequence[int]) -> list[int]:
    """Shuffle windows (shards each) for sources of these integer weights, apportioned from a
    budget of ``budget`` shards: the largest remainders of ``budget x w / total`` (ties: the
    first source), then every source at least one shard, taken back from the largest windows
    while they are above one. The windows sum to ``max(budget, len(weights))``.

    Raises:
        ConfigError: a budget < 1, no weights or a weight < 1.
    """
    if budget < 1 or not weights or min(weights) < 1:
        raise ConfigError(
            f"mixture windows: a budget >= 1 and weights >= 1, got {budget}, {weights}"
        )
    total = sum(weights)
    windows = [budget * w // total for w in weights]
    by_remainder = sorted(range(len(weights)), key=lambda s: (-(budget * weights[s] % total), s))
    for s in by_remainder[: budget - sum(windows)]:
        windows[s] += 1
    for s in range(len(windows)):
        if windows[s] == 0:
            windows[s] = 1
            largest = max(range(len(windows)), key=lambda t: (windows[t], -t))
            if windows[largest] > 1 and sum(windows) > budget:
                windows[largest] -= 1
    return windows


def split_step(counts: Sequence[int], slices: Sequence[int], first: int = 0) -> np.ndarray:
    """Divide a step's per-source ``counts`` among slices of the given sizes (rank by rank).

    Slice ``r`` gets ``floor(n_s b_r / B)`` or the ceiling of each source's ``n_s`` (``B`` =
    the step's size, ``b_r`` the slice's). Slices are apportioned in the order ``first, first +
    1, ...`` (wrapping), so which rank receives the odd items rotates from step to step.

    Returns:
        int64 array ``[len(slices), len(counts)]``; rows sum to the slice sizes, columns to
        the counts.
    """
    size = sum(slices)
    out = np.zeros((len(slices), len(counts)), dtype=np.int64)
    order = [r for r in ((first + i) % len(slices) for i in range(len(slices))) if slices[r]]
    lags = [0] * len(counts)
    left = np.array(counts, dtype=np.int64)
    for r in order[:-1]:
        row, lags = apportion(counts, size, lags, slices[r])
        out[r] = row
        left -= out[r]
    if order:  # the last slice takes exactly what is left (what the greedy would give it)
        out[order[-1]] = left
    return out


def interleave(counts: Sequence[int]) -> np.ndarray:
    """Which source each position of a slice holds: source ``s``'s ``c_s`` items spread evenly
    (its ``t``-th item at relative time ``(t + 1/2) / c_s``, merged; ties by source index), so
    any prefix of the slice — a micro-batch — is itself close to the slice's proportions."""
    sizes = np.asarray(counts, dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.empty(0, np.int64)
    sources = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    starts = np.cumsum(sizes) - sizes
    t = np.arange(total, dtype=np.float64) - starts[sources]  # index within its source
    times = (t + 0.5) / sizes[sources]
    return sources[np.argsort(times, kind="stable")]  # ties: source order (stable)


@dataclass(frozen=True)
class Segment:
    """A stretch of the run with fixed weights: from where they were set, with every source's
    cursor at that point (the lags of any later point follow from its cursors)."""

    shares: tuple[int, ...]
    cursors: tuple[int, ...]

    @property
    def total(self) -> int:
        """The shares' sum: the scale of the lags."""
        return sum(self.shares)

    def lags(self, cursors: Sequence[int]) -> list[int]:
        """Per source, ``total`` x (ideal - actual) items drawn since the segment started."""
        drawn = [k - k0 for k, k0 in zip(cursors, self.cursors, strict=True)]
        positions = sum(drawn)
        total = self.total
        return [w * positions - total * d for w, d in zip(self.shares, drawn, strict=True)]


def advance(segment: Segment, cursors: Sequence[int], sizes: Sequence[int]) -> tuple[int, ...]:
    """The cursors after steps of the given sizes (pure)."""
    now = list(cursors)
    lags = segment.lags(now)
    for size in sizes:
        counts, lags = apportion(segment.shares, segment.total, lags, size)
        now = [k + c for k, c in zip(now, counts, strict=True)]
    return tuple(now)


class SourceOrder:
    """Draws of one source -> its item ids: draw ``k`` is position ``k mod n`` of the source's
    epoch ``k // n`` (an `EpochOrder` over its items per shard; a few kept)."""

    def __init__(self, sizes: Sequence[int] | np.ndarray, settings: ShuffleSettings) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.settings = settings
        self.n = int(self.sizes.sum())
        self._orders: OrderedDict[int, EpochOrder] = OrderedDict()
        self._lock = threading.Lock()  # the reader and a read-ahead thread share it
        self._last: tuple[int, EpochOrder] | None = None  # the epoch asked for last

    def epoch(self, e: int) -> EpochOrder:
        """The order of this source's epoch ``e``."""
        last = self._last  # one read of a tuple: no lock needed
        if last is not None and last[0] == e:
            return last[1]
        with self._lock:
            order = self._orders.get(e)
            if order is None:
                order = self._orders[e] = EpochOrder(self.sizes, self.settings, e)
                while len(self._orders) > 3:
                    self._orders.popitem(last=False)
            else:
                self._orders.move_to_end(e)
            self._last = (e, order)
            return order

    def ids(self, first: int, count: int) -> np.ndarray:
        """Item ids of draws ``[first, first + count)`` (crossing source epochs as needed)."""
        e, p = divmod(first, self.n)
        if p + count <= self.n:  # inside one source epoch (a fresh array)
            last = self._last  # `epoch`'s own first test, without the call
            order = last[1] if last is not None and last[0] == e else self.epoch(e)
            return order.ids(p, p + count)
        out = np.empty(count, np.int64)
        done = 0
        while done < count:
            e, p = divmod(first + done, self.n)
            take = min(count - done, self.n - p)
            out[done : done + take] = self.epoch(e).ids(p, p + take)
            done += take
        return out


class MixedBatch:
    """One rank's batch of a mixture step: for each position, its source (``source``) and
    item id (``ids``), held as ``(source, positions, ids)`` per source present, in source
    order (``by_source``: how the batch is read). Built by `MixturePlan.batch` (one per batch:
    a plain class, no dataclass machinery per instance)."""

    __slots__ = ("_ids", "by_source", "source")

    def __init__(
        self, source: np.ndarray, by_source: tuple[tuple[int, np.ndarray, np.ndarray], ...]
    ) -> None:
        self.source = source  # int64 source index per position
        self.by_source = by_source
        self._ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.source)

    @property
    def ids(self) -> np.ndarray:
        """int64 item id (within its source) per position (built on first use)."""
        if self._ids is None:
            out = np.empty(len(self.source), np.int64)
            for _, where, ids in self.by_source:
                out[where] = ids
            self._ids = out
        return self._ids

    def parts(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """``(source, positions, ids)`` per source present, in source order."""
        return iter(self.by_source)


@functools.lru_cache(maxsize=256)
def _layout(counts: tuple[int, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """`interleave` of ``counts`` and each source's positions in it, read-only (a run's
    slices take few distinct counts: ``floor``/``ceil`` of each share)."""
    order = interleave(counts)
    order.flags.writeable = False
    wheres = []
    for s in range(len(counts)):
        where = np.flatnonzero(order == s)
        where.flags.writeable = False
        wheres.append(where)
    return order, tuple(wheres)


class _Positions:
    """An "order" that is its own positions: lets `EpochPlan` cut an epoch into steps."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, _ = index.indices(self.n)
        return np.arange(start, stop, dtype=np.int64)


class MixturePlan:
    """One epoch of a mixture cut into steps for every rank (the `plan.EpochPlan` interface,
    with `MixedBatch` items instead of id arrays).

    Args:
        samples: positions in the epoch.
        world_size, batch_size, drop_last: as for `plan.EpochPlan`.
        start: the epoch position this plan starts from.
        cursors: each source's cursor at ``start``.
        segment: the weights in force and where they were set.
        sources: each source's `SourceOrder` (None: counts only, for state and tests).

    Raises:
        ConfigError: as `plan.EpochPlan`; cursors that do not match the sources.
    """

    def __init__(
        self,
        samples: int,
        world_size: int,
        batch_size: int,
        drop_last: bool,
        start: int,
        cursors: Sequence[int],
        segment: Segment,
        sources: Sequence[SourceOrder] | None = None,
    ) -> None:
        self.samples = samples
        self.steps = EpochPlan(_Positions(samples), world_size, batch_size, drop_last, start)  # type: ignore[arg-type]
        if len(cursors) != len(segment.shares) or (
            sources is not None and len(sources) != len(cursors)
        ):
            raise ConfigError("mixture plan: one cursor and one weight per source")
        self.segment = segment
        self.sources = sources
        self.start_cursors = tuple(int(k) for k in cursors)
        # The counts walk: cursors (and lags) at the start of recently walked steps; steps are
        # read mostly in order (a worker's, the trainer's cursor), each a few times.
        self._walked: OrderedDict[int, tuple[tuple[int, ...], tuple[int, ...]]] = OrderedDict()
        self._start = (self.start_cursors, tuple(segment.lags(self.start_cursors)))
        self._shares, self._total = tuple(segment.shares), segment.total
        self._step = self.steps.world_size * self.steps.batch_size  # positions of a full step
        self._splits: OrderedDict[int, tuple[list[tuple[int, ...]], tuple[int, ...]]]
        self._splits = OrderedDict()
        # (step, row) -> (counts, first draws, source per position, positions per source)
        self._rows: OrderedDict[tuple[int, int], _Row] = OrderedDict()

    # -- the EpochPlan interface ----------------------------------------------------------------

    @property
    def world_size(self) -> int:
        return self.steps.world_size

    @property
    def batch_size(self) -> int:
        return self.steps.batch_size

    @property
    def drop_last(self) -> bool:
        return self.steps.drop_last

    @property
    def start(self) -> int:
        return self.steps.start

    @property
    def num_steps(self) -> int:
        return self.steps.num_steps

    @property
    def padding(self) -> int:
        return self.steps.padding

    @property
    def end(self) -> int:
        return self.steps.end

    def position_after(self, steps: int) -> int:
        return self.steps.position_after(steps)

    def padded(self, rank: int) -> int:
        return self.steps.padded(rank)

    def batches(self, rank: int, first: int = 0, stride: int = 1) -> Iterator[MixedBatch]:
        """``rank``'s batches at steps ``first, first + stride, ...``."""
        for step in range(first, self.num_steps, stride):
            yield self.batch(rank, step)

    # -- mixture specifics ----------------------------------------------------------------------

    def step_size(self, step: int) -> int:
        """Positions of step ``step`` over all ranks (padding not counted)."""
        return self.steps.position_after(step + 1) - self.steps.position_after(step)

    def cursors_at(self, step: int) -> tuple[int, ...]:
        """Every source's cursor at the start of ``step`` (``num_steps``: after the last)."""
        return self._walk(min(max(step, 0), self.num_steps))[0]

    def _walk(self, step: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(cursors, lags)`` at the start of ``step`` (in ``[0, num_steps]``), walked from
        the latest known step before it."""
        walked = self._walked
        known = walked.get(step)
        if known is not None:
            return known
        if step == 0:
            return self._start
        # Usually the step before is known (steps are read in order); step 0 always is.
        base = step - 1 if step - 1 in walked else max((k for k in walked if k <= step), default=0)
        cursors, lags = walked[base] if base else self._start
        full, shares, total = self.steps.full_steps, self._shares, self._total
        for at in range(base, step):
            size = self._step if at < full else self.step_size(at)
            counts, lags = _apportion(shares, total, lags, size)
            cursors = tuple(map(operator.add, cursors, counts))
            if step - at <= _WALK_MEMORY:
                walked[at + 1] = (cursors, lags)
        while len(walked) > _WALK_MEMORY:  # the last few (step 0 is kept apart)
            walked.popitem(last=False)
        return cursors, lags

    def _counts(self, step: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(per-source counts of step, cursors at its start)`` (``step < num_steps``); the
        cursors after it are remembered, so the next step starts from them."""
        cursors, lags = self._walk(step)
        size = self._step if step < self.steps.full_steps else self.step_size(step)
        counts, after = _apportion(self._shares, self._total, lags, size)
        walked = self._walked
        if step + 1 not in walked:
            walked[step + 1] = (tuple(map(operator.add, cursors, counts)), after)
            if len(walked) > _WALK_MEMORY:
                walked.popitem(last=False)
        return counts, cursors

    def step_counts(self, step: int) -> list[int]:
        """Per source, the positions step ``step`` gives it (all ranks)."""
        before = self.cursors_at(step)
        return [a - b for a, b in zip(self.cursors_at(step + 1), before, strict=True)]

    def rank_split(self, step: int) -> tuple[np.ndarray, tuple[int, ...]]:
        """``([ranks, sources] counts, cursors at the step's start)`` of step ``step``
        (remembered for a few steps: a step's batch, its stats and its read-ahead ask again)."""
        rows, cursors = self._split(step)
        return np.array(rows, dtype=np.int64), cursors

    def _split(self, step: int) -> tuple[list[tuple[int, ...]], tuple[int, ...]]:
        """`rank_split` as a list of per-rank count tuples (remembered for a few steps)."""
        known = self._splits.get(step)
        if known is None:
            counts, cursors = self._counts(step)
            if self.steps.world_size == 1:  # one rank takes the whole step
                rows = [counts]
            else:
                slices = self._slices(step)
                split = split_step(counts, slices, first=step % len(slices))
                rows = [tuple(r) for r in split.tolist()]
            known = self._splits[step] = (rows, cursors)
            while len(self._splits) > 4:
                self._splits.popitem(last=False)
        return known

    def _row(self, rank: int, step: int) -> _Row:
        """``rank``'s share of step ``step`` (a padded rank repeats the tail item of rank
        ``rank % tail``): per source its count and first draw, the source per position and
        each source's positions (remembered for a few (step, rank)s)."""
        known = self._rows.get((step, rank))
        if known is not None:
            return known
        rows, cursors = self._split(step)
        row = rank if sum(rows[rank]) else rank % self.steps.tail
        counts = rows[row]
        firsts = cursors  # row 0: each source's next draw; later rows after those before
        for before in rows[:row]:
            firsts = tuple(k + c for k, c in zip(firsts, before, strict=True))
        order, wheres = _layout(counts)
        known = self._rows[(step, rank)] = (counts, firsts, order, wheres)
        while len(self._rows) > 8:
            self._rows.popitem(last=False)
        return known

    def _slices(self, step: int) -> list[int]:
        """Real positions of each rank at ``step`` (the tail splits unevenly; padded ranks: 0)."""
        if step < self.steps.full_steps:
            return [self.batch_size] * self.world_size
        tail, world = self.steps.tail, self.world_size
        share, extra = divmod(tail, world)
        return [share + (1 if r < extra else 0) for r in range(world)]

    def sources_of(self, rank: int, step: int) -> np.ndarray:
        """The source of each position of ``rank``'s batch at ``step`` (no ids evaluated)."""
        return self._row(rank, step)[2]

    def source_counts(self, rank: int, step: int) -> tuple[int, ...]:
        """Per source, the positions of ``rank``'s batch at ``step`` it fills."""
        if self.steps.world_size == 1:  # one rank takes the whole step: no split to read
            return self._counts(step)[0]
        rows = self._split(step)[0]
        counts = rows[rank]
        return counts if sum(counts) else rows[rank % self.steps.tail]

    def source_ids(self, rank: int, step: int, source: int) -> np.ndarray:
        """The item ids of ``source`` in ``rank``'s batch at ``step``, in batch order (only
        that source's ids are evaluated: what its read-ahead walks)."""
        counts, firsts, _, _ = self._row(rank, step)
        if not counts[source] or self.sources is None:
            return np.empty(0, np.int64)
        return self.sources[source].ids(firsts[source], counts[source])

    def batch(self, rank: int, step: int) -> MixedBatch:
        """``rank``'s batch at ``step``: the source and item id of each position.

        Raises:
            IndexError: step or rank out of range.
            ConfigError: the plan was made without source orders.
        """
        steps = self.steps
        if not 0 <= rank < steps.world_size:
            raise IndexError(f"rank {rank} outside [0, {steps.world_size})")
        if not 0 <= step < steps.num_steps:
            raise IndexError(f"step {step} outside [0, {steps.num_steps})")
        if self.sources is None:
            raise ConfigError("mixture plan: made without source orders (counts only)")
        counts, firsts, order, wheres = self._row(rank, step)
        sources = self.sources
        parts = [
            (s, wheres[s], sources[s].ids(firsts[s], count))
            for s, count in enumerate(counts)
            if count
        ]
        return MixedBatch(order, tuple(parts))


def check_weights(names: Sequence[str], weights: Mapping[str, float] | None) -> list[float]:
    """The weights of ``names`` in order (None: equal weights).

    Raises:
        ConfigError: a weight for an unknown source, or a source without a weight.
    """
    if weights is None:
        return [1.0] * len(names)
    unknown = sorted(set(weights) - set(names))
    missing = [n for n in names if n not in weights]
    if unknown or missing:
        raise ConfigError(
            "MixedDataset weights: "
            + "; ".join(
                part
                for part in (
                    f"no source named {unknown}" if unknown else "",
                    f"no weight for {missing}" if missing else "",
                )
                if part
            )
            + f" (sources: {list(names)})"
        )
    return [weights[n] for n in names]
