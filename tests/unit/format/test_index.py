"""index.json parsing: versions, counts, checksums and safe shard names."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import pytest

from streamload.errors import FormatError
from streamload.format.checksum import file_digest, xxh3_64_bytes, xxh3_64_file
from streamload.format.index import load_index, parse_index, validate_shard_name


def _index() -> dict[str, Any]:
    return {
        "format_version": 1,
        "format": "arrow",
        "schema": {"columns": [{"name": "x", "kind": "int"}]},
        "num_samples": 5,
        "shards": [
            {"name": "shard-00000.arrow", "num_samples": 3, "bytes": 100, "xxh3_64": "0" * 16},
            {"name": "shard-00001.arrow", "num_samples": 2, "bytes": 90, "sha256": "a" * 64},
        ],
    }


def _parse(data: dict[str, Any]) -> Any:
    return parse_index(json.dumps(data).encode(), "mem://ds/index.json")


def test_valid_index_parses_with_offsets_and_both_checksum_kinds() -> None:
    """A well-formed index gives shard infos, cumulative offsets and round-trips to JSON."""
    index = _parse(_index())
    assert [s.name for s in index.shards] == ["shard-00000.arrow", "shard-00001.arrow"]
    assert index.sample_offsets.tolist() == [0, 3, 5]
    assert index.shards[1].checksum_algorithm == "sha256"
    assert index.total_bytes == 190
    assert json.loads(index.to_bytes()) == _index()


def test_unknown_format_version_names_the_versions_this_streamload_reads() -> None:
    """format_version 3 is refused with the list of readable versions."""
    data = _index()
    data["format_version"] = 3
    with pytest.raises(
        FormatError,
        match=r"format_version 3 is not supported; this streamload reads format_version 1, 2",
    ):
        _parse(data)


def _token_index(version: int, elements: object) -> dict[str, object]:
    data = _index()
    data["format_version"] = version
    data["schema"] = {
        "columns": [{"name": "tokens", "kind": "ndarray", "dtype": "uint16", "shape": [None]}]
    }
    for shard in data["shards"]:  # type: ignore[attr-defined]
        shard["elements"] = elements
    return data


def test_version_2_reads_per_shard_element_totals() -> None:
    """A v2 shard entry may carry elements of variable-shape columns; they round-trip."""
    index = _parse(_token_index(2, {"tokens": 12}))
    assert [s.elements for s in index.shards] == [{"tokens": 12}] * len(index.shards)
    assert json.loads(index.to_bytes()) == _token_index(2, {"tokens": 12})


@pytest.mark.parametrize(
    ("version", "elements", "message"),
    [
        (1, {"tokens": 12}, r"unexpected keys \['elements'\]"),
        (2, {"id": 3}, r"names \['id'\], which are not variable-shape array columns"),
        (2, {"tokens": -1}, "must be an integer"),
        (2, [12], "must be an object"),
        (2, {"tokens": True}, r"\['tokens'\] must be an integer .* got True"),
        (2, {"tokens": 12.0}, "must be an integer"),
        (2, {"tokens": 2**63}, "must be an integer"),
        (2, {"tokens": "12"}, "must be an integer"),
        (2, {"\ud800" * 5000: 1}, r"names \['\\ud800"),
        (2, "x" * 10**6, "must be an object"),
    ],
)
def test_bad_element_totals_are_refused(version: int, elements: object, message: str) -> None:
    """elements only in v2, only for variable-shape columns, only non-negative counts; hostile
    values are quoted briefly."""
    with pytest.raises(FormatError, match=message) as info:
        _parse(_token_index(version, elements))
    assert len(str(info.value)) < 1000


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(num_samples=6), "shards hold 5 samples but num_samples says 6"),
        (lambda d: d["shards"][0].update(num_samples=-1), "num_samples must be an integer"),
        (lambda d: d["shards"][0].update(bytes=-5), "bytes must be an integer"),
        (lambda d: d["shards"][0].update(bytes=2**60), "bytes must be an integer"),
        (lambda d: d["shards"][0].update(num_samples=True), "num_samples must be an integer"),
        (lambda d: d.update(format="parquet"), "unknown format 'parquet'"),
        (lambda d: d.update(extra=1), r"extra \['extra'\]"),
        (lambda d: d.pop("schema"), r"missing \['schema'\]"),
        (lambda d: d["shards"][0].pop("xxh3_64"), "exactly one checksum key"),
        (lambda d: d["shards"][0].update(sha256="a" * 64), "exactly one checksum key"),
        (lambda d: d["shards"][0].update(xxh3_64="XYZ"), "16 lowercase hex digits"),
        (lambda d: d["shards"][1].update(name="shard-00000.arrow"), "duplicate shard names"),
        (lambda d: d.update(shards={}), "'shards' must be a list"),
        (lambda d: d.update(schema={"columns": "x"}), "non-empty list"),
    ],
)
def test_malformed_indexes_are_format_errors(mutate: Any, message: str) -> None:
    """Every bounds or consistency violation is a FormatError with a precise message."""
    data = copy.deepcopy(_index())
    mutate(data)
    with pytest.raises(FormatError, match=message):
        _parse(data)


@pytest.mark.parametrize("data", [b"", b"not json", b"[1]", b"\xff\xfe", b"{"])
def test_non_json_or_non_object_indexes_are_format_errors(data: bytes) -> None:
    """Garbage bytes never escape as JSONDecodeError or UnicodeDecodeError."""
    with pytest.raises(FormatError, match="index"):
        parse_index(data, "src")


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "C:x",
        "c:",
        "..",
        ".",
        "",
        "\\\\server\\share",
        "x\x00y",
        "x\ny",
        " x",
        "x" * 256,
    ],
)
def test_hostile_shard_names_are_rejected(name: str) -> None:
    """Names that could leave the dataset root (POSIX or Windows rules) are FormatErrors."""
    with pytest.raises(FormatError, match=r"shard name"):
        validate_shard_name(name, "src")
    data = _index()
    data["shards"][0]["name"] = name
    with pytest.raises(FormatError):
        _parse(data)


@pytest.mark.parametrize("name", ["shard-00000.arrow", "a.b.c", "x", "..x", "shard 1.lmdb"])
def test_plain_file_names_are_accepted(name: str) -> None:
    """Ordinary file names pass unchanged."""
    assert validate_shard_name(name, "src") == name


def test_non_string_shard_name_is_rejected() -> None:
    """A number where a name should be is a FormatError."""
    with pytest.raises(FormatError, match="must be a string"):
        validate_shard_name(5, "src")


def test_missing_index_says_dataset_missing_or_incomplete(tmp_path: Any) -> None:
    """No index.json: FormatError naming the URL and explaining an interrupted writer."""
    with pytest.raises(
        FormatError, match=r"index.json not found: the dataset is missing or incomplete"
    ) as info:
        load_index(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_load_index_reads_local_and_memory_urls(tmp_path: Any) -> None:
    """load_index resolves plain paths, file:// and memory:// URLs."""
    data = json.dumps(_index()).encode()
    (tmp_path / "index.json").write_bytes(data)
    assert load_index(str(tmp_path)).num_samples == 5
    assert load_index(f"file://{tmp_path}").num_samples == 5
    fsspec.filesystem("memory").pipe_file("/test_index_mem/index.json", data)
    assert load_index("memory://test_index_mem").num_samples == 5


