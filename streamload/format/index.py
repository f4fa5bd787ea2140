"""index.json: the manifest that makes a directory of shards a dataset.

Format version 1::

    {"format_version": 1, "format": "arrow" | "lmdb", "schema": {"columns": [...]},
     "num_samples": N,
     "shards": [{"name": "shard-00000.arrow", "num_samples": n, "bytes": b, "xxh3_64": "hex"}, ...]}

Format version 2 adds two optional keys, and a writer uses it only when it needs one of them
(otherwise it writes version 1, byte for byte what older readers expect; they refuse version 2
with a message to upgrade, never misread it):

- per shard, ``"elements"``: ``{"tokens": 123456}``, the total number of array elements of each
  variable-shape array column in that shard (the tokens of a token corpus), so a reader can lay
  out the concatenated stream (``N // block_size`` blocks, which shard holds token t) from
  index.json alone, never opening every shard up front; a version 1 index, or a shard without
  the key, has its totals counted from the shard itself when a token reader first needs them;
- at the top, ``"version"`` (an int >= 2): the number of this index of an appended dataset (see
  `streamload.write.commit`); the first version carries none, and each earlier version stays
  readable as ``index.v<N>.json`` (`version_name`).

An optional ``"metadata"`` object carries facts about the data that are not columns (``convert``
stores an image folder's class names as ``{"classes": [...]}``); it is omitted when empty.

Each shard has exactly one checksum key, ``xxh3_64`` (written by ShardWriter) or ``sha256``.
Invariants checked by ``parse_index`` before anything else is read: the version is one this
streamload reads, counts are non-negative ints and the shard counts sum to ``num_samples``, shard
names are plain, unique file names (no separators, ``..``, drive letters, NUL: a manifest must
never make us touch a path outside the dataset root). A symlink placed at a shard's name IS
followed wherever it points (shards kept on another disk): index.json alone can never reach
outside the root, whoever can place a link in the dataset directory could as well place the file,
and the target is held to the shard's size and checksum like any shard; a target that is not a
regular file (FIFO, device, directory) is refused. ShardWriter writes index.json last, so a
dataset without one is incomplete (an interrupted writer) and is refused.

Hostile input: every malformed index is a `FormatError`, never another exception, a hang or an
unbounded read. ``format_version`` must be a JSON integer (``1.0`` or ``true`` are refused); JSON
nested deeper than the interpreter can parse, and ``metadata`` nested deeper than
``MAX_METADATA_DEPTH``, are refused; values quoted in messages are cut to a few levels and
characters. A local index.json must be a regular file (a symlink to one is fine): a directory,
FIFO or device is refused without reading it (opened non-blocking, checked with ``fstat``), and
at most ``MAX_INDEX_BYTES`` are read whatever the file's size claims.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from streamload.errors import FormatError, quote
from streamload.format.checksum import ALGORITHMS, DIGEST_HEX_LEN
from streamload.format.schema import Schema, schema_from_json
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy

INDEX_NAME = "index.json"
_VERSION_NAME = "index.v{}.json"
FORMAT_VERSIONS = (1, 2)
FORMATS = ("arrow", "lmdb")
MAX_INDEX_BYTES = 256 * 2**20  # a million shards fit in far less; bounds a hostile file
MAX_METADATA_DEPTH = 64  # nesting of index.json's "metadata" object
# (remote object metadata, fetch) -> index.json bytes: a kept copy, or fetch() (see read_index).
KeepCopy = Callable[[dict[str, Any], Callable[[], bytes]], bytes]
_MAX_COUNT = 2**53  # JSON numbers past this are not exact
_CONTROL = re.compile(r"[\x00-\x1f]")
_LOWER_HEX = re.compile(r"[0-9a-f]*")


@dataclass(frozen=True)
class ShardInfo:
    """One shard as index.json describes it."""

    name: str
    num_samples: int
    bytes: int
    checksum_algorithm: str
    checksum: str
    #: Elements per variable-shape array column (format version 2), or None if not recorded.
    elements: Mapping[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON form of this shard's entry."""
        out: dict[str, Any] = {
            "name": self.name,
            "num_samples": self.num_samples,
            "bytes": self.bytes,
            self.checksum_algorithm: self.checksum,
        }
        if self.elements is not None:
            out["elements"] = dict(self.elements)
        return out


