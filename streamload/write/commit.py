"""Commit: the one step that turns staged shard files into a dataset, or a new version of one.

Writers never publish anything. A writer (``ShardWriter`` in one process; each task of
``streamload.ray.ShardDatasink`` on a cluster) puts finished shard files in the dataset root under
names no index references yet -- *staged* shards -- and hands back their metadata
(`StagedShard`: the index entry, the schema it was written with, and its place in the dataset).
`commit` then, in this order:

1. validates all the metadata together: one format, one schema (the base version's when
   appending; a `FormatError` names the difference), unique plain names that collide with no
   shard of the base version, unique places;
2. lists the root once and checks that every staged shard is there with its recorded size;
3. when appending, checks that ``index.json`` is still the version the writer started from (else
   `StoreError`: another writer committed meanwhile) and keeps that version under its numbered
   name (``index.version_name``);
4. parses the new index's bytes with the readers' own parser (so a writer bug never publishes an
   unreadable index: unsafe names, counts that do not sum), writes ``index.json``, the single
   commit point -- temp file + fsync + rename + directory fsync on a local disk, one PUT on an
   object store (which publishes a whole object atomically) -- and reads it back byte for byte;
5. deletes the staged files no kept index references (`is_staged_name`): shards of failed,
   retried or duplicated task attempts, temp files and leftovers of interrupted runs.

So a dataset is either complete and verified -- its index lists only shards that exist, with their
sizes and checksums -- or visibly absent: before step 4 no reader can see any of it.

Versions: an index.json, once written, is never modified. An append writes a new one carrying
``"version": N + 1`` after keeping version N as ``index.v<N>.json``; appends only add shards, so
every shard of every kept version stays where it is and a reader that opened an older index keeps
reading it. ``overwrite`` starts again at version 1: the old index is removed before anything is
written (`prepare`), and commit deletes the old shards and kept versions.

One writer at a time per dataset: commit catches a concurrent append (step 3), not two writers
staging into one root (the first commit's clean-up would delete the other's staged files).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from streamload.errors import ConfigError, FormatError, StoreError
from streamload.format.index import (
    FORMATS,
    INDEX_NAME,
    DatasetIndex,
    ShardInfo,
    parse_index,
    read_index,
    version_name,
)
from streamload.format.schema import Schema, schema_from_json
from streamload.store import filesystem as store

MODES = ("create", "append")
# Shard files writers stage (``shard-<lowercase alphanumeric parts>.<ext>``) and their temp files
# (``.<shard name>.tmp-<pid>-<hex>``): the only files commit's clean-up may delete.
_STAGED_RE = re.compile(
    r"^\.?shard-[0-9a-z]+(?:-[0-9a-z]+)*\.(?:arrow|lmdb)(?:\.tmp-[0-9]+-[0-9a-f]+)?$"
)
_VERSION_RE = re.compile(r"^index\.v[0-9]+\.json$")


@dataclass(frozen=True)
class StagedShard:
    """A finished shard file a writer staged in the dataset root, not yet in any index.

    ``place`` orders the committed index: ``(task, sequence)`` (a ShardWriter is task 0), so the
    same input split the same way gives the same dataset whatever order tasks finish in.
    """

    info: ShardInfo
    schema: dict[str, Any]
    place: tuple[int, int]


def is_staged_name(name: str) -> bool:
    """Whether ``name`` is a shard file or shard temp file a writer stages (commit may delete it)."""
    return _STAGED_RE.match(name) is not None


def check_mode(mode: str, what: str) -> str:
    """Validate a writer's ``mode`` argument.

    Raises:
        ConfigError: not one of MODES.
    """
    if mode not in MODES:
        raise ConfigError(f"{what} mode: unknown mode {mode!r}; use 'create' or 'append'")
    return mode


def prepare(fs: Any, root: str, url: str, mode: str, overwrite: bool) -> DatasetIndex | None:
    """Get the destination ready before anything is staged; return the base version.

    ``create``: a dataset already there is refused unless ``overwrite``, which removes its
    index.json now (the old dataset is visibly gone while the new one is written). ``append``:
    the current index (None if there is no dataset yet: the first append creates it).

    Raises:
        StoreError: a dataset exists and mode is create without overwrite.
        FormatError: appending to an invalid index.json.
    """
    index_path = store.join(root, INDEX_NAME)
    remote = store.is_remote(fs)
    if remote:  # object stores have no directories (and s3fs would create a bucket)
        exists = store.exists(fs, index_path)
    else:
        fs.makedirs(root, exist_ok=True)
        exists = fs.exists(index_path)
    if not exists:
        return None
    if mode == "append":
        return read_index(fs, index_path, f"{url}/{INDEX_NAME}")
    if not overwrite:
        raise StoreError(
            f"{url} already holds a dataset ({INDEX_NAME} exists); pass overwrite=True to"
            " replace it or mode='append' to add to it"
        )
    _remove(fs, index_path)
    return None


def commit(
    fs: Any,
    root: str,
    url: str,
    *,
    format: str,
    shards: Sequence[StagedShard],
    schema: Schema | None = None,
    metadata: dict[str, Any] | None = None,
    base: DatasetIndex | None = None,
    overwrite: bool = False,
) -> DatasetIndex:
    """Publish staged shards as the dataset at ``root`` (steps in the module docstring).

    Args:
        fs, root: the destination (``store.resolve``).
        url: the destination URL, for messages.
        format: ``"arrow"`` or ``"lmdb"``.
        shards: every staged shard of this write, in any order.
        schema: the dataset schema; None takes the shards' (or the base's).
        metadata: index.json's ``"metadata"``; when appending, None keeps the base's.
        base: the version an append started from (`prepare`); None writes version 1.
        overwrite: the write replaces a dataset: also delete the kept versions of the old one.

    Returns:
        The committed index.

    Raises:
        FormatError: metadata that do not fit together (names the shard or column at fault), a
            staged shard missing or of the wrong size, no schema at all.
        StoreError: index.json changed since ``base`` was read; a storage failure.
    """
    if format not in FORMATS:
        raise ConfigError(f"commit: unknown format {format!r}; use 'arrow' or 'lmdb'")
    ordered = sorted(shards, key=lambda s: s.place)
    schema = _one_schema(url, ordered, schema, base)
    if base is not None:
        if base.format != format:
            raise FormatError(
                f"{url}: cannot append {format} shards to a dataset of {base.format} shards"
            )
        if metadata and metadata != (base.metadata or {}):
            raise FormatError(
                f"{url}: appended metadata {metadata!r:.200} differs from the dataset's"
                f" {base.metadata!r:.200}"
            )
        metadata = base.metadata
    _check_names(url, ordered, base)
    listing = store.list_sizes(fs, root)
    for staged in ordered:
        info = staged.info
        size = listing.get(info.name)
        if size != info.bytes:
            found = "is missing" if size is None else f"has {size} bytes"
            raise FormatError(
                f"{url}: staged shard {info.name} {found}, its writer reported {info.bytes}"
            )
    kept = base.shards if base is not None else ()
    entries = (*kept, *(s.info for s in ordered))
    version = 1 if base is None else base.version + 1
    # Version 2 only where its keys are needed: an appended version, or element totals.
    needs_v2 = version > 1 or any(s.elements is not None for s in entries)
    index = DatasetIndex(
        format_version=2 if needs_v2 else 1,
        format=format,
        schema=schema,
        num_samples=sum(s.num_samples for s in entries),
        shards=entries,
        metadata=dict(metadata) if metadata else None,
        version=version,
    )
    if base is not None:
        check_base(fs, root, url, base)
        _publish(fs, root, version_name(base.version), base.to_bytes())
    data = index.to_bytes()
    parse_index(data, f"{url}/{INDEX_NAME}")  # a writer bug never publishes an unreadable index
    _publish(fs, root, INDEX_NAME, data)
    if _read_back(fs, store.join(root, INDEX_NAME)) != data:
        raise StoreError(f"{url}/{INDEX_NAME} does not read back as written")
    keep = {s.name for s in index.shards}
    for name in listing:
        if (is_staged_name(name) and name not in keep) or (
            overwrite and base is None and _VERSION_RE.match(name)
        ):
            with contextlib.suppress(OSError):  # committed already: the next commit retries
                _remove(fs, store.join(root, name))
    return index


def check_base(fs: Any, root: str, url: str, base: DatasetIndex) -> None:
    """Check that index.json is still ``base``, the version an append started from.

    Raises:
        StoreError: another writer committed a version meanwhile (nothing is committed).
    """
    current = read_index(fs, store.join(root, INDEX_NAME), f"{url}/{INDEX_NAME}")
    if current != base:
        raise StoreError(
            f"{url}: {INDEX_NAME} changed while this append was written (version"
            f" {current.version} is not the version {base.version} it started from); nothing"
            " was committed: write again"
        )


def discard(fs: Any, root: str, url: str) -> None:
    """Delete the staged files that the dataset's current index.json (if any) does not reference:
    what a failed write leaves behind. Best effort: a storage error leaves them to the next commit,
    and nothing is deleted while an index.json exists that cannot be read."""
    try:
        index_path = store.join(root, INDEX_NAME)
        exists = store.exists(fs, index_path) if store.is_remote(fs) else fs.exists(index_path)
        current = read_index(fs, index_path, f"{url}/{INDEX_NAME}") if exists else None
        names = {s.name for s in current.shards} if current is not None else set()
        listing = store.list_sizes(fs, root)
    except (OSError, FormatError):
        return
    for name in listing:
        if is_staged_name(name) and name not in names:
            with contextlib.suppress(OSError):
                _remove(fs, store.join(root, name))


def _one_schema(
    url: str, shards: Sequence[StagedShard], schema: Schema | None, base: DatasetIndex | None
) -> Schema:
    """The one schema every shard (and the base version) was written with."""
    expected = base.schema if base is not None else schema
    if expected is None and shards:
        expected = schema_from_json(shards[0].schema, f"{url}: shard {shards[0].info.name}")
    if expected is None:
        raise FormatError(f"{url}: no samples written and no schema given, so no {INDEX_NAME}")
    if schema is not None and schema != expected:
        raise FormatError(f"{url}: {schema_difference(expected, schema, 'the dataset', 'given')}")
    want = expected.to_json()
    for staged in shards:
        if staged.schema != want:
            got = schema_from_json(staged.schema, f"{url}: shard {staged.info.name}")
            where = "the dataset" if base is not None else "the first shard"
            raise FormatError(
                f"{url}: shard {staged.info.name}: "
                + schema_difference(expected, got, where, "this shard")
            )
    return expected


def schema_difference(a: Schema, b: Schema, a_name: str, b_name: str) -> str:
    """A message naming the first column where schema ``a`` (of ``a_name``) and ``b`` differ."""
    a_cols = {c.name: c for c in a.columns}
    b_cols = {c.name: c for c in b.columns}
    for name in a.names:
        if name not in b_cols:
            return f"column {name!r} of {a_name} is missing from {b_name}"
        if a_cols[name] != b_cols[name]:
            return (
                f"column {name!r} is {a_cols[name].to_json()} in {a_name} but"
                f" {b_cols[name].to_json()} in {b_name}"
            )
    for name in b.names:
        if name not in a_cols:
            return f"{b_name} has column {name!r}, which {a_name} does not"
    return f"the columns are in another order: {list(a.names)} in {a_name}, {list(b.names)} in {b_name}"


def _check_names(url: str, shards: Sequence[StagedShard], base: DatasetIndex | None) -> None:
    taken = {s.name for s in base.shards} if base is not None else set()
    places: set[tuple[int, int]] = set()
    for staged in shards:
        name = staged.info.name  # validated with the whole index before it is published
        if name in taken:
            raise FormatError(f"{url}: two shards are named {name}")
        if staged.place in places:
            raise FormatError(f"{url}: two staged shards claim place {staged.place} ({name})")
        taken.add(name)
        places.add(staged.place)


def _read_back(fs: Any, path: str) -> bytes:
    local = store.local_path(fs, path)
    if local:
        with open(local, "rb") as f:
            return f.read()
    return store.read_bytes(fs, path) if store.is_remote(fs) else bytes(fs.cat_file(path))


def _publish(fs: Any, root: str, name: str, data: bytes) -> None:
    """Write ``root/name`` whole and atomically (temp + fsync + rename locally; one put)."""
    final = store.join(root, name)
    local = store.local_path(fs, final)
    if store.is_remote(fs):
        store.write_bytes(fs, final, data)
    elif not local:
        fs.pipe_file(final, data)
    else:
        tmp = f"{local}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            if isinstance(exc, OSError):  # a full disk: say which file and how much room is left
                raise store.write_error(exc, tmp, f"committing {name}") from exc
            raise
        fsync_dir(os.path.dirname(local))


def _remove(fs: Any, path: str) -> None:
    if store.is_remote(fs):
        store.remove(fs, path)
    else:
        fs.rm_file(path)


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
