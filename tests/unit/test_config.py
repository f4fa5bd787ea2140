"""Tests of streamload.config: precedence, parsing, and errors that name key, value and source."""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import pytest

from streamload import ConfigError, config


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in an empty cwd and home, with no STREAMLOAD_*/XDG_* variables set."""
    for name in list(os.environ):
        if name.startswith(("STREAMLOAD_", "XDG_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    return tmp_path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_apply_when_nothing_is_configured(isolated: Path) -> None:
    """With no file, env or argument every setting has its documented default and source."""
    cfg = config.load()
    assert cfg.cache_dir == str(isolated / "home" / ".cache" / "streamload")
    assert cfg.cache_limit == 20 * 2**30
    assert cfg.shard_size == 256 * 10**6
    assert cfg.compression is None
    assert cfg.verify_local is True
    assert cfg.progress == "auto"
    assert cfg.log_level == "WARNING"
    assert cfg.ring_size == 0  # auto
    assert cfg.start_method == "auto"
    assert {cfg.source(k) for k in config.setting_names()} == {"default"}


def test_cache_dir_default_follows_xdg_cache_home(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An absolute XDG_CACHE_HOME moves the default cache dir; a relative one is ignored."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(isolated / "xdg"))
    assert config.load().cache_dir == str(isolated / "xdg" / "streamload")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert config.load().cache_dir == str(isolated / "home" / ".cache" / "streamload")


@pytest.mark.parametrize(
    ("file", "env", "arg", "expected", "source"),
    [
        (False, False, False, 20 * 2**30, "default"),
        (True, False, False, 10**9, "file"),
        (True, True, False, 2 * 2**30, "env STREAMLOAD_CACHE_LIMIT"),
        (False, True, False, 2 * 2**30, "env STREAMLOAD_CACHE_LIMIT"),
        (True, True, True, 3000, "argument"),
        (True, False, True, 3000, "argument"),
        (False, False, True, 3000, "argument"),
    ],
)
def test_precedence_is_default_file_env_argument(
    monkeypatch: pytest.MonkeyPatch,
    file: bool,
    env: bool,
    arg: bool,
    expected: int,
    source: str,
) -> None:
    """Each layer overrides the ones below it, and the source names the winning layer."""
    if file:
        _write(Path("streamload.toml"), 'cache_limit = "1GB"\n')
    if env:
        monkeypatch.setenv("STREAMLOAD_CACHE_LIMIT", "2GiB")
    cfg = config.load(cache_limit=3000 if arg else None)
    assert cfg.cache_limit == expected
    if source == "file":
        source = f"file {Path('streamload.toml').absolute()}"
    assert cfg.source("cache_limit") == source
    assert cfg.source("shard_size") == "default"


def test_explicit_config_file_wins_over_local_and_user_files(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$STREAMLOAD_CONFIG is read instead of ./streamload.toml and the user file."""
    _write(Path("streamload.toml"), "shard_size = 1\n")
    _write(isolated / "home" / ".config" / "streamload" / "config.toml", "shard_size = 2\n")
    explicit = _write(isolated / "elsewhere.toml", "shard_size = 3\n")
    monkeypatch.setenv("STREAMLOAD_CONFIG", str(explicit))
    cfg = config.load()
    assert cfg.shard_size == 3
    assert cfg.source("shard_size") == f"file {explicit}"


def test_local_file_wins_over_user_file(isolated: Path) -> None:
    """./streamload.toml is read before ~/.config/streamload/config.toml."""
    _write(isolated / "home" / ".config" / "streamload" / "config.toml", "shard_size = 2\n")
    assert config.load().shard_size == 2
    _write(Path("streamload.toml"), "shard_size = 1\n")
    assert config.load().shard_size == 1