def test_file_checksums_match_in_memory_digests(tmp_path: Any) -> None:
    """Chunked file hashing equals hashing the bytes at once (across chunk boundaries)."""
    import hashlib

    data = bytes(range(256)) * 40000  # ~10 MB, crosses several 4 MiB chunks
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    fs = fsspec.filesystem("file")
    assert xxh3_64_file(fs, str(path)) == xxh3_64_bytes(data)
    assert file_digest(fs, str(path), "sha256") == hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="unknown checksum algorithm"):
        file_digest(fs, str(path), "md5")


@pytest.mark.parametrize("version", [1.0, True, "1", [1], None])
def test_format_version_must_be_the_integer_one(version: Any) -> None:
    """1.0, true, "1": only the JSON integer 1 names format version 1."""
    data = _index()
    data["format_version"] = version
    with pytest.raises(FormatError, match=r"format_version .* is not supported"):
        _parse(data)


@pytest.mark.parametrize("version", [True, 2.0, 0, -1, "3", [3], None, 2**53 + 1, 10**30])
def test_index_version_of_an_appended_dataset_must_be_a_sane_integer(version: Any) -> None:
    """Format version 2's top-level "version": an int in [1, 2**53], nothing JSON can fake."""
    data = _token_index(2, {"tokens": 12})
    data["version"] = version
    with pytest.raises(FormatError, match=r"'version' must be an integer in \[1, 2\*\*53\]"):
        _parse(data)


