"""Conversion sources: the formats users already have, read as a stream of Arrow record batches.

``open_source(src)`` recognises the source (or takes ``kind=``) and returns a ``Source``: its Arrow
schema, known up front, and an iterator of record batches of at most ``batch_rows`` rows. Nothing
is read whole: Parquet is read row group by row group (``ParquetFile.iter_batches``), JSONL and
CSV with pyarrow's streaming readers (blocks of ``block_bytes``), Arrow IPC batch by batch (local
files memory-mapped), image folders file by file, LMDB environments by cursor. So memory stays
bounded by one batch (plus one row group for Parquet) whatever the source's size.

Kinds and how they are recognised (``src`` is a local path or any fsspec URL):

- ``parquet``: ``*.parquet`` / ``*.pq`` file, or a directory of them (recursively, sorted)
- ``jsonl``: ``*.jsonl`` / ``*.ndjson`` / ``*.json`` (one object per line), or a directory of them
- ``csv``: ``*.csv`` (header row), or a directory of them
- ``arrow``: ``*.arrow`` / ``*.ipc`` / ``*.feather`` (IPC file or stream format), or a directory
- ``hf``: a Hugging Face ``save_to_disk`` directory (``state.json`` listing ``data-*.arrow``
  IPC streams, plus ``dataset_info.json``)
- ``lmdb``: an LMDB environment (directory with ``data.mdb``, or the data file): ``key``, ``value``
- ``imagefolder``: a directory of class subdirectories of images: ``image`` (the encoded file
  bytes) and ``label`` (the class's position in the sorted class names, which go to
  ``metadata["classes"]``)

Files of a multi-file source must share one schema; a file that differs is a ``FormatError``
naming it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from streamload.errors import FormatError
from streamload.store import filesystem as store
from streamload.store.retry import RetryPolicy

BATCH_ROWS = 4096
BLOCK_BYTES = 4 * 2**20
PARQUET_BUFFER_BYTES = 2**20
KINDS = ("parquet", "jsonl", "csv", "arrow", "hf", "lmdb", "imagefolder")
SUFFIXES = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".arrow": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
    ".mdb": "lmdb",
    ".lmdb": "lmdb",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Source:
    """A source opened for conversion: schema first, then bounded record batches."""

    kind: str
    schema: pa.Schema
    batches: Iterator[pa.RecordBatch]
    num_rows: int | None = None
    metadata: dict[str, Any] | None = field(default=None)


def open_source(
    src: str,
    kind: str | None = None,
    storage_options: dict[str, Any] | None = None,
    batch_rows: int = BATCH_ROWS,
    block_bytes: int = BLOCK_BYTES,
    policy: RetryPolicy | None = None,
) -> Source:
    """Open ``src`` as a stream of record batches.

    Args:
        src: a local path or fsspec URL (file or directory).
        kind: one of KINDS; None recognises it (module docstring).
        storage_options: passed to fsspec.
        batch_rows: most rows per batch.
        block_bytes: block size of the JSONL and CSV readers.
        policy: the retry policy of remote requests.

    Raises:
        FormatError: the source kind cannot be recognised or is unknown, no input files, files
            with different schemas, or unreadable input (names the file).
    """
    fs, root = store.resolve(src, storage_options, policy)
    if kind is None:
        kind = detect_kind(fs, root, src)
    if kind not in KINDS:
        raise FormatError(f"convert: unknown source kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "imagefolder":
        return _image_folder(fs, root, src, batch_rows)
    if kind == "lmdb":
        return _lmdb(fs, root, src, batch_rows)
    if kind == "hf":
        files = _hf_files(fs, root, src)
        kind = "arrow"
    else:
        files = _files(fs, root, src, kind)
    opener = {"parquet": _parquet, "jsonl": _jsonl, "csv": _csv, "arrow": _arrow}[kind]
    first_schema, first_batches, total = opener(fs, files[0], batch_rows, block_bytes)

    def batches() -> Iterator[pa.RecordBatch]:
        yield from first_batches
        for path in files[1:]:
            schema, more, _ = opener(fs, path, batch_rows, block_bytes)
            if not schema.equals(first_schema):
                raise FormatError(
                    f"convert: {path} has schema {schema}, unlike the first file {files[0]}:"
                    f" {first_schema}"
                )
            yield from more

    num_rows = total if len(files) == 1 else None
    if kind == "parquet" and len(files) > 1:
        num_rows = sum(_parquet_rows(fs, p) for p in files)
    return Source(kind, first_schema, batches(), num_rows)


def detect_kind(fs: Any, root: str, src: str) -> str:
    """Recognise a source's kind from its name or directory contents (module docstring).

    Raises:
        FormatError: nothing recognisable there.
    """
    if not fs.exists(root):
        raise FormatError(f"convert: source {src} does not exist")
    if fs.isfile(root):
        for suffix, kind in SUFFIXES.items():
            if root.lower().endswith(suffix):
                return kind
        raise FormatError(
            f"convert: cannot tell the format of {src} from its name; pass source_format="
            f" one of {', '.join(KINDS)}"
        )
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    if "state.json" in names and any(n.startswith("data-") and n.endswith(".arrow") for n in names):
        return "hf"
    if "data.mdb" in names:
        return "lmdb"
    found = {SUFFIXES[s] for p in fs.find(root) for s in SUFFIXES if p.lower().endswith(s)}
    found.discard("lmdb")
    if len(found) == 1:
        return found.pop()
    subdirs = [p for p in fs.ls(root, detail=True) if p["type"] == "directory"]
    if subdirs and not found:
        return "imagefolder"
    raise FormatError(
        f"convert: cannot tell what {src} holds (found {sorted(found) or 'no known files'});"
        f" pass source_format= one of {', '.join(KINDS)}"
    )


@dataclass(frozen=True)
class Part:
    """One independently readable piece of a file-based source (for engines that read pieces
    in parallel): a whole file, or a run of a Parquet file's row groups."""

    kind: str
    path: str
    row_groups: tuple[int, ...] | None = None