@dataclass(frozen=True)
class DatasetIndex:
    """A parsed, validated index.json."""

    format_version: int
    format: str
    schema: Schema
    num_samples: int
    shards: tuple[ShardInfo, ...]
    metadata: dict[str, Any] | None = None
    version: int = 1

    @cached_property
    def sample_offsets(self) -> np.ndarray:
        """int64 array of len(shards)+1: shard k holds global ids [offsets[k], offsets[k+1])."""
        counts = np.fromiter((s.num_samples for s in self.shards), np.int64, len(self.shards))
        return np.concatenate([np.zeros(1, np.int64), np.cumsum(counts)])

    @property
    def total_bytes(self) -> int:
        """Sum of the shard sizes."""
        return sum(s.bytes for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        """The JSON form of the index."""
        out = {
            "format_version": self.format_version,
            "format": self.format,
            "schema": self.schema.to_json(),
            "num_samples": self.num_samples,
            "shards": [s.to_json() for s in self.shards],
        }
        if self.metadata:
            out["metadata"] = self.metadata
        if self.version != 1:
            out["version"] = self.version
        return out

    def to_bytes(self) -> bytes:
        """index.json's bytes (UTF-8, trailing newline): indented for people, one line per shard
        (each line encoded by json's C encoder, so a million shards serialise in seconds)."""
        out = self.to_json()
        shards = out.pop("shards")
        head = json.dumps(out, indent=1)[:-2]  # without the closing "\n}"
        lines = ",\n  ".join(json.dumps(s, separators=(", ", ": ")) for s in shards)
        body = f"[\n  {lines}\n ]" if shards else "[]"
        return f'{head},\n "shards": {body}\n}}\n'.encode()


def version_name(version: int) -> str:
    """The file name that keeps version ``version`` of a dataset's index once a later one exists."""
    return _VERSION_NAME.format(int(version))


def validate_shard_name(name: object, source: str) -> str:
    """Check that a shard name is a plain file name safe to join to the dataset root.

    Rejects (under both POSIX and Windows rules): empty, ``.``, ``..``, any ``/`` or ``\\``,
    NUL or other control characters, drive letters and any ``:`` (``C:x``), absolute and UNC paths.

    Args:
        name: the name from index.json.
        source: where it came from, for the message.

    Returns:
        The name, unchanged.

    Raises:
        FormatError: the name is unsafe or not a string.
    """
    if not isinstance(name, str):
        raise FormatError(f"{source}: shard name must be a string, got {quote(name)}")
    bad = (
        name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or ":" in name
        or _CONTROL.search(name) is not None
        or os.path.isabs(name)
        or name != name.strip()
        or len(name) > 255
    )
    if bad:
        raise FormatError(
            f"{source}: unsafe shard name {quote(name)}: shard names must be plain file names"
            " (no path separators, '..', drive letters, control characters or leading/trailing spaces)"
        )
    return name


def parse_index(data: bytes, source: str) -> DatasetIndex:
    """Parse and validate index.json's bytes.

    Args:
        data: the file's contents.
        source: its URL, for error messages.

    Returns:
        The validated index.

    Raises:
        FormatError: not JSON, unknown format_version or format, bad schema, bad counts or names.
    """
    if len(data) > MAX_INDEX_BYTES:
        raise FormatError(
            f"{source}: index is {len(data)} bytes, more than the {MAX_INDEX_BYTES} allowed"
        )
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"{source}: index is not valid JSON: {exc}") from exc
    except RecursionError:
        raise FormatError(f"{source}: index is nested too deeply to be an index") from None
    if not isinstance(raw, Mapping):
        raise FormatError(f"{source}: index must be a JSON object")
    version = raw.get("format_version")
    if type(version) is not int or version not in FORMAT_VERSIONS:  # not 1.0, not true
        raise FormatError(
            f"{source}: format_version {quote(version)} is not supported; this streamload reads"
            f" format_version {', '.join(map(str, FORMAT_VERSIONS))} (upgrade streamload to read newer datasets)"
        )
    expected_keys = {"format_version", "format", "schema", "num_samples", "shards"}
    metadata = raw.get("metadata")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise FormatError(f"{source}: 'metadata' must be a JSON object")
    if metadata is not None and _depth_exceeds(metadata, MAX_METADATA_DEPTH):
        raise FormatError(
            f"{source}: 'metadata' is nested more than {MAX_METADATA_DEPTH} levels deep"
        )
    index_version = raw.get("version", 1)
    if type(index_version) is not int or not 1 <= index_version <= _MAX_COUNT:
        raise FormatError(
            f"{source}: 'version' must be an integer in [1, 2**53], got {quote(index_version)}"
        )
    optional = {"metadata", "version"} if version >= 2 else {"metadata"}
    if set(raw) - optional != expected_keys:
        missing = sorted(expected_keys - set(raw))
        extra = sorted(str(k) for k in set(raw) - expected_keys)
        raise FormatError(
            f"{source}: index keys do not match version {version} (missing {missing}, extra {extra})"
        )
    fmt = raw["format"]
    if fmt not in FORMATS:
        raise FormatError(f"{source}: unknown format {quote(fmt)}; known: {', '.join(FORMATS)}")
    schema = schema_from_json(raw["schema"], source)
    num_samples = _count(raw["num_samples"], f"{source}: num_samples")
    raw_shards = raw["shards"]
    if not isinstance(raw_shards, list):
        raise FormatError(f"{source}: 'shards' must be a list")
    shards = tuple(
        _parse_shard(s, f"{source}: shard {i}", version, schema) for i, s in enumerate(raw_shards)
    )
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise FormatError(f"{source}: duplicate shard names")
    total = sum(s.num_samples for s in shards)
    if total != num_samples:
        raise FormatError(
            f"{source}: shards hold {total} samples but num_samples says {num_samples}"
        )
    return DatasetIndex(
        version, fmt, schema, num_samples, shards, dict(metadata or {}) or None, index_version
    )


