"""Damaged and hostile datasets give FormatError, never a crash, a hang or a path escape.

Every scenario runs its reads in a fresh subprocess (``sys.executable``), so a SIGSEGV or
SIGBUS fails one test with the signal in the message instead of killing the test run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from streamload import ShardWriter
from streamload.format.checksum import xxh3_64_file

CHILD = r"""
import sys
import numpy as np
import streamload as sl

url, verify, action = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
if action == "names":  # one child tries every hostile name: none can crash, all must be refused
    import json
    index = json.load(open(url + "/index.json"))
    for name in json.loads(sys.argv[4]):
        index["shards"][0]["name"] = name
        json.dump(index, open(url + "/index.json", "w"))
        try:
            sl.StreamingDataset(url, verify=verify)[0]
            print("NAME", repr(name), "OK")
        except sl.FormatError as exc:
            print("NAME", repr(name), "FormatError:", exc)
    sys.exit(0)
try:
    if action == "write-mismatch":
        with sl.ShardWriter(url, shard_size="1MB") as w:
            w.write({"x": 1, "t": "a"})
            w.write({"x": "2", "t": "b"})
    elif action == "write-interrupted":
        with sl.ShardWriter(url, shard_size="1KiB") as w:
            for i in range(500):
                w.write({"x": i, "t": "abcd"})
            raise KeyboardInterrupt
except sl.FormatError as exc:
    print("WRITE FormatError:", exc)
except KeyboardInterrupt:
    print("WRITE interrupted")
try:
    ds = sl.StreamingDataset(url, verify=verify)
    if action == "batch":
        ds.get_batch(np.arange(len(ds))[::-1].copy())
    else:
        for _ in ds:
            pass
    print("READ OK")
except sl.FormatError as exc:
    print("READ FormatError:", exc)