def split_source(
    src: str,
    kind: str | None = None,
    storage_options: dict[str, Any] | None = None,
    part_bytes: int = 64 * 2**20,
    policy: RetryPolicy | None = None,
) -> tuple[str, pa.Schema, list[Part]]:
    """Cut a file-based source into parts of about ``part_bytes`` (Parquet: whole row groups,
    by their uncompressed size; other kinds: whole files), in source order.

    Returns:
        ``(kind, schema of the first file, parts)``.

    Raises:
        FormatError: unrecognised, unreadable, or not file-based (image folders, LMDB).
    """
    fs, root = store.resolve(src, storage_options, policy)
    if kind is None:
        kind = detect_kind(fs, root, src)
    if kind not in ("parquet", "jsonl", "csv", "arrow", "hf"):
        raise FormatError(f"convert: a {kind} source cannot be read in parts")
    if kind == "hf":
        files, kind = _hf_files(fs, root, src), "arrow"
    else:
        files = _files(fs, root, src, kind)
    opener = {"parquet": _parquet, "jsonl": _jsonl, "csv": _csv, "arrow": _arrow}[kind]
    schema, batches, _ = opener(fs, files[0], 1, BLOCK_BYTES)
    for _ in batches:  # start the generator so that closing it closes the file
        break
    batches.close()  # type: ignore[attr-defined]
    if kind != "parquet":
        return kind, schema, [Part(kind, path) for path in files]
    parts: list[Part] = []
    for path in files:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        run: list[int] = []
        size = 0
        for i in range(meta.num_row_groups):
            run.append(i)
            size += meta.row_group(i).total_byte_size
            if size >= part_bytes:
                parts.append(Part(kind, path, tuple(run)))
                run, size = [], 0
        if run or not meta.num_row_groups:
            parts.append(Part(kind, path, tuple(run)))
    return kind, schema, parts


