"""Collation of columnar batches: what ``default_collate`` would build, without per-sample objects.

``StreamingDataset.get_batch(ids)`` returns one value per column (see `streamload.dataset.streaming.StreamingDataset.get_batch`): a 1-D numpy
array for int/float/bool and numpy-scalar columns, a ``(B, *shape)`` array for fixed-shape
ndarray columns, ``list[str]`` / ``list[bytes]``, or ``list[np.ndarray]`` for variable-shape
ndarray columns. ``collate_columns`` turns that into exactly what
``torch.utils.data.default_collate([ds[i] for i in ids])`` returns for the same rows: a dict in
the same key order whose numeric columns are tensors of the same dtype, shape and values, and
whose str/bytes columns are lists.

It is split in two steps because they run in different processes once the loader has workers:

- ``stack_columns`` (worker side, numpy only): variable-shape columns are stacked into one array
  (or fail with the very error ``torch.stack`` raises); every array comes out C-contiguous,
  writable and owned, ready to be copied into the shared-memory ring as raw bytes.
- ``columns_to_torch`` (trainer side): wraps each array with ``torch.from_numpy`` — no copy when
  the array is owned, contiguous and writable, one copy otherwise.

Invariant: ``columns_to_torch(stack_columns(cols))`` equals ``default_collate`` of the per-sample
dicts (its tests check every column kind, including the cases where ``default_collate``
raises).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from streamload.format.blobs import BlobColumn

# Column values after stack_columns: an array for numeric columns, a list or BlobColumn for
# str/bytes.
StackedColumn = np.ndarray | list[Any] | BlobColumn


class Blobs:
    """A str or bytes column of a batch in one piece: what ``StreamLoader(strings="blobs")``
    hands the loop instead of a list of ``str``/``bytes`` objects.

    ``data`` is a 1-D uint8 tensor holding every row back to back, ``offsets`` an int64 tensor
    of ``len + 1`` positions: row ``i`` is ``data[offsets[i]:offsets[i + 1]]`` (UTF-8 for a
    text column, ``text`` True). Building it costs one copy of the bytes and no per-row object,
    so decoders and tokenizers that take a buffer and offsets (or views) read the rows in place.

    ``blobs[i]`` and ``views()`` give rows as uint8 tensor views of ``data``; ``tolist()`` gives
    exactly the list ``default_collate`` would (str or bytes); ``pin_memory()`` pins both tensors
    (the loader's ``pin_memory=True`` calls it).
    """

    __slots__ = ("data", "offsets", "text")

    def __init__(self, data: torch.Tensor, offsets: torch.Tensor, text: bool) -> None:
        self.data = data
        self.offsets = offsets
        self.text = text

    @classmethod
    def from_column(cls, column: BlobColumn) -> Blobs:
        """Tensors sharing the column's (contiguous) memory."""
        return cls(
            array_to_tensor(column.data), array_to_tensor(np.asarray(column.offsets)), column.text
        )

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        """Row ``i`` as a uint8 view of ``data`` (negative counts from the end)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} of {n}")
        i %= n
        return self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]

    @property
    def lengths(self) -> torch.Tensor:
        """Bytes of each row (int64, ``len``)."""
        return self.offsets[1:] - self.offsets[:-1]

    def views(self) -> list[torch.Tensor]:
        """Every row as a uint8 view of ``data``."""
        return list(torch.split(self.data, self.lengths.tolist()))

    def tolist(self) -> list[Any]:
        """The column as ``default_collate`` gives it: a list of str (text) or bytes."""
        data, offsets = self.data.cpu().numpy(), self.offsets.cpu().numpy()
        return BlobColumn(self.text, offsets, data).tolist()

    def pin_memory(self, device: str | None = None) -> Blobs:
        """Both tensors in pinned memory (what ``pin_memory=True`` does to tensors)."""
        args = () if device is None else (device,)
        return Blobs(self.data.pin_memory(*args), self.offsets.pin_memory(*args), self.text)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Blobs):
            return NotImplemented
        return (
            self.text == other.text
            and torch.equal(self.offsets, other.offsets)
            and torch.equal(self.data, other.data)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        kind = "text" if self.text else "bytes"
        return f"Blobs({len(self)} {kind} rows, {int(self.data.numel())} bytes)"


def stack_columns(columns: Mapping[str, Any]) -> dict[str, StackedColumn]:
    """Worker-side half of ``collate_columns``: one contiguous, owned array per numeric column.

    Args:
        columns: ``get_batch`` output (column name -> values), in schema order.

    Returns:
        A new dict in the same order: numeric columns as C-contiguous writable arrays, str and
        bytes columns as the given lists, or as ``BlobColumn`` (``get_batch(ids, strings="blob")``).

    Raises:
        RuntimeError: a variable-shape column's rows differ in shape (``torch.stack``'s error,
            as ``default_collate`` raises it).
        TypeError: a column holds values ``default_collate`` cannot batch (its error).
    """
    return {name: _stack(values) for name, values in columns.items()}


STRING_FORMS = ("list", "blobs")


def columns_to_torch(columns: Mapping[str, StackedColumn], strings: str = "list") -> dict[str, Any]:
    """Trainer-side half of ``collate_columns``: arrays become tensors sharing their memory.

    Args:
        columns: ``stack_columns`` output (or arrays read back from the transport).
        strings: ``"list"``: str/bytes columns as the lists ``default_collate`` gives;
            ``"blobs"``: a ``BlobColumn`` becomes one `Blobs` (lists stay lists).

    Returns:
        A new dict in the same order: arrays as tensors (``torch.from_numpy``; copied once only
        when an array is read-only or not C-contiguous), lists unchanged.
    """
    blobs = strings == "blobs"
    return {name: _to_torch(values, blobs) for name, values in columns.items()}


def _to_torch(values: StackedColumn, blobs: bool = False) -> Any:
    if isinstance(values, np.ndarray):
        return array_to_tensor(values)
    if isinstance(values, BlobColumn):
        return Blobs.from_column(values) if blobs else values.tolist()
    return values


def collate_columns(columns: Mapping[str, Any]) -> dict[str, Any]:
    """``default_collate([ds[i] for i in ids])`` computed from ``ds.get_batch(ids)``.

    Args:
        columns: ``get_batch`` output for at least one row.

    Returns:
        The collated batch (see the module docstring).

    Raises:
        RuntimeError, TypeError: where ``default_collate`` raises for the same rows.
    """
    return columns_to_torch(stack_columns(columns))


def array_to_tensor(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without a copy when the array allows it, else of one copy.

    ``from_numpy`` on a read-only array would share memory the tensor may write to (torch warns),
    and a non-contiguous array would give a strided tensor where ``default_collate`` gives a
    contiguous one, so both get one contiguous copy.
    """
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C", copy=True)
    return torch.from_numpy(array)


