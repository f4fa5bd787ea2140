"""StreamingDataset: a sharded dataset as a torch IterableDataset with random access.

The dataset is its validated index.json, its resolved settings (`DatasetSettings`, from one
`streamload.config.load` at construction) and this process's open shards (`OpenShards`: readers
opened lazily per process, never carried across ``fork``, checksums verified once per file
version, remote shards pinned in the node's disk cache).

Order: ``sample_order(epoch)`` is an `streamload.plan.order.EpochOrder`, a pure function of
(items per shard, shuffle settings, seed, epoch) that no rank or worker count changes, evaluated
lazily: no process ever holds an array of the epoch. ``epoch_plan`` cuts it into per-rank steps
(`streamload.plan.partition.EpochPlan`) for this process's `topology` from a start position
(``load_state_dict`` sets one for the next pass). Iterating yields this rank's share (steps of
one sample per rank, read a chunk at a time); inside a DataLoader worker, every
``num_workers``-th sample of it from ``worker_id``, which is exactly the num_workers=0 order when
the DataLoader takes one sample per worker turn (``batch_size=1``); with larger batches each
sample is still yielded exactly once.

Subsets: ``subset=`` (a count, a fraction or id ranges; `streamload.plan.subset`) makes the
dataset that part of itself: ``len``, ids, ``ds[i]``, ``get_batch`` and the plan all number the
subset's items (virtual shards inside the real ones), mapped to real rows only when read.

Read-ahead of remote shards follows what this process will read (`follow_plan`: the pass's
batches, then the next epoch's), registered by whoever starts the pass: a loader at
num_workers=0, each loader worker, or iteration.

Token streams (``tokens=`` with ``block_size=``, or ``seq_len=`` and ``pack=True``): the items
are fixed-length blocks of the concatenated token stream or packed rows
(`streamload.dataset.tokens`) instead of samples; ``len``, ``ds[i]``, ``get_batch``, the order
and the resume state then count items, so everything above the dataset treats them as samples.

Ids in ``get_batch`` are grouped by shard (searchsorted on cumulative counts), each shard does one
columnar ``take``, and the parts are scattered back into the order of ``ids``; conventions per
column kind are those of `streamload.shards.arrow.reader.ArrowShardReader.take`.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.utils.data
import xxhash

from streamload import config
from streamload.cache import index_copy
from streamload.dataset.open_shards import OpenShards
from streamload.dataset.remote import ReadSource, check_cache
from streamload.dataset.settings import DatasetSettings
from streamload.dataset.token_blocks import offsets as offsets_of
from streamload.dataset.tokens import TokenItems, TokenSettings, flat_tokens
from streamload.dataset.topology import Topology, topology
from streamload.errors import ConfigError, FormatError
from streamload.format.blobs import BlobColumn
from streamload.format.index import INDEX_NAME, DatasetIndex, ShardInfo, read_index
from streamload.format.schema import Column, Schema
from streamload.plan.order import EpochOrder, ShuffleSettings
from streamload.plan.partition import EpochPlan
from streamload.plan.state import check_state, fingerprint, make_state
from streamload.plan.subset import Subset, make_subset
from streamload.shards.arrow.reader import FlatArray
from streamload.shards.lmdb import env as lmdb_env
from streamload.shards.reader import ShardReader
from streamload.store import filesystem as store

_ITER_CHUNK = 256


def _shards_digest(shards: tuple[ShardInfo, ...], items: Any = None) -> str:
    """The resume fingerprint's identity of an index: a hash of its shard list (and, for token
    datasets, of what an item is: blocks and packed rows of other sizes are other items)."""
    listed: list[Any] = [(s.name, s.num_samples, s.bytes, s.checksum) for s in shards]
    if items is not None:
        listed.append(items)
    return xxhash.xxh3_64_hexdigest(json.dumps(listed).encode())


class StreamingDataset(torch.utils.data.IterableDataset):
    """A sharded dataset: iterate it (torch IterableDataset) or index it (``ds[i]``, ``get_batch``)."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        shuffle: bool = False,
        seed: int = 0,
        columns: list[str] | tuple[str, ...] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        verify: bool | None = None,
        *,
        shuffle_mode: str | None = None,
        shuffle_block: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        subset: int | float | list[tuple[int, int]] | None = None,
        tokens: str | None = None,
        block_size: int | None = None,
        seq_len: int | None = None,
        pack: bool = False,
    ) -> None:
        """Open a dataset (reads and validates index.json; shards open on first use).

        Args:
            url: dataset root: local path, ``file://``, ``memory://``, ``s3://``, ``gs://`` or
                ``http(s)://`` URL; or an LMDB environment streamload did not write
                (``{"key", "value"}`` rows, see `streamload.shards.lmdb.env`).
            cache_dir: shard cache directory for remote datasets (None: config ``cache_dir``);
                local and ``memory://`` data is read in place, never copied.
            cache_limit: byte limit of that cache (None: config ``cache_limit``).
            shuffle: iterate in a seeded permutation instead of index order.
            seed: shuffle seed (int >= 0).
            columns: columns to return (None: all); results keep schema order.
            transform: applied to each sample by ``ds[i]`` and iteration (not by ``get_batch``).
            storage_options: passed to fsspec.
            verify: check shard checksums on first open; None takes config ``verify_local``.
            shuffle_mode: ``"full"`` (a uniform permutation) or ``"block"`` (shuffled shard
                order, samples shuffled within windows of ``shuffle_block`` shards: bounded
                read-ahead and cache); None takes config ``shuffle_mode``.
            shuffle_block: shards per window in block mode; None takes config ``shuffle_block``.
            rank, world_size: this process's place in a distributed job (both or neither);
                None: from torch.distributed when initialized, else RANK/WORLD_SIZE, at each
                pass (see `streamload.dataset.topology.topology`).
            subset: read only part of the dataset: a count ``N`` or a fraction (a fixed subset
                chosen with ``seed``, spread over the shards in proportion to their sizes) or
                a list of ``(start, stop)`` id ranges; ``len`` and ids then number the subset.
            tokens: read this 1-d integer array column as a token stream: items become
                ``block_size`` blocks of the concatenated documents (``{tokens: [block_size]}``),
                or, with ``seq_len`` and ``pack=True``, rows of packed documents
                (``{tokens, "segment_ids", "positions"}``, each ``[seq_len]``); see
                `streamload.dataset.tokens`.
            block_size: tokens per block (with ``tokens``).
            seq_len: tokens per packed row (with ``tokens`` and ``pack=True``).
            pack: pack whole documents into rows of ``seq_len`` (long documents are split).

        Raises:
            FormatError: index.json missing (incomplete dataset) or invalid; unknown column.
            ConfigError: a bad argument or setting (shuffle, seed, columns, transform,
                storage_options, verify, cache_dir, cache_limit, shuffle_mode, shuffle_block,
                rank/world_size, subset, or any setting from the environment or config file),
                whatever the URL: every setting is parsed here, remote or not; bad token
                settings (``tokens`` not a 1-d integer array column, sizes, ``columns`` or
                ``subset`` given).
            CacheError: remote dataset: cache_dir unwritable or cache_limit below the working set.
        """
        super().__init__()
        _check_arguments(shuffle, columns, transform)
        cfg = config.load(
            cache_dir=cache_dir,
            cache_limit=cache_limit,
            verify_local=verify,
            shuffle_mode=shuffle_mode,
            shuffle_block=shuffle_block,
        )
        self.settings = DatasetSettings.from_config(cfg)
        shuffle_settings = ShuffleSettings(bool(shuffle), seed, cfg.shuffle_mode, cfg.shuffle_block)
        self._shuffle_settings = shuffle_settings.validated()
        if rank is not None or world_size is not None:
            topology(rank, world_size)  # fail at construction, not at the first pass
        self._rank_arg = rank
        self._world_size_arg = world_size
        self._resume: int | None = None
        self._digest: str | None = None
        self._url = os.fspath(url)
        self._fs, self._root = store.resolve(url, storage_options, self.settings.retry)
        verify = self.settings.verify
        keep = None
        if store.is_remote(self._fs):  # index.json once per node, kept in the shard cache
            keep = functools.partial(
                index_copy.node_copy,
                self.settings.cache_dir,
                self._url,
                cache_limit=self.settings.cache_limit,
            )
        try:
            self._index = read_index(
                self._fs, store.join(self._root, INDEX_NAME), f"{self._url}/{INDEX_NAME}", keep
            )
        except (FormatError, OSError):
            # No index.json: maybe an LMDB environment streamload did not write.
            env_cache = None
            if store.is_remote(self._fs):
                env_cache = (self.settings.cache_dir, self.settings.cache_limit)
            env = lmdb_env.detect(self._fs, self._root, self._url, env_cache)
            if env is None:
                raise
            self._root, self._index = env
            verify = False  # nothing to verify against: the environment has no checksums
        self._tokens: TokenItems | None = None
        if tokens is not None:
            token_settings = TokenSettings(tokens, block_size, seq_len, bool(pack))
            token_settings.validated(self._index.schema)
            if columns is not None:
                raise ConfigError(
                    "StreamingDataset(tokens=...): columns= does not apply; a token dataset"
                    " reads only its token column"
                )
            columns = [tokens]
            self._tokens = TokenItems(token_settings, self._index, self._flat_tokens)
        elif block_size is not None or seq_len is not None or pack:
            raise ConfigError(
                "StreamingDataset: block_size=, seq_len= and pack= read a token column; name it"
                " with tokens='tokens'"
            )
        self._selected = self._index.schema.select(columns)
        self._subset: Subset | None = None
        if subset is not None and tokens is not None:
            raise ConfigError(
                "StreamingDataset(tokens=...): subset= does not apply to a token stream (it"
                " selects samples, not blocks or packed rows)"
            )
        if subset is not None:
            sizes = [info.num_samples for info in self._index.shards]
            self._subset = make_subset(sizes, subset, seed, "StreamingDataset subset")
        self._orders: OrderedDict[tuple[int, ShuffleSettings], EpochOrder] = OrderedDict()
        self._following: _Share | Callable[[int], Iterable[np.ndarray]] | None = None
        self._generation = 0
        self.shuffle = shuffle_settings.shuffle
        self.seed = seed
        self.transform = transform
        self._epoch = 0
        self._shards = OpenShards(
            self._url,
            self._fs,
            self._root,
            self._index,
            self._selected.names,
            self.settings,
            verify,
        )
        self._remote_shards()  # a remote dataset checks its cache settings now

    # -- metadata ---------------------------------------------------------------------------

    @property
    def index(self) -> DatasetIndex:
        """The validated index.json."""
        return self._index

    @property
    def schema(self) -> Schema:
        """The schema of the returned columns (the projection of the dataset schema; for a
        token stream, the schema of one block or packed row)."""
        if self._tokens is not None:
            return self._tokens.schema()
        return self._selected

    @property
    def tokens(self) -> TokenItems | None:
        """The token stream's items (blocks or packed rows), or None for a sample dataset."""
        return self._tokens

    def item_sizes(self) -> np.ndarray:
        """Items per shard, in index order: what the plan orders (samples; the subset's virtual
        shards, parts of real ones; for a token stream, the blocks or packed rows each shard
        starts)."""
        if self._tokens is not None:
            return self._tokens.items_per_shard()
        if self._subset is not None:
            return self._subset.sizes
        return np.fromiter(
            (info.num_samples for info in self._index.shards), np.int64, len(self._index.shards)
        )

    @property
    def item_offsets(self) -> np.ndarray:
        """``[0, cumsum(items per shard)]``: shard k holds item ids ``[o[k], o[k + 1])``
        (samples; for a token stream, the blocks or rows the shard starts)."""
        if self._tokens is not None:
            return self._tokens.item_offsets()
        return self._index.sample_offsets

    def known_item_offsets(self) -> np.ndarray | None:
        """``item_offsets`` if known without reading shards (None while a packed token stream
        has not counted its rows yet: counting reads every shard's document lengths)."""
        if self._tokens is not None and not self._tokens.counted:
            return None
        return self.item_offsets

    def item_nbytes(self) -> float:
        """Average bytes of one item as the loader receives it (the largest per-shard average
        for samples; exact for token streams): what ring sizing plans for."""
        if self._tokens is not None:
            return float(self._tokens.item_nbytes())
        shards = self._index.shards
        return max((s.bytes / max(s.num_samples, 1) for s in shards), default=0.0)

    @property
    def num_shards(self) -> int:
        """Number of shards."""
        return len(self._index.shards)

    @property
    def cache_dir(self) -> str:
        """The shard cache directory remote shards go through (resolved at construction)."""
        return self.settings.cache_dir

    @property
    def cache_limit(self) -> int:
        """The byte limit of that cache (resolved at construction)."""
        return self.settings.cache_limit

    @property
    def verify(self) -> bool:
        """Whether shard checksums are checked on first open."""
        return self._shards.verify

    @property
    def url(self) -> str:
        """The dataset URL as given."""
        return self._url

    def __len__(self) -> int:
        if self._tokens is not None:
            return len(self._tokens)
        return len(self._subset) if self._subset is not None else self._index.num_samples

    @property
    def subset(self) -> Subset | None:
        """The subset this dataset reads (None: all of it)."""
        return self._subset

    def __repr__(self) -> str:
        return (
            f"StreamingDataset({self._url!r}, samples={len(self)}, shards={self.num_shards},"
            f" columns={list(self._selected.names)}, shuffle={self.shuffle}, seed={self.seed})"
        )

    # -- order --------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch whose order iteration uses."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (changes the shuffle permutation); a resume position loaded for
        another epoch is dropped.

        Raises:
            ConfigError: not an int >= 0.
        """
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ConfigError(
                f"StreamingDataset.set_epoch: epoch must be an int >= 0, got {epoch!r}"
            )
        if epoch != self._epoch:
            self._resume = None
        self._epoch = epoch

    @property
    def shuffle_settings(self) -> ShuffleSettings:
        """Shuffle, seed, mode and block size (part of the resume fingerprint); follows later
        changes of the ``shuffle``/``seed`` attributes, as ``sample_order`` always has."""
        current = self._shuffle_settings
        if (current.shuffle, current.seed) != (bool(self.shuffle), self.seed):
            current = ShuffleSettings(bool(self.shuffle), self.seed, current.mode, current.block)
            self._shuffle_settings = current.validated()
        return current

    def sample_order(self, epoch: int | None = None) -> EpochOrder:
        """The global order of ``epoch`` (default: the current one), the same for every rank and
        worker count: a lazy sequence of ids (``order[a:b]``, ``order.at(positions)``); see
        `streamload.plan.order.EpochOrder`."""
        epoch = self._epoch if epoch is None else epoch
        key = (epoch, self.shuffle_settings)
        order = self._orders.get(key)
        if order is None:
            order = self._orders[key] = EpochOrder(self.item_sizes(), key[1], epoch)
            while len(self._orders) > 2:  # this epoch and the next (read-ahead): chunk caches
                self._orders.popitem(last=False)
        return order

    def topology(self) -> Topology:
        """This process's rank and world size (explicit arguments, torch.distributed, or env).

        Raises:
            ConfigError: a bad RANK/WORLD_SIZE environment.
        """
        return topology(self._rank_arg, self._world_size_arg)

    def epoch_plan(
        self,
        batch_size: int,
        drop_last: bool = False,
        start: int | None = None,
        world_size: int | None = None,
        epoch: int | None = None,
    ) -> EpochPlan:
        """An epoch's steps for every rank.

        Args:
            batch_size: ids per rank per step.
            drop_last: drop the tail that does not fill a whole step.
            start: global position to start from; None: the position ``load_state_dict`` set
                (0 if none).
            world_size: ranks (None: ``topology()``).
            epoch: the epoch (None: the current one).
        """
        if start is None:
            start = self._resume or 0
        world_size = world_size or self.topology().world_size
        order = self.sample_order(epoch)
        return EpochPlan(order, world_size, batch_size, drop_last, start)

    def plan_start(self, plan: EpochPlan) -> int:
        """What a worker needs, besides the plan's shape, to rebuild ``plan``: its start."""
        return plan.start

    def plan_state(self, epoch: int, plan: EpochPlan, steps: int) -> dict[str, Any]:
        """The resume state after ``steps`` steps of ``plan`` (epoch ``epoch``); after its last
        step, the next epoch at position 0."""
        position = plan.position_after(steps)
        if steps >= plan.num_steps:
            epoch, position = epoch + 1, 0
        return make_state(self.fingerprint(), epoch, position)

    def follow_plan(self, plan: EpochPlan, rank: int, first: int = 0, stride: int = 1) -> None:
        """Make this process's read-ahead follow ``rank``'s batches of ``plan`` at steps
        ``first, first + stride, ...`` (a loader worker's share), then the next epoch's from its
        start. Each call starts a new read plan (the next shard opened re-synchronises)."""
        self.follow(
            _Share(
                self._epoch,
                plan.start,
                plan.batch_size,
                plan.drop_last,
                plan.world_size,
                rank,
                first,
                stride,
            )
        )

    def follow(self, reads: _Share | Callable[[int], Iterable[np.ndarray]]) -> None:
        """Make this process's read-ahead follow ``reads``: a share of this dataset's plan, or
        epoch -> the ids this process will read that epoch, in order, as a lazy iterable of
        chunks (this dataset's ids; a callable must not hold the dataset: it is kept with it)."""
        self._following = reads
        self._generation += 1

    @property
    def resume_pending(self) -> bool:
        """Whether ``load_state_dict`` set a start position no pass has taken yet."""
        return self._resume is not None

    def take_resume_position(self) -> int:
        """The start position of the next pass, which then forgets it (a later pass of the same
        epoch starts at 0, as a fresh DataLoader iterator does)."""
        position, self._resume = self._resume or 0, None
        return position

    # -- resume state ----------------------------------------------------------------------------

    def fingerprint(self) -> dict[str, Any]:
        """What a resume state must agree on: index digest, sample count, shuffle settings."""
        if self._digest is None:
            self._digest = _shards_digest(self._index.shards, self._items_description())
        spec = self._subset.spec if self._subset is not None else None
        return fingerprint(len(self), self._digest, self.shuffle_settings, spec)

    def _items_description(self) -> Any:
        """What one plan item is, when it is not one sample (token blocks, packed rows)."""
        return self._tokens.settings.describe() if self._tokens is not None else None

    def state_dict(self) -> dict[str, Any]:
        """Where the next pass starts: ``{"version", "fingerprint", "epoch", "position"}``
        (JSON-serialisable). A StreamLoader's ``state_dict`` has the same shape and counts the
        batches its user received."""
        return make_state(self.fingerprint(), self._epoch, self._resume or 0)

    def load_state_dict(self, state: dict[str, Any], *, allow_append: bool = False) -> None:
        """Make the next pass continue ``state``: select its epoch and start at its position.

        A position at the end of the epoch starts the next epoch.

        Args:
            state: what ``state_dict`` returned.
            allow_append: also accept a state saved on an earlier version of this dataset that
                shards were appended to since (its shards a prefix of this index's): the pass
                continues the same epoch at the same position of this version's order. Without
                shuffling that is exactly once (appended samples come last); with shuffling the
                order of the interrupted epoch is recomputed over the larger dataset, so in that
                epoch up to ``position`` samples may repeat and as many be skipped; from the next
                epoch on every sample is seen exactly once again.

        Raises:
            StateError: another dataset, other shuffle settings, an unknown version or a
                malformed state (both sides shown).
        """
        if allow_append:
            state = self._rebased(state)
        epoch, position = check_state(state, self.fingerprint(), "StreamingDataset.load_state_dict")
        if position >= len(self) and len(self) > 0:
            epoch, position = epoch + 1, 0
        self._epoch = epoch
        self._resume = position

    def _rebased(self, state: Any) -> Any:
        """``state`` with this version's fingerprint when it was saved on an earlier version of
        this dataset (same settings, its shards a prefix of ours); else ``state`` unchanged."""
        fp = self.fingerprint()
        saved = state.get("fingerprint") if isinstance(state, dict) else None
        if not isinstance(saved, dict) or saved == fp:
            return state
        if {k: v for k, v in saved.items() if k not in ("num_samples", "index")} != {
            k: v for k, v in fp.items() if k not in ("num_samples", "index")
        }:
            return state
        offsets = self._index.sample_offsets
        count = saved.get("num_samples")
        k = int(np.searchsorted(offsets, count)) if isinstance(count, int) else -1
        if not 0 <= k < len(offsets) or offsets[k] != count:
            return state
        if _shards_digest(self._index.shards[:k], self._items_description()) != saved.get("index"):
            return state
        return {**state, "fingerprint": fp}

    # -- access -------------------------------------------------------------------------------

    def __getitem__(self, i: int) -> Any:
        """Sample ``i`` (negative counts from the end), transformed if a transform is set.

        Raises:
            IndexError: out of range.
            FormatError: the shard is missing, corrupt or fails its checksum.
        """
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index out of range for dataset of {n} samples")
        if self._tokens is not None:
            batch = self._tokens.get_batch(np.array([i], np.int64))
            item = {name: values[0] for name, values in batch.items()}
            return self.transform(item) if self.transform is not None else item
        if self._subset is not None:
            i = int(self._subset.to_real(np.array([i]))[0])
        offsets = self._index.sample_offsets
        k = int(np.searchsorted(offsets, i, "right")) - 1
        sample = self._reader(k).get(i - int(offsets[k]))
        return self.transform(sample) if self.transform is not None else sample

    def get_batch(self, ids: np.ndarray, strings: str = "list") -> dict[str, Any]:
        """Columnar rows ``ids`` (any order, duplicates allowed), no transform.

        Args:
            ids: sample ids of this dataset (of its subset, if it has one).
            strings: ``"list"`` (str/bytes columns as lists) or ``"blob"`` (as one
                ``collate.BlobColumn`` each: what the loader's workers ship).

        Returns:
            ``{column: values}`` in schema order; conventions per kind as in ``ArrowShardReader.take``.

        Raises:
            IndexError: an id is outside ``[0, len(self))``.
            FormatError: a shard is missing, corrupt or fails its checksum.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        n = len(ids)
        bounds = (int(ids.min()), int(ids.max())) if n else (0, 0)
        if n and (bounds[0] < 0 or bounds[1] >= len(self)):
            raise IndexError(f"sample ids out of range [0, {len(self)})")
        if strings not in ("list", "blob"):
            raise ValueError(f"get_batch strings: 'list' or 'blob', got {strings!r}")
        if self._tokens is not None:
            return self._tokens.get_batch(ids)
        if n == 0:
            return {col.name: _empty_column(col, strings) for col in self._selected.columns}
        parts = self.take_parts(ids, strings, bounds)
        if len(parts) == 1:
            return parts[0][1]
        return merge_parts(self._selected, parts, n)

    def take_parts(
        self, ids: np.ndarray, strings: str = "list", bounds: tuple[int, int] | None = None
    ) -> list[tuple[Any, dict[str, Any]]]:
        """``get_batch`` before its rows are put back in order: one ``(positions, columns)``
        per shard, in shard order, where row ``j`` of ``columns`` is ``ids[positions[j]]``
        (positions is ``slice(None)`` when one shard holds them all). A mixture merges every
        source's parts at once. ``bounds``: ``(ids.min(), ids.max())`` if already known.

        Raises:
            FormatError: a shard is missing, corrupt or fails its checksum.
        """
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if self._tokens is not None:  # blocks and packed rows span shards: assembled whole
            return [(slice(None), self._tokens.get_batch(ids))]
        if self._subset is not None:
            ids = self._subset.to_real(ids)
            bounds = None
        offsets = self._index.sample_offsets
        lo, hi = bounds if bounds is not None else (int(ids.min()), int(ids.max()))
        first = int(offsets.searchsorted(lo, "right")) - 1
        if hi < offsets[first + 1]:  # shards hold consecutive ids: one shard holds them all
            return [(slice(None), self._reader(first).take(ids - offsets[first], strings))]
        shard_of = offsets.searchsorted(ids, "right")
        shard_of -= 1
        order = np.argsort(shard_of, kind="stable")
        shards = shard_of[order]
        rows = ids[order]
        rows -= offsets[shards]  # row in its shard, grouped by shard
        cuts = [0, *(np.flatnonzero(shards[1:] != shards[:-1]) + 1).tolist(), len(ids)]
        return [
            (order[a:b], self._reader(k).take(rows[a:b], strings))
            for a, b, k in zip(cuts[:-1], cuts[1:], shards[cuts[:-1]].tolist(), strict=True)
        ]

    def __iter__(self) -> Iterator[Any]:
        """This rank's samples of ``sample_order()`` (one per rank per step, from the position
        ``load_state_dict`` set); inside a DataLoader worker, this worker's share of those.

        Samples are read with ``get_batch`` in chunks of a few hundred ids; a sample's fixed-shape
        arrays are rows of that chunk's array (writable, disjoint from every other sample's).
        """
        worker = torch.utils.data.get_worker_info()
        start = self._resume if worker is not None else self.take_resume_position()
        plan = self.epoch_plan(1, start=start or 0)
        rank = self.topology().rank
        first, stride = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        world = plan.world_size
        self.follow(_Share(self._epoch, plan.start, 1, False, world, rank, first, stride, True))
        for ids in _iteration_chunks(plan, rank, first, stride):
            yield from self.get_samples(ids)

    def get_samples(self, ids: np.ndarray) -> list[Any]:
        """Samples ``ids`` as iteration yields them: per-sample dicts (transformed if a
        transform is set) built from one ``get_batch``.

        Raises:
            IndexError: an id is outside ``[0, len(self))``.
            FormatError: a shard is missing, corrupt or fails its checksum.
        """
        batch = self.get_batch(ids)
        schema = self.schema
        rows = [_rows(col, batch[col.name]) for col in schema.columns]
        samples = [
            dict(zip(schema.names, values, strict=True)) for values in zip(*rows, strict=True)
        ]
        if self.transform is not None:
            return [self.transform(sample) for sample in samples]
        return samples

    # -- shards -------------------------------------------------------------------------------

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An unpickled filesystem (spawned worker) forgets its retry policy: give it back.
        self.__dict__.update(state)
        store.attach_policy(self._fs, self.settings.retry)

    def check_cache_for_workers(self, num_workers: int) -> None:
        """Refuse a shard cache too small for ``num_workers`` loader workers reading this dataset
        on each local rank (nothing to check for data read in place).

        Raises:
            CacheError: ``cache_limit`` cannot hold the shards those workers may pin at once.
        """
        if not store.reads_in_place(self._fs):
            check_cache(self._index, self.settings, num_workers)

    def __getstate__(self) -> dict[str, Any]:
        # A spawned worker registers what it reads itself; evaluated orders are per process.
        state = self.__dict__.copy()
        state["_following"] = None
        state["_orders"] = OrderedDict()
        state.pop("_source", None)  # closures of this process's dataset
        return state

    def _reader(self, k: int) -> ShardReader:
        return self._shards.reader(k, self._epoch, self._read_source())

    def _remote_shards(self) -> Any:
        """This process's `streamload.cache.readahead.RemoteShards`; None if read in place."""
        return self._shards.remote(self._read_source())

    def _read_source(self) -> ReadSource:
        source = self.__dict__.get("_source")
        if source is None:
            source = self._source = _weak_reads_of(self)
        return source

    def _reads(self, epoch: int) -> Iterator[np.ndarray]:
        """The real ids this process will read in ``epoch``, chunk by chunk, in order: what the
        registered pass reads (`follow`), else this process's share of iteration. The chunks
        come from plans made here: the generator never refers back to this dataset."""
        starts = self._index.sample_offsets[:-1]
        offsets = self.known_item_offsets()
        if offsets is None:  # packed rows not counted yet (that reads every shard): index order
            return iter((starts,))
        following = self._following
        if following is None:
            worker = torch.utils.data.get_worker_info()
            first, stride = (worker.id, worker.num_workers) if worker is not None else (0, 1)
            world, rank = self.topology().world_size, self.topology().rank
            following = _Share(epoch, 0, 1, False, world, rank, first, stride, True)
        if isinstance(following, _Share):
            chunks = following.chunks(self, epoch)
        else:
            chunks = iter(following(epoch))
        if self._tokens is not None:  # items (blocks, packed rows) -> their shards' first samples
            tokens = self._tokens
            spans = (
                None
                if tokens.packed
                else (offsets_of(tokens.shard_tokens()), tokens.settings.length)
            )
            return _item_shard_samples(chunks, offsets, starts, spans)
        return _real_ids(chunks, self._subset)

    def _flat_tokens(self, k: int) -> FlatArray:
        """Shard ``k``'s token column as one flat stream (views of the mapped shard)."""
        assert self._tokens is not None  # only token datasets read flat token columns
        return flat_tokens(self._reader(k), self._tokens.settings.column)


