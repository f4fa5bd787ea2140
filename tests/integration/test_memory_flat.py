"""Memory stays flat over epochs: no configuration of the loader grows from one epoch to the next.

Runs `benchmarks/soak.py` configurations for 10 short epochs each (fresh processes) and judges
the least-squares slope of the process tree's non-file PSS over the epochs after the second:
a leak shows as a steady slope, which single samples (batches in flight, allocator noise) do
not. A deliberately leaking run checks that the slope catches a 1 MiB-per-epoch leak.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import soak  # noqa: E402

EPOCHS = 10
MAX_SLOPE_MIB = 0.5  # per epoch; a 1 MiB/epoch leak measures ~1.0, healthy runs |slope| < 0.1

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("soak")
    soak.write(path, quick=True)
    return path


@pytest.mark.parametrize(
    "config", ["w0 transform", "w2 transform", "w2 transform persistent", "w2 columnar"]
)
def test_memory_does_not_grow_epoch_over_epoch(root: Path, config: str) -> None:
    """Over 10 epochs with an allocating transform (or the columnar route), non-file PSS has
    no steady slope and never grows more than 5% over epoch 2."""
    res: dict[str, Any] = soak.measure(config, root, EPOCHS, quick=True)
    assert len(res["pss"]) == EPOCHS
    assert abs(res["slope_mib_per_epoch"]) < MAX_SLOPE_MIB, res
    assert res["growth_pct"] <= 5.0, res


def test_the_slope_catches_a_one_mib_per_epoch_leak(root: Path) -> None:
    """The same measurement flags a trainer that keeps 1 MiB more every epoch."""
    res = soak.measure("w0 transform", root, EPOCHS, quick=True, leak_kib=1024)
    assert res["slope_mib_per_epoch"] > MAX_SLOPE_MIB, res
