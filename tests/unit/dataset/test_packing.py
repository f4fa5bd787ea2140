"""Packing documents into rows: properties of the pure packer and of the rows it lays out."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamload.dataset.packing import check_seq_len, pack
from streamload.errors import ConfigError

doc_lengths = st.lists(st.integers(0, 40), max_size=60)


def _pieces_by_doc(lengths: list[int], seq_len: int) -> dict[int, list[tuple[int, int, int]]]:
    packing = pack(np.array(lengths, np.int64), seq_len)
    by_doc: dict[int, list[tuple[int, int, int]]] = {}
    for r in range(packing.num_rows):
        for j in range(packing.row_ptr[r], packing.row_ptr[r + 1]):
            by_doc.setdefault(int(packing.doc[j]), []).append(
                (r, int(packing.start[j]), int(packing.length[j]))
            )
    return by_doc


@given(doc_lengths, st.integers(1, 16))
def test_every_token_is_placed_once_and_rows_never_overflow(
    lengths: list[int], seq_len: int
) -> None:
    """Pieces of each document tile it exactly; every row holds at most seq_len tokens."""
    packing = pack(np.array(lengths, np.int64), seq_len)
    per_row = np.add.reduceat(packing.length, packing.row_ptr[:-1]) if packing.num_rows else []
    assert all(0 < t <= seq_len for t in per_row)
    by_doc = _pieces_by_doc(lengths, seq_len)
    for d, n in enumerate(lengths):
        spans = sorted((s, s + k) for _, s, k in by_doc.get(d, []))
        assert sum(b - a for a, b in spans) == n
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))
    assert packing.tokens == sum(lengths)
    assert packing.padding == packing.num_rows * seq_len - sum(lengths)


@given(doc_lengths, st.integers(1, 16))
def test_a_document_that_fits_is_never_split(lengths: list[int], seq_len: int) -> None:
    """A document of at most seq_len tokens is exactly one piece; longer ones are cut at seq_len."""
    by_doc = _pieces_by_doc(lengths, seq_len)
    for d, n in enumerate(lengths):
        if 0 < n <= seq_len:
            assert len(by_doc[d]) == 1
        elif n > seq_len:
            sizes = sorted((k for _, _, k in by_doc[d]), reverse=True)
            assert sizes[: n // seq_len] == [seq_len] * (n // seq_len)


@given(doc_lengths, st.integers(1, 16))
def test_rows_are_numbered_in_storage_order(lengths: list[int], seq_len: int) -> None:
    """Row r's first piece comes before row r+1's first piece (document, then offset)."""
    packing = pack(np.array(lengths, np.int64), seq_len)
    firsts = [
        (int(packing.doc[packing.row_ptr[r]]), int(packing.start[packing.row_ptr[r]]))
        for r in range(packing.num_rows)
    ]
    assert firsts == sorted(firsts)


@given(doc_lengths, st.integers(1, 16))
def test_packing_is_a_pure_function(lengths: list[int], seq_len: int) -> None:
    """The same lengths give the same rows (no hidden state, no randomness)."""
    a, b = pack(np.array(lengths), seq_len), pack(np.array(lengths), seq_len)
    for x, y in zip(
        (a.row_ptr, a.doc, a.start, a.length), (b.row_ptr, b.doc, b.start, b.length), strict=True
    ):
        assert (x == y).all()


def test_best_fit_fills_rows_tightly() -> None:
    """Pieces that pair up exactly (7+3, 6+4, 5+5) leave no padding."""
    packing = pack(np.array([3, 7, 5, 4, 6, 5]), 10)
    assert packing.num_rows == 3 and packing.padding == 0


@pytest.mark.parametrize("bad", [0, -3, 1.5, None])
def test_seq_len_must_be_a_positive_int(bad: object) -> None:
    """seq_len outside the positive ints is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="seq_len"):
        check_seq_len(bad)
