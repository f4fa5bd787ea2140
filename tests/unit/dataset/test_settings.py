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


BAD_ARGUMENTS: list[tuple[str, object]] = [
    ("cache_limit", "10 gigs"),
    ("cache_limit", -5),
    ("cache_dir", ""),
    ("cache_dir", 5),
    ("shuffle", "yes"),
    ("shuffle", 2),
    ("seed", -1),
    ("seed", 1.5),
    ("columns", 5),
    ("columns", ["id", 3]),
    ("transform", "upper"),
    ("storage_options", "endpoint_url=x"),
    ("verify", "maybe"),
    ("shuffle_mode", "random"),
    ("shuffle_block", 0),
    ("world_size", 2),  # rank missing
]


@pytest.fixture(params=["local", "memory"])
def any_url(request: pytest.FixtureRequest, url: str) -> str:
    """The same dataset as a local path and as a memory:// URL (neither uses the cache)."""
    if request.param == "local":
        return url
    target = f"memory://settings-{id(request)}/ds"
    sl.convert(url, target)
    return target


@pytest.mark.parametrize(("name", "value"), BAD_ARGUMENTS)
def test_every_bad_argument_is_refused_at_construction_whatever_the_url(
    any_url: str, name: str, value: object
) -> None:
    """Each constructor argument is validated when the dataset is made, for data that is read
    in place too (a typo must not wait for the day the data moves to a bucket): ConfigError
    naming the argument."""
    setting = {"verify": "verify_local"}.get(name, name)
    with pytest.raises(sl.ConfigError, match=f"{setting}|rank"):
        sl.StreamingDataset(any_url, **{name: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "kind"), [(s.name, s.kind) for s in sl.config.settings()], ids=str
)
def test_every_setting_from_the_environment_is_parsed_at_construction(
    url: str, setting: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad value of any setting in the environment fails StreamingDataset(local path) with
    ConfigError naming the setting and the variable, not on first use of the setting."""
    monkeypatch.setenv(f"STREAMLOAD_{setting.upper()}", "" if kind == "path" else "not-a-value?")
    with pytest.raises(
        sl.ConfigError, match=rf"{setting} = .* from env STREAMLOAD_{setting.upper()}"
    ):
        sl.StreamingDataset(url)
