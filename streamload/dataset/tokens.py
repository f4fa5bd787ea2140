"""Token streams: a token corpus read as fixed-length blocks or as packed rows.

A token corpus is a dataset with a 1-d integer array column (``tokens``), one document per row.
``StreamingDataset(url, tokens="tokens", block_size=L)`` or ``(..., seq_len=L, pack=True)``
replaces the dataset's items (its samples) with the items made here; everything above the
dataset (the plan's order, rank partition, resume positions, the loader's workers) sees only item
ids and item counts per shard, so blocks and packed rows are shuffled, partitioned, resumed and
mixed exactly like samples.

- **blocks** (``TokenItems`` in blocks mode): the concatenated stream of every document of every
  shard in index order, cut into ``N // L`` blocks (`streamload.dataset.token_blocks`). Item ``b`` is block ``b``;
  it belongs to the shard of its first token. Tokens per shard come from index.json (format
  version 2 records them), counted from the shard itself where missing; nothing else is read up
  front. A batch ``[B, L]`` is copied straight from the mapped record batches: one memcpy per
  (block, record batch) piece, none per document.
- **packed** (pack mode): each shard's documents packed into rows of ``L`` tokens by
  `streamload.dataset.packing.pack`, a pure function of the shard's document lengths; item ids number the rows
  shard by shard. Rows per shard need each shard's document lengths (its offsets, 8 bytes per
  document; no token is read), so the first ``len()`` opens every shard once per process and
  keeps only the per-shard counts. Rows carry ``tokens``, ``segment_ids`` (1.. per document
  piece in the row, 0 = padding) and ``positions`` (restarting at 0 per piece). A packed
  shard's rows are laid out once as a table of pieces (`_ShardRows`: byte range, segment id;
  a row's padding is one more piece), so a batch is only slices of that table, one C-level
  memoryview slice per piece and one ``bytearray.join`` per array: no Python work per token
  and no per-piece numpy call.

Shards of any format serve tokens: Arrow shards through ``ArrowShardReader.flat_array`` (views
of the mapping); other readers through one columnar ``take`` of the shard (a copy).
"""

from __future__ import annotations

import bisect
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.dataset.packing import Packing, check_seq_len, pack
from streamload.dataset.token_blocks import blocks_per_shard, check_block_size, offsets
from streamload.errors import ConfigError, FormatError
from streamload.format.index import DatasetIndex
from streamload.format.schema import Column, Schema
from streamload.shards.arrow.reader import FlatArray

_PACKINGS_KEPT = 32  # packed shards whose rows a process keeps (LRU; two shuffle windows)


@dataclass(frozen=True)
class TokenSettings:
    """How a token column is read: ``block_size`` blocks, or rows of ``seq_len`` with ``pack``."""

    column: str
    block_size: int | None = None
    seq_len: int | None = None
    pack: bool = False

    def validated(self, schema: Schema) -> TokenSettings:
        """Self, after checking the settings against the dataset schema.

        Raises:
            ConfigError: not exactly one of block_size / seq_len (+ pack=True), a bad size, or
                a column that is not a 1-d integer array column (its kind named).
        """
        if (self.block_size is None) == (self.seq_len is None):
            raise ConfigError(
                "StreamingDataset(tokens=...): give block_size= (contiguous blocks across"
                " documents) or seq_len= with pack=True (documents packed into rows), not both"
                " or neither"
            )
        if self.block_size is not None:
            check_block_size(self.block_size)
            if self.pack:
                raise ConfigError(
                    "StreamingDataset: pack=True packs documents into rows of seq_len=; with"
                    " block_size= blocks are cut across documents, there is nothing to pack"
                )
        else:
            check_seq_len(self.seq_len)
            if not self.pack:
                raise ConfigError(
                    "StreamingDataset(seq_len=...): pass pack=True to pack documents into rows"
                    " of seq_len, or block_size= for contiguous blocks across documents"
                )
        try:
            col = schema.column(self.column)
        except KeyError:
            raise ConfigError(
                f"StreamingDataset tokens={self.column!r}: no such column; the dataset has"
                f" {list(schema.names)}"
            ) from None
        if (
            col.kind != "ndarray"
            or len(col.shape or ()) != 1
            or not np.issubdtype(col.numpy_dtype, np.integer)
        ):
            kind = f"{col.dtype} array of shape {list(col.shape or ())}" if col.dtype else col.kind
            raise ConfigError(
                f"StreamingDataset tokens={self.column!r}: the column is a {kind}; a token"
                " column is a 1-d integer array (one document per row)"
            )
        return self

    @property
    def length(self) -> int:
        """Tokens per item (block_size or seq_len)."""
        return int(self.block_size if self.block_size is not None else self.seq_len)  # type: ignore[arg-type]

    def describe(self) -> str:
        """A stable text of these settings, part of the dataset fingerprint."""
        if self.block_size is not None:
            return f"tokens={self.column};block_size={self.block_size}"
        return f"tokens={self.column};seq_len={self.seq_len};pack=1"