def _stack(values: Any) -> StackedColumn:
    if isinstance(values, BlobColumn):
        return values
    if isinstance(values, pa.Array):
        if len(values) == 0:
            raise TypeError("a batch column must be a numpy array or a non-empty list, got []")
        return BlobColumn.from_arrow(values)
    if isinstance(values, np.ndarray):
        if values.dtype == np.uint64 and values.ndim == 1:
            return _uint64_scalars(values)
        if values.dtype.hasobject:
            raise TypeError(
                "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or"
                f" lists; found {values.dtype}"
            )
        if values.flags.c_contiguous and values.flags.writeable:
            return values
        return np.array(values, order="C", copy=True)
    if not isinstance(values, list) or not values:
        raise TypeError(f"a batch column must be a numpy array or a non-empty list, got {values!r}")
    first = values[0]
    if isinstance(first, str | bytes):
        return values
    if isinstance(first, np.ndarray):
        return _stack_arrays(values)
    raise TypeError(
        "default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists;"
        f" found {type(first)}"
    )


def _uint64_scalars(values: np.ndarray) -> np.ndarray:
    """A column of numpy uint64 scalars. ``default_collate`` hands the scalars to
    ``torch.as_tensor``, which rejects them in torch 2.x (TypeError); asking torch itself keeps
    us in agreement with whatever it does in any version."""
    tensor = torch.as_tensor(list(values))
    return np.ascontiguousarray(tensor.numpy())


def _stack_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of a variable-shape column as one (B, *shape) array, as ``torch.stack`` would."""
    shape, dtype = arrays[0].shape, arrays[0].dtype
    if any(a.shape != shape or a.dtype != dtype for a in arrays):
        # Let torch produce its own error (or its own type promotion) for mismatched rows.
        return np.ascontiguousarray(torch.stack([torch.as_tensor(a) for a in arrays]).numpy())
    return np.stack(arrays)