def _check_arguments(shuffle: object, columns: object, transform: object) -> None:
    """Refuse argument types the settings do not parse (at construction, whatever the URL).

    Raises:
        ConfigError: shuffle is not a bool, columns not a name or a list of names, transform
            not callable.
    """
    if not isinstance(shuffle, (bool, np.bool_)):
        raise ConfigError(f"StreamingDataset shuffle: must be True or False, got {shuffle!r}")
    if columns is not None and not (
        isinstance(columns, str)
        or (isinstance(columns, (list, tuple)) and all(isinstance(c, str) for c in columns))
    ):
        raise ConfigError(
            f"StreamingDataset columns: must be a column name or a list of names, got {columns!r}"
        )
    if transform is not None and not callable(transform):
        raise ConfigError(
            f"StreamingDataset transform: must be a callable (sample -> sample), got {transform!r}"
        )


@dataclass(frozen=True)
class _Share:
    """What one process reads of a plan: ``rank``'s steps ``first, first + stride, ...`` of
    ``epoch`` from ``start`` (then of the next epoch from 0); ``iteration``: one sample per rank
    per step, read a chunk of steps at a time."""

    epoch: int
    start: int
    batch_size: int
    drop_last: bool
    world_size: int
    rank: int
    first: int
    stride: int
    iteration: bool = False

    def chunks(self, dataset: StreamingDataset, epoch: int) -> Iterator[np.ndarray]:
        if epoch not in (self.epoch, self.epoch + 1):
            return iter(())
        start = self.start if epoch == self.epoch else 0
        # A plan of its own: the read-ahead thread walks it while the reader reads.
        plan = dataset.epoch_plan(
            self.batch_size, self.drop_last, start, self.world_size, epoch=epoch
        )
        if self.iteration:
            return _iteration_chunks(plan, self.rank, self.first, self.stride)
        return plan.batches(self.rank, self.first, self.stride)