def read_part(
    src: str,
    part: Part,
    schema: pa.Schema,
    storage_options: dict[str, Any] | None = None,
    batch_rows: int = BATCH_ROWS,
    policy: RetryPolicy | None = None,
) -> Iterator[pa.RecordBatch]:
    """The record batches of one part of the source ``src`` (at most ``batch_rows`` rows each).

    Raises:
        FormatError: the part's file has another schema than ``schema``, or cannot be read.
    """
    fs, _ = store.resolve(src, storage_options, policy)
    if part.kind == "parquet" and part.row_groups is not None:
        file = fs.open(part.path, "rb")
        try:
            pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        except (pa.ArrowException, OSError) as exc:
            file.close()
            raise FormatError(f"convert: cannot read Parquet file {part.path}: {exc}") from exc
        found = pf.schema_arrow
        batches: Iterator[pa.RecordBatch] = _reading(
            part.path,
            _closing(
                file, pf.iter_batches(batch_size=batch_rows, row_groups=list(part.row_groups))
            ),
        )
    else:
        opener = {"parquet": _parquet, "jsonl": _jsonl, "csv": _csv, "arrow": _arrow}[part.kind]
        found, batches, _ = opener(fs, part.path, batch_rows, BLOCK_BYTES)
    if not found.equals(schema):
        raise FormatError(
            f"convert: {part.path} has schema {found}, unlike the source's first file: {schema}"
        )
    yield from batches


def _files(fs: Any, root: str, src: str, kind: str) -> list[str]:
    if fs.isfile(root):
        return [root]
    suffixes = tuple(s for s, k in SUFFIXES.items() if k == kind)
    files = sorted(p for p in fs.find(root) if p.lower().endswith(suffixes))
    if not files:
        raise FormatError(f"convert: no {kind} files ({', '.join(suffixes)}) under {src}")
    return files


