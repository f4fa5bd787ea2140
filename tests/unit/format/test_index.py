"""index.json parsing: versions, counts, checksums and safe shard names."""

from __future__ import annotations

import copy
import json
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
    ],
)
def test_bad_element_totals_are_refused(version: int, elements: object, message: str) -> None:
    """elements only in v2, only for variable-shape columns, only non-negative counts."""
    with pytest.raises(FormatError, match=message):
        _parse(_token_index(version, elements))


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