def _real_ids(chunks: Iterator[np.ndarray], subset: Subset | None) -> Iterator[np.ndarray]:
    for chunk in chunks:
        yield subset.to_real(chunk) if subset is not None else chunk


def _item_shard_samples(
    chunks: Iterator[np.ndarray],
    item_offsets: np.ndarray,
    sample_starts: np.ndarray,
    spans: tuple[np.ndarray, int] | None,
) -> Iterator[np.ndarray]:
    """Item ids (token blocks or packed rows) as sample ids the read-ahead maps to shards: the
    first sample of every shard an item reads. A packed row lies in the shard that starts it;
    a block of ``spans = (token offsets, block size)`` tokens reads every shard from the one
    holding its first token to the one holding its last."""
    for chunk in chunks:
        if spans is None:
            yield sample_starts[np.searchsorted(item_offsets, chunk, "right") - 1]
            continue
        token_offsets, size = spans
        first = np.searchsorted(token_offsets, chunk * size, "right") - 1
        last = np.searchsorted(token_offsets, (chunk + 1) * size - 1, "right") - 1
        counts = last - first + 1
        steps = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        yield sample_starts[np.repeat(first, counts) + steps]


def _iteration_chunks(plan: EpochPlan, rank: int, first: int, stride: int) -> Iterator[np.ndarray]:
    """``rank``'s ids of a one-sample-per-rank plan at steps ``first, first + stride, ...``, a few
    hundred at a time."""
    span = _ITER_CHUNK * stride
    for begin in range(first, plan.num_steps, span):
        positions = plan.rank_positions(rank, begin, begin + span, stride)
        if len(positions):
            yield plan.order[positions]


