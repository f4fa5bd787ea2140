"""Token streams: a token corpus read as fixed-length blocks or as packed rows.

A token corpus is a dataset with a 1-d integer array column (``tokens``), one document per row.
``StreamingDataset(url, tokens="tokens", block_size=L)`` or ``(..., seq_len=L, pack=True)``
replaces the dataset's items (its samples) with the items made here; everything above the
dataset (the plan's order, rank partition, resume positions, the loader's workers) sees only item
ids and item counts per shard, so blocks and packed rows are shuffled, partitioned, resumed and
mixed exactly like samples.

- **blocks** (``TokenItems`` in blocks mode): the concatenated stream of every document of every
  shard in index order, cut into ``N // L`` blocks (``token_blocks``). Item ``b`` is block ``b``;
  it belongs to the shard of its first token. Tokens per shard come from index.json (format
  version 2 records them), counted from the shard itself where missing; nothing else is read up
  front. A batch ``[B, L]`` is copied straight from the mapped record batches: one memcpy per
  (block, record batch) piece, none per document.
- **packed** (pack mode): each shard's documents packed into rows of ``L`` tokens by
  ``packing.pack``, a pure function of the shard's document lengths; item ids number the rows
  shard by shard. Rows per shard need each shard's document lengths (its offsets, 8 bytes per
  document; no token is read), so the first ``len()`` opens every shard once per process and
  keeps only the per-shard counts. Rows carry ``tokens``, ``segment_ids`` (1.. per document
  piece in the row, 0 = padding) and ``positions`` (restarting at 0 per piece).

Shards of any format serve tokens: Arrow shards through ``ArrowShardReader.flat_array`` (views
of the mapping); other readers through one columnar ``take`` of the shard (a copy).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamload.arrow_reader import FlatArray
from streamload.errors import ConfigError, FormatError
from streamload.index import DatasetIndex
from streamload.packing import Packing, check_seq_len, fill_rows, pack, row_layout
from streamload.schema import Column, Schema
from streamload.token_blocks import (
    block_pieces,
    blocks_per_shard,
    check_block_size,
    offsets,
    split_ranges,
)

_PACKINGS_KEPT = 64  # packed shards whose row layout a process keeps (LRU)


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
        return cached[1]  # type: ignore[no-any-return]
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
        self._packings: OrderedDict[int, Packing] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_packings"] = OrderedDict()  # rebuilt where needed, not shipped to workers
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
                self._counts = np.fromiter(
                    (self._packing(k, keep=False).num_rows for k in range(len(self._index.shards))),
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
        """``[0, cumsum(items_per_shard)]``: shard k holds items ``[o[k], o[k + 1])``."""
        return offsets(self.items_per_shard())

    def __len__(self) -> int:
        return int(self.items_per_shard().sum())

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
        flat_out = out.reshape(-1)
        pieces = block_pieces(ids, offsets(self.shard_tokens()), size)
        dest = pieces.range_index * size + pieces.at
        for k, sel in _by_shard(pieces.part):
            self._copy(k, pieces.start[sel], pieces.stop[sel], flat_out, dest[sel])
        return {self.settings.column: out}

    def _packed_batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        size = self.settings.length
        n = len(ids)
        out = np.zeros((n, size), self._dtype)
        flat_out = out.reshape(-1)
        item_bounds = self.item_offsets()
        shard_of = np.searchsorted(item_bounds, ids, "right") - 1
        rows_all, cols_all, lens_all = [], [], []
        for k, sel in _by_shard(shard_of):
            packing = self._packing(k)
            batch_rows = np.flatnonzero(sel)
            piece, out_row, out_col = row_layout(packing, ids[sel] - item_bounds[k])
            out_row = batch_rows[out_row]
            flat = self._flat(k)
            length = packing.length[piece]
            starts = flat.row_offsets[packing.doc[piece]] + packing.start[piece]
            self._copy_from(flat, k, starts, starts + length, flat_out, out_row * size + out_col)
            rows_all.append(out_row)
            cols_all.append(out_col)
            lens_all.append(length)
        if rows_all:
            rows, cols, lens = (np.concatenate(a) for a in (rows_all, cols_all, lens_all))
            order = np.lexsort((cols, rows))
            segment_ids, positions = fill_rows(rows[order], cols[order], lens[order], n, size)
        else:
            segment_ids, positions = fill_rows(*(np.zeros(0, np.int64),) * 3, n, size)
        return {self.settings.column: out, "segment_ids": segment_ids, "positions": positions}

    def _flat(self, k: int) -> FlatArray:
        flat = self._open_flat(k)
        expected = self.shard_tokens()[k]
        if flat.total != expected:
            name = self._index.shards[k].name
            raise FormatError(
                f"shard {name}: column {self.settings.column!r} holds {flat.total} tokens,"
                f" index.json says {expected}"
            )
        return flat

    def _copy(
        self, k: int, starts: np.ndarray, stops: np.ndarray, out: np.ndarray, dest: np.ndarray
    ) -> None:
        self._copy_from(self._flat(k), k, starts, stops, out, dest)

    @staticmethod
    def _copy_from(
        flat: FlatArray,
        k: int,
        starts: np.ndarray,
        stops: np.ndarray,
        out: np.ndarray,
        dest: np.ndarray,
    ) -> None:
        """Copy token ranges ``[starts, stops)`` of one shard to ``out[dest...]``: one slice
        assignment per range and record batch."""
        if len(flat.chunks) == 1:
            chunk = flat.chunks[0]
            for lo, hi, at in zip(starts.tolist(), stops.tolist(), dest.tolist(), strict=True):
                out[at : at + hi - lo] = chunk[lo:hi]
            return
        p = split_ranges(starts, stops, flat.bounds)
        at = dest[p.range_index] + p.at
        chunks = flat.chunks
        for c, lo, hi, a in zip(
            p.part.tolist(), p.start.tolist(), p.stop.tolist(), at.tolist(), strict=True
        ):
            out[a : a + hi - lo] = chunks[c][lo:hi]

    def _packing(self, k: int, keep: bool = True) -> Packing:
        packing = self._packings.get(k)
        if packing is not None:
            self._packings.move_to_end(k)
            return packing
        packing = pack(self._open_flat(k).lengths, self.settings.length)
        if keep:
            self._packings[k] = packing
            if len(self._packings) > _PACKINGS_KEPT:
                self._packings.popitem(last=False)
        return packing


def _by_shard(shard_of: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``[(shard, mask of positions in that shard)]`` in order of first appearance."""
    if len(shard_of) == 0:
        return []
    first = int(shard_of[0])
    if (shard_of == first).all():
        return [(first, np.ones(len(shard_of), bool))]
    seen = dict.fromkeys(shard_of.tolist())
    return [(k, shard_of == k) for k in seen]