def test_user_file_respects_xdg_config_home(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """$XDG_CONFIG_HOME/streamload/config.toml replaces ~/.config/streamload/config.toml."""
    _write(isolated / "home" / ".config" / "streamload" / "config.toml", "shard_size = 2\n")
    user = _write(isolated / "xdg" / "streamload" / "config.toml", "shard_size = 5\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(isolated / "xdg"))
    cfg = config.load()
    assert cfg.shard_size == 5
    assert cfg.source("shard_size") == f"file {user}"


def test_missing_explicit_config_file_is_an_error(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A $STREAMLOAD_CONFIG naming no file raises ConfigError naming the path and the variable."""
    missing = isolated / "nope.toml"
    monkeypatch.setenv("STREAMLOAD_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=r"nope\.toml.*STREAMLOAD_CONFIG"):
        config.load()


def test_streamload_table_is_accepted_in_the_file() -> None:
    """Keys may sit inside a [streamload] table as well as at top level."""
    _write(Path("streamload.toml"), 'progress = "never"\n[streamload]\ncompression = "zstd"\n')
    cfg = config.load()
    assert (cfg.progress, cfg.compression) == ("never", "zstd")


def test_unknown_file_key_names_key_and_file() -> None:
    """A typo in the config file is an error naming the key and the file, not silently ignored."""
    path = _write(Path("streamload.toml"), "cache_limt = 5\n")
    with pytest.raises(ConfigError, match=r"'cache_limt'") as info:
        config.load()
    assert str(path.absolute()) in str(info.value)


def test_toml_syntax_error_names_the_file() -> None:
    """Invalid TOML raises ConfigError naming the file."""
    path = _write(Path("streamload.toml"), "cache_limit = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        config.load()
    assert str(path.absolute()) in str(info.value)


def test_unknown_keyword_override_is_rejected() -> None:
    """load() refuses keyword arguments that are not settings."""
    with pytest.raises(ConfigError, match="'cache_size'"):
        config.load(cache_size="1GB")


def test_unknown_streamload_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other STREAMLOAD_* variables do not make loading fail (they are only warned about)."""
    monkeypatch.setenv("STREAMLOAD_SOMETHING_ELSE", "x")
    monkeypatch.setattr(config, "_WARNED_VARIABLES", set())
    with pytest.warns(UserWarning, match="STREAMLOAD_SOMETHING_ELSE is not a streamload setting"):
        assert config.load().cache_limit == 20 * 2**30


def test_a_misspelled_variable_warns_once_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """STREAMLOAD_CACHE_LIMT would silently do nothing: load() warns once per process, naming
    the variable and the known one it was probably meant to be."""
    monkeypatch.setenv("STREAMLOAD_CACHE_LIMT", "1GB")
    monkeypatch.setattr(config, "_WARNED_VARIABLES", set())
    with pytest.warns(UserWarning) as record:
        cfg = config.load()
        config.load()
    assert [str(w.message) for w in record] == [
        "environment variable STREAMLOAD_CACHE_LIMT is not a streamload setting and is ignored;"
        " did you mean STREAMLOAD_CACHE_LIMIT?"
    ]
    assert cfg.cache_limit == 20 * 2**30


@pytest.mark.parametrize(
    "name", ["STREAMLOAD_CONFIG", "STREAMLOAD_SANITIZE", "STREAMLOAD_DEBUG", "STREAMLOAD_RETRIES"]
)
def test_known_variables_that_are_not_settings_do_not_warn(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """STREAMLOAD_CONFIG (the config file) and the native build switches are known names."""
    path = tmp_path / "c.toml"
    path.write_text("")
    monkeypatch.setenv(name, str(path) if name == "STREAMLOAD_CONFIG" else "0")
    monkeypatch.setattr(config, "_WARNED_VARIABLES", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config.load()


def test_none_override_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """An override of None leaves the lower layers in charge."""
    monkeypatch.setenv("STREAMLOAD_SHARD_SIZE", "1MB")
    cfg = config.load(shard_size=None)
    assert cfg.shard_size == 10**6
    assert cfg.source("shard_size") == "env STREAMLOAD_SHARD_SIZE"


def test_bad_env_value_names_key_value_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad size from the environment names the key, the value and the variable."""
    monkeypatch.setenv("STREAMLOAD_CACHE_LIMIT", "20 gigs")
    with pytest.raises(ConfigError) as info:
        config.load()
    assert str(info.value) == (
        "cache_limit = '20 gigs' from env STREAMLOAD_CACHE_LIMIT: not a size"
        " (examples: 512MB, 20GiB, 1000000)"
    )


def test_bad_file_value_names_key_value_and_file() -> None:
    """A bad value from the config file names the key, the value and the file."""
    path = _write(Path("streamload.toml"), 'verify_local = "maybe"\n')
    with pytest.raises(ConfigError) as info:
        config.load()
    message = str(info.value)
    assert message.startswith(f"verify_local = 'maybe' from file {path.absolute()}: ")
    assert "boolean" in message


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("ring_size", -1, "a size must be >= 0"),
        ("ring_size", "lots", "not a size"),
        ("compression", "gzip", "not one of none, zstd, lz4"),
        ("progress", True, "not one of auto, always, never"),
        ("log_level", "LOUD", "not one of DEBUG, INFO, WARNING, ERROR"),
        ("start_method", "thread", "not one of auto, fork, spawn, forkserver"),
        ("verify_local", 2, "not a boolean"),
        ("cache_dir", "", "not a path"),
    ],
)
def test_bad_argument_value_names_key_value_and_source(
    key: str, value: object, reason: str
) -> None:
    """A bad keyword value is rejected with key, value, 'argument' and the reason."""
    with pytest.raises(ConfigError) as info:
        config.load(**{key: value})
    assert str(info.value).startswith(f"{key} = {value!r} from argument: {reason}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1000000", 10**6),
        (" 64 KiB ", 64 * 2**10),
        (0, 0),
        (4096, 4096),
    ],
)
def test_sizes_parse_decimal_and_binary_units(text: object, expected: int) -> None:
    """Sizes accept ints, decimal (10^n) and binary (2^n) units."""
    assert config.load(shard_size=text).shard_size == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("FALSE", False),
        ("1", True),
        ("0", False),
        ("Yes", True),
        ("no", False),
        ("on", True),
        ("OFF", False),
    ],
)
def test_bools_parse_words_from_env(
    monkeypatch: pytest.MonkeyPatch, text: str, expected: bool
) -> None:
    """Boolean env values accept true/false, 1/0, yes/no, on/off in any case."""
    monkeypatch.setenv("STREAMLOAD_VERIFY_LOCAL", text)
    assert config.load().verify_local is expected


def test_toml_booleans_and_ints_parse() -> None:
    """Native TOML booleans and integers are accepted."""
    _write(Path("streamload.toml"), "verify_local = false\nshard_size = 1234\n")
    cfg = config.load()
    assert cfg.verify_local is False
    assert cfg.shard_size == 1234


def test_choices_are_case_insensitive_and_normalised() -> None:
    """Choice settings accept any case and store the canonical spelling."""
    cfg = config.load(log_level="debug", compression="ZSTD", start_method="Spawn")
    assert (cfg.log_level, cfg.compression, cfg.start_method) == ("DEBUG", "zstd", "spawn")


def test_cache_dir_expands_user_and_becomes_absolute(isolated: Path) -> None:
    """cache_dir expands ~ and resolves relative paths against the current directory."""
    assert config.load(cache_dir="~/c").cache_dir == str(isolated / "home" / "c")
    assert config.load(cache_dir="rel").cache_dir == str(isolated / "work" / "rel")


def test_config_is_frozen_and_lists_every_setting() -> None:
    """Config cannot be mutated, and items() lists each registered setting once, in order."""
    cfg = config.load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shard_size = 1  # type: ignore[misc]
    assert [k for k, _ in cfg.items()] == list(config.setting_names())
    assert [s.name for s in config.settings()] == list(config.setting_names())
    assert "_sources" not in config.setting_names()


def test_source_of_unknown_key_is_an_error() -> None:
    """Asking the source of a non-setting raises ConfigError naming it."""
    with pytest.raises(ConfigError, match="'nope'"):
        config.load().source("nope")


def test_package_exposes_config_module() -> None:
    """sl.config.load() works after a plain `import streamload`."""
    import streamload as sl

    assert sl.config.load().progress == "auto"