def _weak_reads_of(dataset: StreamingDataset) -> ReadSource:
    """What ``dataset`` reads in this process, without a reference to it: the read-ahead thread
    holds this, and must not keep the dataset alive."""
    ref = weakref.ref(dataset)

    def reads(epoch: int) -> Iterable[np.ndarray]:
        ds = ref()
        return () if ds is None else ds._reads(epoch)

    def generation() -> int:
        ds = ref()
        return -1 if ds is None else ds._generation

    return ReadSource(reads, generation)


class ShardTable:
    """The shards of several datasets (a mixture's sources) numbered as one sequence: source
    ``s``'s real id ``i`` is ``id_base[s] + i`` and its shard ``k`` is ``shard_base[s] + k``,
    so one ``searchsorted`` over ``offsets`` places a whole mixed batch. Token datasets (whose
    items span shards) have no place in it (``id_base`` None). O(shards) memory, like the
    indexes it is built from (a dataset's index is fixed when it is opened)."""

    def __init__(self, datasets: Sequence[StreamingDataset]) -> None:
        self.datasets = tuple(datasets)
        self.id_base: list[int | None] = []
        #: per global shard: (its dataset, its shard in that dataset)
        self.owners: list[tuple[StreamingDataset, int]] = []
        starts, ids = [], 0
        for ds in self.datasets:
            if ds._tokens is not None:
                self.id_base.append(None)
                continue
            local = ds._index.sample_offsets
            self.id_base.append(ids)
            starts.append(local[:-1] + ids)
            self.owners.extend((ds, k) for k in range(len(local) - 1))
            ids += int(local[-1])
        self.offsets = np.concatenate([*starts, np.array([ids], np.int64)])


