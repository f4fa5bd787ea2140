"""The same dataset written as Arrow and as LMDB streams identical batches through StreamLoader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import streamload as sl

SCHEMA = {
    "columns": [
        {"name": "id", "kind": "int"},
        {"name": "score", "kind": "float"},
        {"name": "ok", "kind": "bool"},
        {"name": "text", "kind": "str"},
        {"name": "blob", "kind": "bytes"},
        {"name": "tokens", "kind": "ndarray", "dtype": "int32", "shape": [16]},
        {"name": "half", "kind": "ndarray", "dtype": "float16", "shape": []},
    ]
}


def _sample(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "score": i / 7,
        "ok": i % 2 == 0,
        "text": f"row {i}",
        "blob": bytes([i % 256]) * (i % 5),
        "tokens": np.arange(16, dtype=np.int32) * i,
        "half": np.float16(i % 100),
    }


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    out = {}
    for fmt in ("arrow", "lmdb"):
        with sl.ShardWriter(root / fmt, format=fmt, shard_size="6KB", schema=SCHEMA) as w:
            for i in range(403):
                w.write(_sample(i))
        out[fmt] = root / fmt
    return out


def _same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def _batches(url: Path, num_workers: int, shuffle: bool) -> list[Any]:
    ds = sl.StreamingDataset(url)
    loader = sl.StreamLoader(
        ds,
        batch_size=32,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(5),
    )
    return list(loader)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
def test_arrow_and_lmdb_stream_identical_batches(
    datasets: dict[str, Path], num_workers: int, shuffle: bool
) -> None:
    """Every batch (values, dtypes, order) is the same whichever shard format holds the data."""
    arrow = _batches(datasets["arrow"], num_workers, shuffle)
    lmdb = _batches(datasets["lmdb"], num_workers, shuffle)
    assert len(arrow) == 13
    _same(arrow, lmdb)
    ids = torch.cat([b["id"] for b in lmdb])
    assert sorted(ids.tolist()) == list(range(403))


def test_iterating_lmdb_in_dataloader_workers_yields_every_sample_once(
    datasets: dict[str, Path],
) -> None:
    """torch's own DataLoader with workers (fork after the parent read) sees every sample once."""
    ds = sl.StreamingDataset(datasets["lmdb"])
    assert ds[0]["id"] == 0  # the parent opens a shard before workers fork
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    assert sorted(int(s["id"]) for s in loader) == list(range(403))