"""


def _run(url: Path | str, action: str = "iterate", verify: bool = True, *extra: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(url), "1" if verify else "0", action, *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        f"child died (returncode {proc.returncode}):\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def _make(root: Path, n: int = 300) -> Path:
    with ShardWriter(str(root), shard_size="2KiB") as w:
        for i in range(n):
            w.write({"x": i, "t": "abcd"})
    return root


def _index(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "index.json").read_text())
    return data


def _save_index(root: Path, data: dict[str, Any]) -> None:
    (root / "index.json").write_text(json.dumps(data))


def _rehash(root: Path, shard: int) -> None:
    """Make index.json agree with a tampered shard (a hostile but self-consistent dataset)."""
    data = _index(root)
    path = root / data["shards"][shard]["name"]
    data["shards"][shard]["bytes"] = path.stat().st_size
    data["shards"][shard]["xxh3_64"] = xxh3_64_file(fsspec.filesystem("file"), str(path))
    _save_index(root, data)


def _corrupt_string_offset(root: Path) -> None:
    """Set the third string offset of shard 0 to 2**30 (measured: SIGSEGV/SIGBUS unvalidated)."""
    path = root / "shard-00000.arrow"
    data = bytearray(path.read_bytes())
    pattern = np.array([0, 4, 8, 12], np.int64).tobytes()
    at = data.find(pattern)
    assert at > 0 and data.find(pattern, at + 1) == -1
    data[at + 16 : at + 24] = np.array([2**30], np.int64).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("verify", [True, False])
def test_truncated_shard_names_shard_and_sizes(tmp_path: Path, verify: bool) -> None:
    """A shard shorter than index.json says is refused before it is mapped."""
    root = _make(tmp_path)
    shard = _index(root)["shards"][1]
    path = root / shard["name"]
    path.write_bytes(path.read_bytes()[:-100])
    out = _run(root, verify=verify)
    assert (
        f"READ FormatError: shard {shard['name']} of {root}: size is {shard['bytes'] - 100} bytes"
        in out
    )
    assert f"index.json says {shard['bytes']}" in out


def test_truncated_shard_with_matching_index_fails_footer_parse(tmp_path: Path) -> None:
    """A half shard whose index entry was updated to match still fails: no Arrow footer."""
    root = _make(tmp_path)
    path = root / "shard-00000.arrow"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _rehash(root, 0)
    assert "READ FormatError: shard shard-00000.arrow: not a readable Arrow IPC file" in _run(root)


def test_bit_flip_is_caught_by_the_checksum(tmp_path: Path) -> None:
    """One flipped bit in the data (which Arrow reads silently) is a checksum mismatch."""
    root = _make(tmp_path)
    path = root / "shard-00002.arrow"
    data = bytearray(path.read_bytes())
    data[200] ^= 0x10
    path.write_bytes(bytes(data))
    out = _run(root, verify=True)
    assert "READ FormatError: shard shard-00002.arrow" in out and "xxh3_64 checksum mismatch" in out


@pytest.mark.parametrize("action", ["iterate", "batch"])
def test_corrupt_string_offsets_without_verification_are_format_errors(
    tmp_path: Path, action: str
) -> None:
    """verify off: full batch validation turns a bad offset into FormatError, not SIGSEGV."""
    root = _make(tmp_path)
    _corrupt_string_offset(root)
    out = _run(root, action=action, verify=False)
    assert "READ FormatError: shard shard-00000.arrow: record batch 0 is corrupt" in out


def test_corrupt_offsets_with_a_matching_checksum_are_format_errors(tmp_path: Path) -> None:
    """A hostile shard with a correct checksum in index.json still cannot crash the reader."""
    root = _make(tmp_path)
    _corrupt_string_offset(root)
    _rehash(root, 0)
    out = _run(root, action="batch", verify=True)
    assert "READ FormatError: shard shard-00000.arrow: record batch 0 is corrupt" in out


def test_index_claiming_more_samples_is_refused(tmp_path: Path) -> None:
    """num_samples larger than the shard holds is a FormatError naming both counts."""
    root = _make(tmp_path)
    data = _index(root)
    held = data["shards"][0]["num_samples"]
    data["shards"][0]["num_samples"] += 1
    data["num_samples"] += 1
    _save_index(root, data)
    assert f"holds {held} samples, index.json says {held + 1}" in _run(root, verify=False)


def test_hostile_shard_names_are_refused_before_any_file_is_opened(tmp_path: Path) -> None:
    """Traversal, absolute, separator, drive and empty names fail at open, for every name."""
    root = _make(tmp_path / "ds")
    (tmp_path / "x").write_bytes((root / "shard-00000.arrow").read_bytes())  # a real target outside
    names = ["../x", "/etc/passwd", "a/b", "a\\b", "C:x", "..", "", str(tmp_path / "x")]
    lines = _run(root, "names", True, json.dumps(names)).splitlines()
    assert len(lines) == len(names)
    for name, line in zip(names, lines, strict=True):
        assert line.startswith(f"NAME {name!r} FormatError:") and "shard name" in line, line


def test_unknown_format_version_is_refused_with_supported_versions(tmp_path: Path) -> None:
    """format_version 99 names the versions this streamload reads."""
    root = _make(tmp_path)
    data = _index(root)
    data["format_version"] = 99
    _save_index(root, data)
    assert "format_version 99 is not supported; this streamload reads format_version 1" in _run(
        root
    )


def test_missing_index_is_an_incomplete_dataset(tmp_path: Path) -> None:
    """No index.json: FormatError naming the URL and saying missing or incomplete."""
    root = _make(tmp_path)
    (root / "index.json").unlink()
    assert (
        f"READ FormatError: {root}/index.json not found: the dataset is missing or incomplete"
        in _run(root)
    )


def test_sample_that_breaks_the_schema_aborts_the_write(tmp_path: Path) -> None:
    """A wrong-typed field fails the write naming sample and field; no index.json is left."""
    out = _run(tmp_path / "ds", action="write-mismatch")
    assert "WRITE FormatError: sample 1: field 'x' is a str, schema says int" in out
    assert "READ FormatError:" in out and "incomplete" in out
    assert not (tmp_path / "ds" / "index.json").exists()


def test_interrupted_writer_leaves_an_incomplete_dataset(tmp_path: Path) -> None:
    """An exception inside the with block: shards may exist, index.json does not, reads refuse."""
    out = _run(tmp_path / "ds", action="write-interrupted")
    assert "WRITE interrupted" in out
    assert "READ FormatError:" in out and "incomplete" in out
    assert any(p.name.startswith("shard-") for p in (tmp_path / "ds").iterdir())