def _depth_exceeds(value: object, limit: int) -> bool:
    """Whether JSON ``value`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parse_shard(raw: object, where: str, version: int, schema: Schema) -> ShardInfo:
    if not isinstance(raw, Mapping):
        raise FormatError(f"{where}: expected an object")
    name = validate_shard_name(raw.get("name"), where)
    algorithms = [a for a in ALGORITHMS if a in raw]
    known = {"name", "num_samples", "bytes", *ALGORITHMS, *(("elements",) if version >= 2 else ())}
    extra = sorted(str(k) for k in raw if k not in known)
    if len(algorithms) != 1 or extra:
        raise FormatError(
            f"{where} ({name}): needs exactly one checksum key of {', '.join(ALGORITHMS)}"
            f" and no other keys (found checksums {algorithms}, unexpected keys {quote(extra)})"
        )
    algorithm = algorithms[0]
    digest = raw[algorithm]
    if (
        not isinstance(digest, str)
        or len(digest) != DIGEST_HEX_LEN[algorithm]
        or _LOWER_HEX.fullmatch(digest) is None
    ):
        raise FormatError(
            f"{where} ({name}): {algorithm} must be {DIGEST_HEX_LEN[algorithm]} lowercase hex digits"
        )
    return ShardInfo(
        name=name,
        num_samples=_count(raw.get("num_samples"), f"{where} ({name}): num_samples"),
        bytes=_count(raw.get("bytes"), f"{where} ({name}): bytes"),
        checksum_algorithm=algorithm,
        checksum=digest,
        elements=_elements(raw.get("elements"), f"{where} ({name}): elements", schema),
    )


def _elements(raw: object, where: str, schema: Schema) -> dict[str, int] | None:
    """A shard's ``elements`` object: counts of variable-shape array columns of the schema."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise FormatError(f"{where} must be an object of column name -> element count")
    variable = {c.name for c in schema.columns if c.kind == "ndarray" and c.uses_var_layout}
    unknown = sorted(str(k) for k in raw if k not in variable)
    if unknown:
        raise FormatError(
            f"{where} names {quote(unknown)}, which are not variable-shape array columns of the"
            " schema"
        )
    out = {}
    for k, v in raw.items():
        if type(v) is not int or not 0 <= v <= _MAX_COUNT:  # the message only when it fails
            _count(v, f"{where}[{quote(k)}]")
        out[str(k)] = v
    return out


