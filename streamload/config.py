"""Effective settings of streamload, and where each one came from.

Every setting is declared exactly once, as a field of `Config` built with `_setting(parser,
default, doc)`: that line is its name, type, parser, built-in default and documentation. Adding a
setting means adding one such line; `load()`, the environment variable, the config file key and
`streamload config` all follow from it.

`load(**overrides)` layers four sources, lowest to highest precedence:

1. built-in defaults;
2. one TOML config file: ``$STREAMLOAD_CONFIG`` if set (it must exist), else ``./streamload.toml``,
   else ``$XDG_CONFIG_HOME/streamload/config.toml`` (``~/.config/streamload/config.toml``). Keys
   are flat (``cache_limit = "20GiB"``), optionally inside a ``[streamload]`` table;
3. environment variables ``STREAMLOAD_<KEY>`` (``STREAMLOAD_CACHE_LIMIT=2GiB``);
4. keyword arguments of `load()` (None means "not given").

Invariants: every value is parsed by its setting's parser whatever its source (so a default can
never be of a different type than a configured value); a bad value, an unknown key in the file,
an unknown keyword, a missing ``$STREAMLOAD_CONFIG`` file or a TOML syntax error raises
`ConfigError` naming the key, the value and the source. An unknown ``STREAMLOAD_*`` environment
variable (a misspelled setting such as ``STREAMLOAD_CACHE_LIMT``) is not an error, since other
tools may share the prefix, but `load()` warns once per process per name, naming the closest
known variable (`KNOWN_VARIABLES`: every setting's, ``STREAMLOAD_CONFIG`` and the build
switches). Relative paths are resolved against
the current directory when `load()` runs. `load()` has no side effects: it reads, it never
configures logging or creates directories.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from streamload.errors import ConfigError
from streamload.sizes import parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

ENV_PREFIX = "STREAMLOAD_"
CONFIG_ENV = "STREAMLOAD_CONFIG"
# Environment variables of streamload that are not settings: the config file, and the native
# build's switches (setup.py).
OTHER_VARIABLES = (CONFIG_ENV, "STREAMLOAD_SANITIZE", "STREAMLOAD_DEBUG")
LOCAL_CONFIG_NAME = "streamload.toml"

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


# --- parsers: object (str from env, any TOML value, any Python value) -> typed value ------------
# Each raises ValueError with a short reason; load() adds the key, value and source.


def _size(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError("a size must be >= 0")
    try:
        return parse_size(value, what="size")
    except ValueError:
        raise ValueError("not a size (examples: 512MB, 20GiB, 1000000)") from None


def _size_or_auto(value: object) -> int:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return 0
    return _size(value)


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError("not a boolean (use true/false, 1/0, yes/no or on/off)")


def _path(value: object) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError("not a path")
    return os.path.abspath(os.path.expanduser(os.fspath(value)))


def _count(value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError("not a whole number") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("not a whole number")
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ValueError("not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number of seconds")
    if not 0 <= value < float("inf"):
        raise ValueError("must be a finite number >= 0")
    return float(value)


def _timeout(value: object) -> float:
    seconds = _seconds(value)
    if seconds == 0:
        raise ValueError("must be > 0 (a request without a time limit could hang)")
    return seconds


def _choice(*choices: str, none: str | None = None, upper: bool = False) -> Callable[[object], Any]:
    """A parser accepting one of ``choices`` (case-insensitive); ``none`` maps that word to None."""

    def parse(value: object) -> str | None:
        if isinstance(value, str):
            word = value.strip().upper() if upper else value.strip().lower()
            if word in choices:
                return None if word == none else word
        raise ValueError(f"not one of {', '.join(choices)}")

    return parse


def _positive_int(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer >= 1")
    try:
        number = int(value) if isinstance(value, (int, str)) else None
    except ValueError:
        number = None
    if number is None or number < 1:
        raise ValueError("not an integer >= 1")
    return number


def _default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says relative XDG_* paths are invalid and must be ignored.
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "streamload")


def _setting(parse: Callable[[object], Any], default: object, doc: str) -> Any:
    """Declare one setting: a `Config` field carrying its parser, raw default and doc line.

    ``default`` is a raw value (parsed like any other) or a zero-argument callable producing one
    at `load()` time (for defaults that depend on the environment, such as the cache directory).
    """
    return dataclasses.field(metadata={"parse": parse, "default": default, "doc": doc})


@dataclasses.dataclass(frozen=True)
class Config:
    """The effective settings (one attribute per setting) and the source of each.

    Build it with `load()`. Attributes are already parsed: sizes are ints (bytes), paths are
    absolute strings, choices are lower-case strings (``compression`` is None for "none"),
    ``log_level`` is an upper-case level name.
    """

    # name: type = _setting(parser, built-in default, one-line doc)  -- one line per setting
    cache_dir: str = _setting(_path, _default_cache_dir, "where downloaded shards are cached")
    cache_limit: int = _setting(_size, "20GiB", "max bytes of the on-disk shard cache")
    shard_size: int = _setting(_size, "256MB", "ShardWriter's default shard size")
    compression: str | None = _setting(
        _choice("none", "zstd", "lz4", none="none"), "none", "ShardWriter's default compression"
    )
    verify_local: bool = _setting(
        _bool, True, "verify xxh3 checksums of local shards on first open per process"
    )
    progress: str = _setting(
        _choice("auto", "always", "never"), "auto", "progress bars: auto = only on a terminal"
    )
    log_level: str = _setting(
        _choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True),
        "WARNING",
        "streamload's logger level",
    )
    ring_size: int = _setting(
        _size_or_auto,
        "auto",
        "shared-memory ring bytes per loader worker; auto (0) = 4MiB (batches stream through it"
        " in chunks); with zero_copy, from the dataset's sample sizes on the columnar path, else"
        " 64MiB",
    )
    heap_retain: int = _setting(
        _size,
        "64MiB",
        "freed heap a loader process keeps for the next batch instead of page-faulting it back"
        " (glibc): workers' trim threshold; the trainer only primes glibc's own sliding"
        " thresholds, never mallopt (0 = leave malloc alone)",
    )
    start_method: str = _setting(
        _choice("auto", "fork", "spawn", "forkserver"),
        "auto",
        "start method of loader workers: auto = fork while the trainer runs no other Python"
        " thread, else forkserver (torch preloaded)",
    )
    shuffle_mode: str = _setting(
        _choice("full", "block"),
        "block",
        "StreamingDataset shuffle: full permutation, or block (shards shuffled, then samples"
        " within windows of shuffle_block shards)",
    )
    shuffle_block: int = _setting(
        _positive_int, 16, "shards per shuffle window in shuffle_mode=block"
    )
    retries: int = _setting(
        _count, 5, "retries of a failed remote request (attempts = retries + 1)"
    )
    retry_backoff: float = _setting(
        _seconds, 0.5, "base seconds of the jittered exponential backoff between retries"
    )
    request_timeout: float = _setting(_timeout, 60, "time limit in seconds of one remote request")
    readahead_shards: int = _setting(
        _count, 2, "remote shards each reading process downloads ahead of use"
    )
    readahead_bytes: int = _setting(
        _size, "2GiB", "max bytes each reading process reserves in the cache ahead of use"
    )

    # Not a setting: where each setting's value came from (see `source`).
    _sources: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def source(self, key: str) -> str:
        """Where a setting's value came from.

        Returns:
            ``"default"``, ``"file /path/config.toml"``, ``"env STREAMLOAD_KEY"`` or
            ``"argument"``.

        Raises:
            ConfigError: ``key`` is not a setting.
        """
        _check_key(key, "Config.source()")
        return self._sources.get(key, "default")

    def items(self) -> Iterator[tuple[str, Any]]:
        """Yield ``(key, value)`` for every setting, in declaration order."""
        for name in setting_names():
            yield name, getattr(self, name)


@dataclasses.dataclass(frozen=True)
class Setting:
    """Read-only description of one setting (for help texts and `streamload config`)."""

    name: str
    doc: str
    env: str
    # "size" (int bytes), "size_or_auto" (int bytes, 0 = auto), "bool", "path", "int", "seconds"
    # (float) or "choice"
    kind: str


def settings() -> tuple[Setting, ...]:
    """Every setting, in declaration order."""
    kinds = {
        _size: "size",
        _size_or_auto: "size_or_auto",
        _bool: "bool",
        _path: "path",
        _count: "int",
        _seconds: "seconds",
        _timeout: "seconds",
    }
    return tuple(
        Setting(
            f.name,
            f.metadata["doc"],
            ENV_PREFIX + f.name.upper(),
            kinds.get(f.metadata["parse"], "choice"),
        )
        for f in _setting_fields()
    )


def setting_names() -> tuple[str, ...]:
    """The names of every setting, in declaration order."""
    return tuple(f.name for f in _setting_fields())


def _setting_fields() -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(Config) if "parse" in f.metadata)


def _check_key(key: str, where: str) -> None:
    if key not in setting_names():
        raise ConfigError(
            f"unknown setting {key!r} in {where}; known settings: {', '.join(setting_names())}"
        )


def config_file_path() -> Path | None:
    """The config file `load()` reads, or None if there is none.

    Raises:
        ConfigError: ``$STREAMLOAD_CONFIG`` is set but names no file.
    """
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} from env {CONFIG_ENV} does not exist")
        return path.absolute()
    local = Path(LOCAL_CONFIG_NAME)
    if local.is_file():
        return local.absolute()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    user = base / "streamload" / "config.toml"
    return user if user.is_file() else None


def _read_file(path: Path) -> dict[str, object]:
    """The flat ``{key: raw value}`` of a config file; the ``[streamload]`` table is merged in."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    table = data.pop("streamload", None)
    if table is not None:
        if not isinstance(table, dict):
            raise ConfigError(f"config file {str(path)!r}: 'streamload' must be a table")
        for key, value in table.items():
            if key in data:
                raise ConfigError(
                    f"config file {str(path)!r}: {key!r} is set both at top level and in [streamload]"
                )
            data[key] = value
    for key in data:
        _check_key(key, f"config file {str(path)!r}")
    return data