def test_index_version_is_only_known_to_format_version_2() -> None:
    """A format version 1 index carrying "version" is refused (older writers never wrote it)."""
    data = _index()
    data["version"] = 2
    with pytest.raises(FormatError, match=r"extra \['version'\]"):
        _parse(data)
    assert _parse({**_token_index(2, {"tokens": 12}), "version": 7}).version == 7


def _nested(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [990, 1000, 100_000])
@pytest.mark.parametrize("where", ["top", "name", "schema", "metadata", "count"])
def test_deeply_nested_json_is_a_format_error_not_a_recursion_error(depth: int, where: str) -> None:
    """Nesting anywhere in index.json, near or past the interpreter's limit, is a FormatError."""
    text = json.dumps(_index())
    deep = _nested(depth)
    if where == "top":
        text = deep
    elif where == "name":
        text = text.replace('"shard-00000.arrow"', deep)
    elif where == "schema":
        text = text.replace('"kind": "int"', f'"kind": {deep}')
    elif where == "metadata":
        text = text[:-1] + f', "metadata": {{"a": {deep}}}}}'
    else:
        text = text.replace('"num_samples": 5', f'"num_samples": {deep}')
    with pytest.raises(FormatError) as info:
        parse_index(text.encode(), "src")
    assert len(str(info.value)) < 1000  # the message quotes the value, bounded


def test_metadata_nesting_is_bounded_but_shallow_metadata_is_kept() -> None:
    """metadata deeper than MAX_METADATA_DEPTH is refused; ordinary metadata round-trips."""
    from streamload.format.index import MAX_METADATA_DEPTH

    data = _index()
    data["metadata"] = {
        "classes": ["cat", "dog"],
        "deep": json.loads(_nested(MAX_METADATA_DEPTH - 1)),
    }
    assert _parse(data).metadata == data["metadata"]
    data["metadata"] = {"deep": json.loads(_nested(MAX_METADATA_DEPTH))}
    with pytest.raises(FormatError, match="'metadata' is nested more than"):
        _parse(data)


def test_huge_values_are_quoted_briefly_in_messages() -> None:
    """A megabyte-long bad value is not copied into the error message."""
    data = _index()
    data["format"] = "x" * 2**20
    with pytest.raises(FormatError) as info:
        _parse(data)
    assert len(str(info.value)) < 500


def _run_bounded(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child (a read that blocked or ran unbounded must not hang pytest)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("target", ["/dev/zero", "/dev/urandom", "fifo", "directory"])
def test_index_that_is_not_a_regular_file_is_refused_without_reading_it(
    tmp_path: Path, target: str
) -> None:
    """index.json as a symlink to a device, a FIFO or a directory: FormatError at once, no hang."""
    index = tmp_path / "index.json"
    if target == "fifo":
        os.mkfifo(index)
    elif target == "directory":
        index.mkdir()
    else:
        index.symlink_to(target)
    code = (
        "import streamload as sl\n"
        f"try:\n    sl.StreamingDataset({str(tmp_path)!r})\n"
        "except sl.FormatError as exc:\n    print('FormatError:', exc)\n"
    )
    proc = _run_bounded(code, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("FormatError:") and "not a regular file" in proc.stdout
    assert str(tmp_path) in proc.stdout


def test_index_larger_than_the_limit_is_refused_whatever_its_size_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read stops at MAX_INDEX_BYTES + 1 even when st_size claims the file is small."""
    import streamload.format.index as index_module

    monkeypatch.setattr(index_module, "MAX_INDEX_BYTES", 1000)
    path = tmp_path / "index.json"
    path.write_bytes(json.dumps(_index()).encode() + b" " * 5000)
    real_fstat = os.fstat

    def lying_fstat(fd: int) -> Any:  # a file system that reports 10 bytes
        st = real_fstat(fd)
        return os.stat_result((*st[:6], 10, *st[7:]))

    monkeypatch.setattr(index_module.os, "fstat", lying_fstat)
    reads: list[int] = []
    real_read = os.read
    monkeypatch.setattr(index_module.os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))
    with pytest.raises(FormatError, match="more than the 1000 allowed"):
        load_index(str(tmp_path))
    assert sum(reads) <= 1001


def test_symlinked_index_to_a_regular_file_is_read(tmp_path: Path) -> None:
    """A symlink to a regular index file is fine: only what it points to must be regular."""
    (tmp_path / "real.json").write_text(json.dumps(_index()))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.json").symlink_to(tmp_path / "real.json")
    assert load_index(str(tmp_path / "ds")).num_samples == 5