def _rebatch(batches: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of at most ``batch_rows`` rows (zero-copy slices of larger ones)."""
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)


def _closing(file: Any, batches: Any) -> Iterator[pa.RecordBatch]:
    """Yield ``batches``, closing ``file`` when they are exhausted or abandoned."""
    try:
        yield from batches
    finally:
        file.close()


def _reading(path: str, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Turn pyarrow's read errors into FormatErrors naming the file."""
    try:
        yield from batches
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(f"convert: cannot read {path}: {exc}") from exc


Opened = tuple[pa.Schema, Iterator[pa.RecordBatch], int | None]


def _parquet(fs: Any, path: str, batch_rows: int, block_bytes: int) -> Opened:
    file = fs.open(path, "rb")
    try:
        # No pre-buffering and a bounded read buffer: memory stays at about one page of a
        # column chunk instead of whole row groups (measured: half the peak RSS).
        pf = pq.ParquetFile(file, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
    except (pa.ArrowException, OSError) as exc:
        file.close()
        raise FormatError(f"convert: cannot read Parquet file {path}: {exc}") from exc
    batches = _closing(file, pf.iter_batches(batch_size=batch_rows))
    return pf.schema_arrow, _reading(path, batches), pf.metadata.num_rows


def _parquet_rows(fs: Any, path: str) -> int:
    with fs.open(path, "rb") as f:
        return int(pq.ParquetFile(f).metadata.num_rows)


def _jsonl(fs: Any, path: str, batch_rows: int, block_bytes: int) -> Opened:
    read_options = pa_json.ReadOptions(block_size=block_bytes)
    return _text_stream(fs, path, batch_rows, "JSON lines", pa_json.open_json, read_options)


def _csv(fs: Any, path: str, batch_rows: int, block_bytes: int) -> Opened:
    read_options = pa_csv.ReadOptions(block_size=block_bytes)
    return _text_stream(fs, path, batch_rows, "CSV", pa_csv.open_csv, read_options)


def _text_stream(
    fs: Any, path: str, batch_rows: int, what: str, open_reader: Any, read_options: Any
) -> Opened:
    """A JSON lines or CSV file read block by block by pyarrow's streaming reader."""
    file = fs.open(path, "rb")
    try:
        reader = open_reader(file, read_options=read_options)
    except (pa.ArrowException, OSError) as exc:
        file.close()
        raise FormatError(f"convert: cannot read {what} file {path}: {exc}") from exc
    return reader.schema, _reading(path, _closing(file, _rebatch(reader, batch_rows))), None


def _arrow(fs: Any, path: str, batch_rows: int, block_bytes: int) -> Opened:
    local = store.local_path(fs, path)
    try:
        source = pa.memory_map(local, "r") if local else fs.open(path, "rb")
        try:
            file_reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            stream = pa.ipc.open_stream(source)
            batches = _closing(source, _rebatch(stream, batch_rows))
            return stream.schema, _reading(path, batches), None
    except (pa.ArrowException, OSError) as exc:
        raise FormatError(f"convert: {path} is not an Arrow IPC file or stream: {exc}") from exc
    count = file_reader.num_record_batches
    batches = _closing(source, (file_reader.get_batch(i) for i in range(count)))
    # Mapped batches cost nothing to count; remote ones would be downloaded twice, so skip.
    rows = sum(file_reader.get_batch(i).num_rows for i in range(count)) if local else None
    return file_reader.schema, _reading(path, _rebatch(batches, batch_rows)), rows


def _hf_files(fs: Any, root: str, src: str) -> list[str]:
    """The IPC stream files of a ``save_to_disk`` directory, in state.json's order."""
    try:
        state = json.loads(fs.cat_file(store.join(root, "state.json")))
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"convert: {src}/state.json does not list the data files: {exc}") from exc
    from streamload.format.index import validate_shard_name

    return [store.join(root, validate_shard_name(n, f"{src}/state.json")) for n in names]


def _image_folder(fs: Any, root: str, src: str, batch_rows: int) -> Source:
    entries = sorted(
        (p["name"].rstrip("/") for p in fs.ls(root, detail=True) if p["type"] == "directory"),
    )
    classes = [p.rsplit("/", 1)[-1] for p in entries]
    files: list[tuple[str, int]] = []
    for label, directory in enumerate(entries):
        images = sorted(p for p in fs.find(directory) if p.lower().endswith(IMAGE_SUFFIXES))
        files.extend((p, label) for p in images)
    if not files:
        raise FormatError(
            f"convert: no images ({', '.join(IMAGE_SUFFIXES)}) in class folders of {src}"
        )
    schema = pa.schema(
        [pa.field("image", pa.large_binary(), False), pa.field("label", pa.int64(), False)]
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for start in range(0, len(files), batch_rows):
            chunk = files[start : start + batch_rows]
            images = [fs.cat_file(path) for path, _ in chunk]
            labels = [label for _, label in chunk]
            yield pa.RecordBatch.from_arrays(
                [pa.array(images, pa.large_binary()), pa.array(labels, pa.int64())], schema=schema
            )

    return Source("imagefolder", schema, batches(), len(files), {"classes": classes})


def _lmdb(fs: Any, root: str, src: str, batch_rows: int) -> Source:
    from streamload.shards.lmdb.env import find_data_file
    from streamload.shards.lmdb.file import LmdbFile

    found = find_data_file(fs, root)
    if found is None:
        raise FormatError(f"convert: {src} is not an LMDB environment (no data.mdb)")
    path = store.join(*found)
    local = store.local_path(fs, path)
    if local is not None:
        file = LmdbFile(local, src)
    else:
        with fs.open(path, "rb") as f:
            file = LmdbFile(f, src)
    schema = pa.schema(
        [pa.field("key", pa.large_binary(), False), pa.field("value", pa.large_binary(), False)]
    )

    def batches() -> Iterator[pa.RecordBatch]:
        import lmdb

        keys: list[bytes] = []
        values: list[bytes] = []
        try:
            with file.txn().cursor() as cursor:
                for key, value in cursor:
                    keys.append(bytes(key))
                    values.append(bytes(value))
                    if len(keys) == batch_rows:
                        yield _binary_batch(schema, keys, values)
                        keys, values = [], []
        except lmdb.Error as exc:
            raise FormatError(f"convert: LMDB cannot read {src}: {exc}") from exc
        if keys:
            yield _binary_batch(schema, keys, values)

    return Source("lmdb", schema, batches(), file.entries())


def _binary_batch(schema: pa.Schema, *columns: list[bytes]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array(c, pa.large_binary()) for c in columns], schema=schema
    )