def known_variables() -> tuple[str, ...]:
    """Every ``STREAMLOAD_*`` environment variable streamload reads."""
    return tuple(ENV_PREFIX + name.upper() for name in setting_names()) + OTHER_VARIABLES


_WARNED_VARIABLES: set[str] = set()


def warn_unknown_variables(environ: Mapping[str, str] | None = None) -> None:
    """Warn once per process about each ``STREAMLOAD_*`` variable no setting reads, naming the
    closest known one (a typo such as ``STREAMLOAD_CACHE_LIMT`` would otherwise do nothing)."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    for name in environ:
        if not name.startswith(ENV_PREFIX) or name in known or name in _WARNED_VARIABLES:
            continue
        _WARNED_VARIABLES.add(name)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else " (`streamload config` lists them)"
        warnings.warn(
            f"environment variable {name} is not a streamload setting and is ignored{hint}",
            UserWarning,
            stacklevel=3,
        )


def load(**overrides: object) -> Config:
    """Compute the effective configuration (see the module docstring for the precedence).

    Args:
        **overrides: setting values from the caller, highest precedence; None means "not given".

    Returns:
        The parsed settings with the source of each.

    Raises:
        ConfigError: an unknown keyword or file key, a bad value (the message names the key, the
            value and its source), a missing ``$STREAMLOAD_CONFIG`` file, or invalid TOML.
    """
    for key in overrides:
        _check_key(key, "streamload.config.load() keyword arguments")
    warn_unknown_variables()
    layers: list[tuple[str, Mapping[str, object]]] = []
    path = config_file_path()
    if path is not None:
        layers.append((f"file {path}", _read_file(path)))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for field in _setting_fields():
        name = field.name
        raw, source = field.metadata["default"], "default"
        if callable(raw):
            raw = raw()
        for layer_source, layer in layers:
            if name in layer:
                raw, source = layer[name], layer_source
        env_name = ENV_PREFIX + name.upper()
        if env_name in os.environ:
            raw, source = os.environ[env_name], f"env {env_name}"
        if overrides.get(name) is not None:
            raw, source = overrides[name], "argument"
        try:
            values[name] = field.metadata["parse"](raw)
        except ValueError as exc:
            raise ConfigError(f"{name} = {raw!r} from {source}: {exc}") from None
        sources[name] = source
    return Config(**values, _sources=sources)
