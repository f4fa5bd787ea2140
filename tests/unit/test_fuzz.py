"""Fuzzing in CI: hostile inputs to every reader give a result or a StreamloadError, never another
exception or a dead process.

Two layers: hypothesis properties here (structural changes to real index.json, schema, loader
state and batch-record metadata, shrunk to a minimal example when one fails), and the short run
of ``benchmarks/fuzz.py --quick`` (byte-level and structural mutation of every target, including
whole LMDB and Arrow shards with their checksums recomputed, each target in a child process so a
SIGBUS is a reported finding, not a dead test run). The long run is the same script without
``--quick``.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import streamload as sl
from streamload.errors import FormatError, RingError, StateError
from streamload.format.index import parse_index
from streamload.format.schema import schema_from_json
from streamload.plan.state import check_state
from streamload.transport.codec import ALIGN, HEADER_SIZE, decode, encode

FUZZ = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz.py"

# -- hypothesis: one node of a real document replaced ------------------------------------------

_HOSTILE = st.sampled_from(
    [None, True, False, 1.0, -1, 2**53 + 1, 2**63, math.nan, math.inf, "", "\ud800", "../x", "a/b"]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | _HOSTILE,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def _mutated(draw: Any, doc: Any) -> Any:
    """``doc`` with one node replaced by any JSON value, or deleted."""
    doc = json.loads(json.dumps(doc))
    path = draw(st.sampled_from(_paths(doc)[1:]))
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(_JSON)
    return doc


_COLUMNS = [
    {"name": "id", "kind": "int"},
    {"name": "text", "kind": "str"},
    {"name": "tokens", "kind": "ndarray", "dtype": "uint16", "shape": [None]},
    {"name": "img", "kind": "ndarray", "dtype": "uint8", "shape": [2, 3]},
]
_INDEX = {
    "format_version": 2,
    "format": "arrow",
    "schema": {"columns": _COLUMNS},
    "num_samples": 5,
    "version": 3,
    "metadata": {"classes": ["a", "b"]},
    "shards": [
        {"name": "shard-00000.arrow", "num_samples": 2, "bytes": 10, "xxh3_64": "0" * 16,
         "elements": {"tokens": 7}},
        {"name": "shard-00001.arrow", "num_samples": 3, "bytes": 12, "sha256": "a" * 64},
    ],
}  # fmt: skip


def test_the_documents_the_properties_mutate_are_valid() -> None:
    """The unmutated documents parse (else every property below would pass vacuously)."""
    index = parse_index(json.dumps(_INDEX).encode(), "t")
    assert index.version == 3 and index.shards[0].elements == {"tokens": 7}


@settings(max_examples=300, deadline=None)
@given(_mutated(_INDEX))
def test_index_with_any_node_replaced_is_valid_or_a_format_error(doc: Any) -> None:
    """parse_index never raises anything but FormatError; what it accepts round-trips."""
    try:
        index = parse_index(json.dumps(doc).encode("utf-8", "surrogatepass"), "fuzz/index.json")
    except FormatError:
        return
    assert parse_index(index.to_bytes(), "again") == index


@settings(max_examples=200, deadline=None)
@given(_mutated({"columns": _COLUMNS}))
def test_schema_with_any_node_replaced_is_valid_or_a_format_error(raw: Any) -> None:
    """schema_from_json raises only FormatError; an accepted schema has an Arrow layout."""
    try:
        schema = schema_from_json(raw, "fuzz")
    except FormatError:
        return
    assert schema.arrow_schema is not None
    assert schema_from_json(schema.to_json(), "again") == schema


_FP = {"num_samples": 100, "index": "ab" * 8, "shuffle": True, "seed": 3}
_STATE = {"version": 1, "fingerprint": _FP, "epoch": 2, "position": 40}


@settings(max_examples=200, deadline=None)
@given(_mutated(_STATE))
def test_loader_state_with_any_node_replaced_is_accepted_or_a_state_error(state: Any) -> None:
    """check_state returns a valid (epoch, position) or raises StateError, nothing else."""
    try:
        epoch, position = check_state(state, _FP, "fuzz")
    except StateError:
        return
    assert type(epoch) is int and type(position) is int and 0 <= position <= 100


_BATCH = {"ids": np.arange(4), "text": ["a", "bé"], "pair": (np.ones((2, 2), np.float32), b"x")}
_RECORD = encode(_BATCH)
_META_LEN = struct.unpack_from("<I", _RECORD, 8)[0]
_DATA = _RECORD[(HEADER_SIZE + _META_LEN + ALIGN - 1) // ALIGN * ALIGN :]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(json.loads(_RECORD[HEADER_SIZE : HEADER_SIZE + _META_LEN])), st.booleans())
# Found by this test: an array node whose origin is null raised AttributeError.
@example(
    meta=[
        "d",
        ["ids", "text", "pair"],
        [
            ["a", 0, [4], "<i8", "np"],
            ["ls", 64, 2, 128, 4],
            ["t", [["a", 192, [2, 2], "<f4", None], ["b", 256, 1]]],
        ],
    ],
    copy=False,
)
def test_batch_record_with_any_metadata_node_replaced_decodes_or_is_ring_corrupted(
    meta: Any, copy: bool
) -> None:
    """A record whose structure lies about its data section raises a RingError, never more."""
    text = json.dumps(meta).encode("utf-8", "surrogatepass")
    pad = bytes(-(HEADER_SIZE + len(text)) % ALIGN)
    total = HEADER_SIZE + len(text) + len(pad) + len(_DATA)
    record = _RECORD[:8] + struct.pack("<IIQ", len(text), 0, total) + text + pad + _DATA
    with contextlib.suppress(RingError):
        decode(record, copy=copy, allow_pickle=False)


# -- the harness: the short run, and proof that it reports what it must ------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(FUZZ), *args], capture_output=True, text=True, timeout=1500
    )


@pytest.mark.timeout(1600)
def test_quick_fuzz_run_of_every_target_finds_nothing() -> None:
    """CI's short run: every target (index, schema, state, transport, LMDB values, LMDB and
    Arrow shards with recomputed checksums) runs its cases with zero findings."""
    proc = _run("--quick", "--seed", "0")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if "|" in line}
    for target in (
        "index",
        "schema",
        "state",
        "transport",
        "lmdb_value",
        "lmdb_shard",
        "arrow_shard",
    ):
        cells = [c.strip() for c in rows[target].split("|")[1:-1]]
        assert int(cells[1]) >= 30 and cells[4] == "0", rows[target]
        assert cells[3] != "-", f"{target}: no mutation was ever refused: {rows[target]}"


def test_harness_reports_exceptions_and_crashes_and_resumes_after_a_crash() -> None:
    """A non-StreamloadError and a dead child are findings naming their case; the run goes on."""
    proc = _run("--targets", "selftest_error,selftest_crash", "--seed", "0", "--cases", "20")
    assert proc.returncode == 1
    findings = [line for line in proc.stdout.splitlines() if line.startswith("FINDING")]
    assert any("selftest_error seed 0 case" in f and "ValueError" in f for f in findings)
    crashes = [f for f in findings if "child died" in f]
    assert crashes and all("selftest_crash seed 0 case " in f for f in crashes)
    crash_row = next(
        line for line in proc.stdout.splitlines() if line.startswith("| selftest_crash")
    )
    assert crash_row.split("|")[2].strip() == "20"  # every case ran, crashes included


def test_a_case_reruns_alone_with_the_same_outcome(tmp_path: Path) -> None:
    """Case k of seed s is the same input whether run in a sweep or alone (reproducible)."""
    sweep = _run("--targets", "selftest_error", "--seed", "5", "--cases", "12")
    failing = [
        int(line.split(" case ")[1].split()[0])
        for line in sweep.stdout.splitlines()
        if line.startswith("FINDING")
    ]
    assert failing
    alone = _run(
        "--targets", "selftest_error", "--seed", "5", "--start", str(failing[0]), "--cases", "1"
    )
    assert alone.returncode == 1 and f"case {failing[0]} " in alone.stdout


def test_fuzz_corpus_is_written_by_streamload_itself(tmp_path: Path) -> None:
    """The shard targets start from a valid multi-shard dataset of every column kind."""
    sys.path.insert(0, str(FUZZ.parent))
    try:
        import fuzz  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(FUZZ.parent))
    for fmt in ("arrow", "lmdb"):
        root = fuzz.write_dataset(tmp_path / fmt, fmt)
        ds = sl.StreamingDataset(str(root), verify=True)
        assert len(ds) == 48 and len(ds.index.shards) >= 3
        assert ds[47]["tokens"].tolist() == list(range(47 % 9))