def _count(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise FormatError(f"{where} must be an integer in [0, 2**53], got {quote(value)}")
    return value


def load_index(
    url: str | os.PathLike[str],
    storage_options: dict[str, Any] | None = None,
    policy: RetryPolicy | None = None,
    version: int | None = None,
) -> DatasetIndex:
    """Read and validate ``<url>/index.json``, or an earlier version of it (remote requests
    retried under ``policy``).

    Args:
        version: None for the current version; else that version (``index.v<N>.json`` once a
            later version exists).

    Raises:
        FormatError: index.json is missing (the dataset is missing or incomplete: an interrupted
            ShardWriter never writes it) or invalid; no such version.
        StoreError: the URL cannot be opened.
    """
    fs, root = store.resolve(url, storage_options, policy)
    current = read_index(fs, store.join(root, INDEX_NAME), f"{os.fspath(url)}/{INDEX_NAME}")
    if version is None or version == current.version:
        return current
    name = version_name(version)
    if not 1 <= version < current.version:
        raise FormatError(
            f"{os.fspath(url)}: no version {version}; the dataset is at version {current.version}"
        )
    index = read_index(fs, store.join(root, name), f"{os.fspath(url)}/{name}")
    if index.version != version:
        raise FormatError(f"{os.fspath(url)}/{name} holds version {index.version}, not {version}")
    return index


def read_index(fs: Any, path: str, source: str, keep: KeepCopy | None = None) -> DatasetIndex:
    """Read and validate the index at ``path`` of filesystem ``fs`` (see ``load_index``).

    Args:
        keep: for a remote index, ``keep(metadata, fetch) -> bytes`` may serve a kept copy
            that still matches the object's fresh ``metadata`` instead of calling ``fetch()``
            (the dataset passes the node's shard cache: `streamload.cache.index_copy.node_copy`).
    """
    if store.is_remote(fs):
        return parse_index(_read_remote_index(fs, path, source, keep), source)
    local = store.local_path(fs, path)
    if local is not None:
        return parse_index(_read_local_index(local, source), source)
    try:
        size = fs.size(path)
        if size is not None and size > MAX_INDEX_BYTES:
            raise FormatError(
                f"{source}: index is {size} bytes, more than the {MAX_INDEX_BYTES} allowed"
            )
        with fs.open(path, "rb") as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except FileNotFoundError:
        raise FormatError(_not_found(source)) from None
    except IsADirectoryError:
        raise FormatError(f"{source} is a directory, not an index file") from None
    return parse_index(data, source)


def _not_found(source: str) -> str:
    return (
        f"{source} not found: the dataset is missing or incomplete (a ShardWriter writes"
        " index.json last, so an interrupted write leaves none)"
    )


def _read_local_index(path: str, source: str) -> bytes:
    """A local index.json's bytes: a regular file (symlinks followed), read without blocking
    and at most ``MAX_INDEX_BYTES`` + 1 bytes whatever its size says.

    Raises:
        FormatError: missing, not a regular file, or too large.
        StoreError: it exists but cannot be read (permissions, I/O error).
    """
    from streamload.errors import StoreError

    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise FormatError(_not_found(source)) from None
    except OSError as exc:
        raise StoreError(f"{source}: cannot open: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
            raise FormatError(f"{source} is {kind}, not a regular file")
        chunks, total = [], 0
        while total <= MAX_INDEX_BYTES:
            chunk = os.read(fd, min(4 * 2**20, MAX_INDEX_BYTES + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise StoreError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return b"".join(chunks)


def _read_remote_index(fs: Any, path: str, source: str, keep: KeepCopy | None) -> bytes:
    """index.json of a remote dataset, through the retrying store (a stat, then one GET unless
    the node's cached copy still matches)."""
    import errno

    from streamload.errors import StoreError

    try:
        meta = store.info(fs, path)
        size = meta.get("size")
        if isinstance(size, int) and size > MAX_INDEX_BYTES:
            raise FormatError(
                f"{source}: index is {size} bytes, more than the {MAX_INDEX_BYTES} allowed"
            )

        def fetch() -> bytes:
            return store.read_bytes(fs, path, expected_size=size if isinstance(size, int) else None)

        return fetch() if keep is None else keep(meta, fetch)
    except StoreError as exc:
        if exc.errno == errno.ENOENT:
            raise FormatError(_not_found(source)) from exc
        raise