def flat_tokens(reader: Any, column: str) -> FlatArray:
    """Shard ``reader``'s column as a ``FlatArray``, made once per reader."""
    cached = getattr(reader, "_streamload_flat", None)
    if cached is not None and cached[0] == column:
        return cached[1]
    if hasattr(reader, "flat_array"):
        flat = reader.flat_array(column)
    else:  # any other reader: one columnar take (a copy of the shard's tokens)
        values = reader.take(np.arange(len(reader), dtype=np.int64))[column]
        arrays = list(values)
        lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
        chunk = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
        flat = FlatArray.from_chunks([chunk], [np.cumsum(lengths)])
    reader._streamload_flat = (column, flat)
    return flat


class TokenItems:
    """The items of a token dataset: counts per shard, and batches of items by id.

    Args:
        settings: validated token settings.
        index: the dataset index.
        open_flat: ``k -> FlatArray`` of shard ``k``'s token column (opens the shard).
    """

    def __init__(
        self,
        settings: TokenSettings,
        index: DatasetIndex,
        open_flat: Callable[[int], FlatArray],
    ) -> None:
        self.settings = settings
        self._index = index
        self._open_flat = open_flat
        self._dtype = index.schema.column(settings.column).numpy_dtype
        self._totals: np.ndarray | None = None
        self._counts: np.ndarray | None = None
        self._total: int | None = None
        self._offsets: np.ndarray | None = None
        self._item_bounds_list: list[int] | None = None
        self._bounds: list[int] | None = None
        self._zeros: memoryview | None = None
        self._ramp_bytes: tuple[memoryview, memoryview] | None = None
        self._last_flat: tuple[int, int, FlatArray] | None = None
        self._last_source: tuple[FlatArray, memoryview] | None = None
        self._rows: OrderedDict[int, _ShardRows] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_rows"] = OrderedDict()  # rebuilt where needed, not shipped to workers
        state["_last_flat"] = None
        state["_last_source"] = None
        state["_zeros"] = state["_ramp_bytes"] = None  # memoryviews do not pickle
        return state

    # -- counts ---------------------------------------------------------------------------------

    @property
    def packed(self) -> bool:
        """Packed rows (else fixed-length blocks)."""
        return self.settings.block_size is None

    def shard_tokens(self) -> np.ndarray:
        """Tokens per shard: index.json's element totals, counted from a shard where missing."""
        if self._totals is None:
            column = self.settings.column
            totals = np.zeros(len(self._index.shards), np.int64)
            for k, info in enumerate(self._index.shards):
                if info.elements is not None and column in info.elements:
                    totals[k] = info.elements[column]
                else:
                    totals[k] = self._open_flat(k).total
            self._totals = totals
        return self._totals

    def items_per_shard(self) -> np.ndarray:
        """Items (blocks, or packed rows) per shard, in index order."""
        if self._counts is None:
            if self.packed:
                # The last shards counted stay packed (LRU) for the first reads.
                self._counts = np.fromiter(
                    (len(self._shard_rows(k).row_ptr) - 1 for k in range(len(self._index.shards))),
                    np.int64,
                    len(self._index.shards),
                )
            else:
                self._counts = blocks_per_shard(self.shard_tokens(), self.settings.length)
        return self._counts

    @property
    def counted(self) -> bool:
        """Whether items per shard are known (blocks: from index.json; packed: once counted)."""
        if self._counts is not None:
            return True
        if self.packed:
            return False
        column = self.settings.column
        return all(s.elements is not None and column in s.elements for s in self._index.shards)

    def item_offsets(self) -> np.ndarray:
        """``[0, cumsum(items_per_shard)]``: shard k holds items ``[o[k], o[k + 1])`` (computed
        once; read-only)."""
        if self._offsets is None:
            bounds = offsets(self.items_per_shard())
            bounds.setflags(write=False)
            self._offsets = bounds
        return self._offsets

    def __len__(self) -> int:
        if self._total is None:
            self._total = int(self.items_per_shard().sum())
        return self._total

    def schema(self) -> Schema:
        """The schema of one item."""
        n = self.settings.length
        tokens = Column(self.settings.column, "ndarray", self._dtype.name, (n,))
        if not self.packed:
            return Schema((tokens,))
        return Schema(
            (
                tokens,
                Column("segment_ids", "ndarray", "int32", (n,)),
                Column("positions", "ndarray", "int32", (n,)),
            )
        )

    def item_nbytes(self) -> int:
        """Bytes of one item's arrays."""
        n = self.settings.length
        return n * self._dtype.itemsize + (8 * n if self.packed else 0)

    def padding_fraction(self) -> float:
        """Padding tokens over all token slots of the epoch (0 for blocks); opens every shard."""
        if not self.packed:
            return 0.0
        slots = len(self) * self.settings.length
        return 1.0 - float(self.shard_tokens().sum()) / slots if slots else 0.0

    # -- reading --------------------------------------------------------------------------------

    def get_batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Items ``ids`` as ``[len(ids), L]`` arrays (fresh, writable, owned by the caller).

        Raises:
            IndexError: an id is outside ``[0, len(self))``.
            FormatError: a shard is corrupt or disagrees with index.json's token count.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        total = len(self)
        if len(ids) and (ids.min() < 0 or ids.max() >= total):
            raise IndexError(f"item ids out of range [0, {total})")
        if self.packed:
            return self._packed_batch(ids)
        return self._blocks(ids)

    def _blocks(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        size = self.settings.length
        out = np.empty((len(ids), size), self._dtype)
        bounds = self._shard_bounds()
        # In ascending block order, so shards open in ascending order, as the read-ahead
        # predicts (`streamload.cache.read_plan`); each block fills its own row.
        ascending = np.argsort(ids, kind="stable")
        for r, block in zip(ascending.tolist(), ids[ascending].tolist(), strict=True):
            row = out[r]
            first = block * size
            k = bisect.bisect_right(bounds, first) - 1  # the shard holding the first token
            at = 0
            while at < size:  # a block may run on into the next shards
                lo = first + at - bounds[k]
                n = min(size - at, bounds[k + 1] - bounds[k] - lo)
                if n > 0:
                    _copy_tokens(self._flat(k), lo, n, row, at)
                    at += n
                k += 1
        return {self.settings.column: out}

    def _packed_batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Packed rows from each shard's `_ShardRows`, whose pieces (padding included) fill every
        row exactly. The batch's pieces are one slice of those arrays for a run of consecutive
        rows (else a gather). Tokens and positions are each one ``bytearray.join`` of a
        memoryview per piece (of the mapped shard, of the ramp ``0, 1, ...``, or of zeros for
        padding): per piece only a C-level slice, per batch one copy. Segment ids are one
        ``np.repeat``."""
        size = self.settings.length
        n = len(ids)
        if not n:
            empty = np.zeros((0, size), np.int32)
            return {
                self.settings.column: np.empty((0, size), self._dtype),
                "segment_ids": empty,
                "positions": empty,
            }
        pad = self._pad_bytes()
        token_views: list[memoryview] = []
        lengths: list[np.ndarray] = []
        segments: list[np.ndarray] = []
        groups, piece_order = self._pieces(ids)
        for k, pieces in groups:
            rows = self._shard_rows(k)
            values = self._source_bytes(k)
            begin, end, segment = rows.begin[pieces], rows.end[pieces], rows.segment[pieces]
            # A padding piece has begin -1 and end -1 + its bytes.
            token_views += [
                values[b:e] if b >= 0 else pad[: e - b]
                for b, e in zip(begin.tolist(), end.tolist(), strict=True)
            ]
            lengths.append((end - begin) // self._dtype.itemsize)
            segments.append(segment)
        length = lengths[0] if len(lengths) == 1 else np.concatenate(lengths)
        segment = segments[0] if len(segments) == 1 else np.concatenate(segments)
        if piece_order is not None:  # rows were read grouped by shard: back to the ids' order
            token_views = list(map(token_views.__getitem__, piece_order.tolist()))
            length, segment = length[piece_order], segment[piece_order]
        ramp, zeros = self._position_bytes()
        position_views = [  # int32 positions: 4 bytes per token
            ramp[:b] if g else zeros[:b]
            for g, b in zip(segment.tolist(), (length * 4).tolist(), strict=True)
        ]
        # bytearray: the arrays are fresh and writable; the rows' pieces fill them exactly.
        tokens = np.frombuffer(bytearray().join(token_views), self._dtype)
        positions = np.frombuffer(bytearray().join(position_views), np.int32)
        return {
            self.settings.column: tokens.reshape(n, size),
            "segment_ids": np.repeat(segment, length).reshape(n, size),
            "positions": positions.reshape(n, size),
        }

    def _pieces(self, ids: np.ndarray) -> tuple[list[tuple[int, slice | np.ndarray]], Any]:
        """The pieces of packed rows ``ids``: ``[(shard, its pieces)]`` with rows grouped by
        shard (one group per shard the batch touches), and the permutation that puts the
        concatenated pieces back in the order of ``ids`` (None when already in order). A run
        of consecutive rows in one shard (reading in order) is one slice of the shard's
        `_ShardRows` arrays; other rows are gathered."""
        bounds = self._item_bounds()
        first, n = int(ids[0]), len(ids)
        k = bisect.bisect_right(bounds, first) - 1
        if first + n <= bounds[k + 1] and (n == 1 or ids.tolist() == list(range(first, first + n))):
            row_ptr = self._shard_rows(k).row_ptr
            local = first - bounds[k]
            return [(k, slice(int(row_ptr[local]), int(row_ptr[local + n])))], None
        item_bounds = self.item_offsets()
        shard_of = np.searchsorted(item_bounds, ids, "right") - 1
        grouped = bool((shard_of[1:] >= shard_of[:-1]).all())
        order = np.arange(n) if grouped else np.argsort(shard_of, kind="stable")
        groups: list[tuple[int, slice | np.ndarray]] = []
        sizes: list[np.ndarray] = []
        at = 0
        for k, count in _runs(shard_of[order]):
            row_ptr = self._shard_rows(k).row_ptr
            local = ids[order[at : at + count]] - item_bounds[k]
            at += count
            lo, hi = row_ptr[local], row_ptr[local + 1]
            groups.append((k, _ranges(lo, hi)))
            sizes.append(hi - lo)
        if grouped:
            return groups, None
        inverse = np.empty(n, np.int64)
        inverse[order] = np.arange(n)  # row i of the batch is grouped row inverse[i]
        ptr = offsets(np.concatenate(sizes))
        return groups, _ranges(ptr[inverse], ptr[inverse + 1])

    def _pad_bytes(self) -> memoryview:
        """``seq_len`` zero tokens as bytes: what a padding piece copies."""
        if self._zeros is None:
            self._zeros = np.zeros(self.settings.length, self._dtype).data.cast("B")
        return self._zeros

    def _position_bytes(self) -> tuple[memoryview, memoryview]:
        """``arange(seq_len)`` and ``seq_len`` zeros as int32 bytes: a piece's positions are a
        prefix of the first (restarting per piece), padding's a prefix of the second."""
        if self._ramp_bytes is None:
            size = self.settings.length
            self._ramp_bytes = (
                np.arange(size, dtype=np.int32).data.cast("B"),
                np.zeros(size, np.int32).data.cast("B"),
            )
        return self._ramp_bytes

    def _item_bounds(self) -> list[int]:
        """``item_offsets()`` as a list, for per-batch bisect without numpy."""
        if self._item_bounds_list is None:
            self._item_bounds_list = self.item_offsets().tolist()
        return self._item_bounds_list

    def _shard_bounds(self) -> list[int]:
        if self._bounds is None:
            self._bounds = offsets(self.shard_tokens()).tolist()
        return self._bounds

    def _flat(self, k: int) -> FlatArray:
        last = self._last_flat
        if last is not None and last[0] == k and last[1] == os.getpid():
            return last[2]
        flat = self._open_flat(k)
        expected = self.shard_tokens()[k]
        if flat.total != expected:
            name = self._index.shards[k].name
            raise FormatError(
                f"shard {name}: column {self.settings.column!r} holds {flat.total} tokens,"
                f" index.json says {expected}"
            )
        # Only the newest: the dataset's reader LRU decides what stays mapped.
        self._last_flat = (k, os.getpid(), flat)
        return flat

    def _source_bytes(self, k: int) -> memoryview:
        """Shard ``k``'s ``FlatArray.source()`` values as bytes (kept for its newest flat)."""
        flat = self._flat(k)
        last = self._last_source
        if last is not None and last[0] is flat:
            return last[1]
        values, _ = flat.source()
        # No copy: source() values have the column's dtype and are contiguous.
        data = np.ascontiguousarray(values, self._dtype).data.cast("B")
        self._last_source = (flat, data)
        return data

    def _shard_rows(self, k: int) -> _ShardRows:
        rows = self._rows.get(k)
        if rows is not None:
            self._rows.move_to_end(k)
            return rows
        rows = _ShardRows.of(self._packing(k), self._flat(k), self._dtype.itemsize)
        self._rows[k] = rows
        if len(self._rows) > _PACKINGS_KEPT:
            self._rows.popitem(last=False)
        return rows

    def _packing(self, k: int) -> Packing:
        return pack(self._open_flat(k).lengths, self.settings.length)


def _copy_tokens(flat: FlatArray, lo: int, n: int, out: np.ndarray, at: int) -> None:
    """Copy values ``[lo, lo + n)`` of ``flat`` to ``out[at:]``: one slice assignment per record
    batch the range crosses (usually one)."""
    bounds = flat.bounds_list
    c = bisect.bisect_right(bounds, lo) - 1
    while n > 0:
        take = min(n, bounds[c + 1] - lo)
        if take > 0:
            begin = lo - bounds[c]
            out[at : at + take] = flat.chunks[c][begin : begin + take]
            at += take
            lo += take
            n -= take
        c += 1


@dataclass(frozen=True)
class _ShardRows:
    """One packed shard's rows as pieces that fill them exactly: row ``r`` is pieces
    ``row_ptr[r]:row_ptr[r + 1]``; piece ``j`` is bytes ``[begin[j], end[j])`` of the shard's
    ``FlatArray.source()`` values (a piece lies inside one document, so inside one record
    batch) with segment id ``segment[j]`` (1, 2, ... in its row), or, where a row is not full,
    one last padding piece (``begin`` -1, ``end`` -1 + its bytes, ``segment`` 0). 20 bytes per
    piece, so a process can keep a window of shards."""

    row_ptr: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    segment: np.ndarray

    @classmethod
    def of(cls, packing: Packing, flat: FlatArray, itemsize: int) -> _ShardRows:
        """The rows of ``packing`` read from ``flat`` (tokens of ``itemsize`` bytes)."""
        token_start = flat.row_offsets[packing.doc] + packing.start
        chunk = np.searchsorted(flat.bounds, token_start, "right") - 1
        _, chunk_starts = flat.source()
        src = chunk_starts[chunk] + (token_start - flat.bounds[chunk])
        count = np.diff(packing.row_ptr)
        free = packing.seq_len - np.diff(offsets(packing.length)[packing.row_ptr])
        row_ptr = offsets(count + (free > 0))
        row_of = np.repeat(np.arange(packing.num_rows, dtype=np.int64), count)
        real = np.arange(len(src), dtype=np.int64) + (row_ptr[:-1] - packing.row_ptr[:-1])[row_of]
        pieces = int(row_ptr[-1])
        begin = np.full(pieces, -1, np.int64)
        end = np.full(pieces, -1, np.int64)
        segment = np.zeros(pieces, np.int32)
        begin[real] = src * itemsize
        end[real] = (src + packing.length) * itemsize
        segment[real] = real - row_ptr[row_of] + 1
        end[row_ptr[1:][free > 0] - 1] += free[free > 0] * itemsize  # padding pieces
        return cls(row_ptr, begin, end, segment)


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(lo[i], hi[i])`` over i (int64)."""
    size = hi - lo
    ends = size.cumsum()
    return np.repeat(lo - ends + size, size) + np.arange(int(ends[-1]) if len(ends) else 0)


def _runs(values: np.ndarray) -> list[tuple[int, int]]:
    """``[(value, run length)]`` of consecutive equal values (items of one shard)."""
    if len(values) == 1 or (values == values[0]).all():
        return [(int(values[0]), len(values))]
    cut = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate(([0], cut))
    counts = np.diff(np.concatenate((starts, [len(values)])))
    return list(zip(values[starts].tolist(), counts.tolist(), strict=True))
