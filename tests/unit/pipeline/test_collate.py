"""collate_columns equals default_collate over the same rows, and copies only when it must."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from streamload.pipeline.collate import (
    array_to_tensor,
    collate_columns,
    columns_to_torch,
    stack_columns,
)

B = 5


def _rows_and_columns() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-sample dicts as ``ds[i]`` gives them, and the same rows as ``get_batch`` gives them."""
    rows = [
        {
            "i": k - 2,
            "f": k / 3,
            "ok": k % 2 == 0,
            "text": f"t{k}",
            "raw": bytes([k]),
            "tok": np.arange(3, dtype=np.int32) + k,
            "half": np.float16(k / 4),
            "u16": np.uint16(k),
            "flag": np.bool_(k % 3),
            "var": np.full((2, 2), k, np.float32),
        }
        for k in range(B)
    ]
    columns = {
        "i": np.array([r["i"] for r in rows], np.int64),
        "f": np.array([r["f"] for r in rows], np.float64),
        "ok": np.array([r["ok"] for r in rows], np.bool_),
        "text": [r["text"] for r in rows],
        "raw": [r["raw"] for r in rows],
        "tok": np.stack([r["tok"] for r in rows]),
        "half": np.array([r["half"] for r in rows], np.float16),
        "u16": np.array([r["u16"] for r in rows], np.uint16),
        "flag": np.array([r["flag"] for r in rows], np.bool_),
        "var": [r["var"].copy() for r in rows],
    }
    return rows, columns


def _assert_same(expected: Any, actual: Any) -> None:
    assert type(actual) is type(expected)
    if isinstance(expected, torch.Tensor):
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape)
        assert torch.equal(actual, expected)
        assert actual.is_contiguous()
    elif isinstance(expected, dict):
        assert list(actual) == list(expected)
        for key in expected:
            _assert_same(expected[key], actual[key])
    else:
        assert actual == expected


def test_collate_columns_equals_default_collate_of_the_rows() -> None:
    """Every column kind collates to default_collate's type, dtype, shape, values, key order."""
    rows, columns = _rows_and_columns()
    _assert_same(default_collate(rows), collate_columns(columns))


def test_stack_columns_returns_only_numpy_and_lists() -> None:
    """The worker-side half produces no tensors: arrays and lists that can cross a ring."""
    _, columns = _rows_and_columns()
    stacked = stack_columns(columns)
    for name, value in stacked.items():
        assert isinstance(value, np.ndarray | list), name
        if isinstance(value, np.ndarray):
            assert value.flags.c_contiguous and value.flags.writeable, name
    assert stacked["var"].shape == (B, 2, 2)


def test_owned_contiguous_arrays_become_tensors_without_a_copy() -> None:
    """A writable C-contiguous column is shared with its tensor, not copied."""
    array = np.arange(12, dtype=np.int32).reshape(4, 3)
    tensor = columns_to_torch({"a": array})["a"]
    assert tensor.data_ptr() == array.ctypes.data
    tensor[0, 0] = 99
    assert array[0, 0] == 99


@pytest.mark.parametrize("kind", ["read_only", "strided"])
def test_read_only_or_strided_arrays_are_copied_once_to_contiguous_tensors(kind: str) -> None:
    """Arrays torch cannot share safely are copied, with no warning and a contiguous result."""
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    if kind == "read_only":
        array = base.copy()
        array.flags.writeable = False
    else:
        array = base[:, ::2]
    tensor = array_to_tensor(array)  # warnings are errors: a shared read-only array would warn
    assert tensor.is_contiguous()
    assert tensor.data_ptr() != array.ctypes.data
    assert np.array_equal(tensor.numpy(), array)
    stacked = stack_columns({"a": array})["a"]
    assert isinstance(stacked, np.ndarray)
    assert stacked.flags.c_contiguous and stacked.flags.writeable


def test_ragged_variable_shape_rows_raise_torch_stack_error() -> None:
    """Rows of different shapes fail with the exact error default_collate raises."""
    arrays = [np.zeros((k, 2), np.float32) for k in (1, 1, 2)]
    with pytest.raises(RuntimeError) as expected:
        default_collate([{"v": a} for a in arrays])
    with pytest.raises(RuntimeError) as actual:
        collate_columns({"v": [a.copy() for a in arrays]})
    assert str(actual.value) == str(expected.value)


def test_uint64_scalar_column_fails_exactly_where_default_collate_does() -> None:
    """A column of numpy uint64 scalars behaves as default_collate over those scalars."""
    values = np.array([1, 2**63 + 1], np.uint64)
    try:
        expected: Any = default_collate([{"u": v} for v in values])
    except Exception as exc:
        with pytest.raises(type(exc)) as actual:
            collate_columns({"u": values.copy()})
        assert str(actual.value) == str(exc)
    else:  # a torch that accepts uint64 scalars: then the tensors must agree
        _assert_same(expected, collate_columns({"u": values.copy()}))


def test_uint64_fixed_arrays_collate_like_default_collate() -> None:
    """uint64 arrays of a fixed shape stack (only 1-D scalar columns take torch's scalar path)."""
    rows = [{"u": np.array([k, 2**63 + k], np.uint64)} for k in range(3)]
    columns = {"u": np.stack([r["u"] for r in rows])}
    _assert_same(default_collate(rows), collate_columns(columns))


def test_columns_of_unbatchable_values_raise_type_error() -> None:
    """Object arrays and lists of arbitrary objects are refused like default_collate refuses."""
    with pytest.raises(TypeError):
        stack_columns({"o": np.array([object(), object()], dtype=object)})
    with pytest.raises(TypeError):
        stack_columns({"o": [object(), object()]})
    with pytest.raises(TypeError):
        default_collate([object(), object()])
