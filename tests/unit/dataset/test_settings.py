"""A dataset resolves the configuration once, at construction (`DatasetSettings`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import streamload as sl


@pytest.fixture
def url(tmp_path: Path) -> str:
    with sl.ShardWriter(str(tmp_path / "ds")) as w:
        for i in range(10):
            w.write({"id": i})
    return str(tmp_path / "ds")


def test_settings_are_resolved_once_at_construction_and_travel_with_the_dataset(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings come from config (arguments win) when the dataset is made; a later change of
    the environment does not reach it or its pickled copies (what a spawned worker gets)."""
    monkeypatch.setenv("STREAMLOAD_RETRIES", "2")
    monkeypatch.setenv("STREAMLOAD_READAHEAD_SHARDS", "7")
    ds = sl.StreamingDataset(url, cache_dir=str(tmp_path / "c"), cache_limit="3MiB")
    assert ds.settings.retry.attempts == 3 and ds.settings.readahead_shards == 7
    assert (ds.cache_dir, ds.cache_limit) == (str(tmp_path / "c"), 3 * 2**20)
    monkeypatch.setenv("STREAMLOAD_RETRIES", "9")
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.settings == ds.settings and clone.settings.retry.attempts == 3


@pytest.mark.parametrize("limit", ["10 gigs", -5])
def test_a_bad_cache_limit_is_refused_for_a_local_dataset_too(url: str, limit: object) -> None:
    """cache_limit is validated at construction whatever the URL (a local dataset never uses
    the cache, but a typo must not wait for the day the data moves to a bucket)."""
    with pytest.raises(sl.ConfigError, match="cache_limit"):
        sl.StreamingDataset(url, cache_limit=limit)  # type: ignore[arg-type]