def take_sources(
    table: ShardTable,
    parts: Sequence[tuple[int, np.ndarray, np.ndarray]],
    strings: str = "list",
) -> list[tuple[Any, dict[str, Any]]]:
    """The rows of several datasets' ids at once (a mixed batch's sources): ``parts`` are
    ``(dataset index in table, positions, ids)``; the result is one ``(positions, columns)``
    per shard touched (as `StreamingDataset.take_parts` gives, positions in the batch), for
    `merge_parts`. Every id is placed in its shard of the ``table`` by one ``searchsorted`` and
    one sort over the whole batch, so the cost per batch is that of one dataset's
    ``take_parts`` plus one ``take`` per shard, however many datasets; token datasets (whose
    items span shards) go through their own ``take_parts``.

    Raises:
        FormatError: a shard is missing, corrupt or fails its checksum.
    """
    out: list[tuple[Any, dict[str, Any]]] = []
    n = sum(len(ids) for _, _, ids in parts)
    every = np.empty(n, np.int64)  # ids in the table's numbering, source after source
    place = np.empty(n, np.int64)  # and their positions in the batch
    done = 0
    for s, where, ids in parts:
        dataset, base = table.datasets[s], table.id_base[s]
        if base is None:
            for positions, columns in dataset.take_parts(ids, strings):
                out.append((where[positions], columns))
            continue
        real = dataset._subset.to_real(ids) if dataset._subset is not None else ids
        end = done + len(ids)
        np.add(real, base, out=every[done:end])
        place[done:end] = where
        done = end
    if not done:
        return out
    every, place = every[:done], place[:done]
    shard = table.offsets.searchsorted(every, "right")
    shard -= 1
    order = np.argsort(shard, kind="stable")
    shard = shard[order]
    row = every[order]
    row -= table.offsets[shard]  # row in its shard, grouped by shard
    place = place[order]
    bounds = [0, *(np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist(), done]
    owners = table.owners
    for a, b, k in zip(bounds[:-1], bounds[1:], shard[bounds[:-1]].tolist(), strict=True):
        dataset, local = owners[k]
        out.append((place[a:b], dataset._reader(local).take(row[a:b], strings)))
    return out


def merge_parts(
    schema: Schema, taken: list[tuple[np.ndarray, dict[str, Any]]], n: int
) -> dict[str, Any]:
    """Columns of ``n`` rows from parts (one per shard, or per source of a mixture): row ``j``
    of part ``p`` goes to row ``taken[p][0][j]``; conventions per kind as ``get_batch``'s."""
    if len(taken) == 1 and np.array_equal(taken[0][0], np.arange(n)):
        return dict(taken[0][1])
    out: dict[str, Any] = {}
    for col in schema.columns:
        first_part = taken[0][1][col.name]
        if isinstance(first_part, np.ndarray):
            merged = np.empty((n, *first_part.shape[1:]), first_part.dtype)
            for positions, columns in taken:
                merged[positions] = columns[col.name]
            out[col.name] = merged
        elif isinstance(first_part, BlobColumn):
            blobs = [columns[col.name] for _, columns in taken]
            out[col.name] = BlobColumn.scatter(blobs, [p for p, _ in taken], n)
        else:
            objects = np.empty(n, dtype=object)
            for positions, columns in taken:
                holder = np.empty(len(positions), dtype=object)
                holder[:] = columns[col.name]
                objects[positions] = holder
            out[col.name] = objects.tolist()
    return out


def _empty_column(col: Column, strings: str = "list") -> Any:
    if strings == "blob" and col.kind in ("str", "bytes"):
        return BlobColumn.empty(col.kind == "str")
    if col.kind in ("str", "bytes") or col.uses_var_layout:
        return []
    return np.empty((0, *col.row_shape), dtype=col.numpy_dtype)


def _rows(col: Column, values: Any) -> list[Any]:
    """A get_batch column as per-sample values, matching what ``ds[i]`` returns."""
    if col.kind in ("int", "float", "bool"):
        return values.tolist()
    # Fixed arrays: rows of the chunk's own freshly copied array (writable, never the mapping);
    # shape [] gives numpy scalars; str/bytes/variable arrays are already per-row objects.
    return list(values)
