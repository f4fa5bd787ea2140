"""Fuzzing streamload's readers of untrusted bytes: every input gives a result or a StreamloadError.

Targets (each mutates real, valid inputs written by streamload itself):

- ``index``: index.json (format versions 1 and 2, with per-shard ``elements`` and ``version``)
  through ``parse_index``; a parsed index must re-serialise to one that parses the same;
- ``schema``: the schema object through ``schema_from_json`` and ``Schema.arrow_schema``;
- ``state``: a loader state through ``StreamingDataset.load_state_dict`` (with and without
  ``allow_append``);
- ``transport``: a batch record through the transport codec's ``decode`` (``allow_pickle=False``:
  only our own workers may send pickles);
- ``lmdb_value``: one LMDB sample value through the LMDB codec's ``decode``;
- ``lmdb_shard`` / ``arrow_shard``: a whole shard file with bytes changed, index.json's size and
  checksum recomputed over the bad bytes (so only the readers' own checks can catch it), read
  through ``StreamingDataset`` (every sample, then ``get_batch``).

Mutations are structural (a JSON node replaced by a hostile value: wrong types, huge or
non-finite numbers, lone surrogates, path tricks, nesting thousands deep; keys deleted or added)
and byte-level (bit flips, random bytes, inserted, deleted or duplicated ranges, truncation).
Case ``k`` of seed ``s`` is ``random.Random(f"{s}:{k}")``, so any case reruns alone:
``python benchmarks/fuzz.py --targets lmdb_shard --seed S --start K --cases 1``.

A finding is any exception that is not a `StreamloadError`, or a process that dies (SIGBUS,
SIGSEGV, an abort): every target runs in a child process, which prints each case's number
before running it, so a crash names its case and the run resumes after it. The script prints a
table (cases, results, StreamloadErrors by class, findings, cases/s) and exits 1 on any finding.

``--quick`` is the short run CI does (tests/unit/test_fuzz.py); without it each target runs for
``--seconds`` (the long run). ``--results-md`` appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import functools
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
TARGETS = ("index", "schema", "state", "transport", "lmdb_value", "lmdb_shard", "arrow_shard")
# Targets that exist to prove the harness reports what it should (tests/unit/test_fuzz.py).
SELF_TESTS = ("selftest_error", "selftest_crash")
QUICK_CASES = {"lmdb_shard": 30, "arrow_shard": 30}
QUICK_CASES_DEFAULT = 200

# -- mutations --------------------------------------------------------------------------------

_SENTINEL = "\x00fuzz-deep\x00"
_OBJECT_DEPTHS = (65, 900)  # objects (not bytes) handed to us: what json.loads can build


def _hostile_value(rng: random.Random, like: Any) -> Any:
    """A value of a hostile kind (sometimes a sibling-like one of the wrong type)."""
    pool: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        1.0,
        -0.0,
        2**31,
        2**53 + 1,
        2**63,
        2**64 + 7,
        -(2**63),
        10**30,
        float("nan"),
        float("inf"),
        "",
        "x" * rng.choice([1, 255, 256, 5000]),
        "\ud800",
        "a\udcffb",
        "../../etc/passwd",
        "/dev/zero",
        "C:x",
        "shard-00000.arrow\x00",
        " shard ",
        [],
        {},
        [None] * rng.randint(1, 5),
        {"": None},
        _SENTINEL,
    ]
    if isinstance(like, bool):
        pool += [1, "true", 1.0]
    elif isinstance(like, int):
        pool += [like + rng.choice([-1, 1]), -like, float(like), str(like), like * 2**40]
    elif isinstance(like, str):
        pool += [like[: rng.randint(0, len(like))], like + like, like.upper(), [like]]
    elif isinstance(like, list):
        pool += [like * 2, like[:-1], like[::-1], [like], dict(enumerate(like))]
    elif isinstance(like, dict):
        pool += [list(like.values()), {**like, "extra": 1}, [like]]
    return rng.choice(pool)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """A copy of JSON ``doc`` with 1-3 structural changes."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(doc))
        path = rng.choice(paths)
        if not path:
            doc = _hostile_value(rng, doc) if rng.random() < 0.1 else doc
            continue
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        action = rng.random()
        if action < 0.6:
            parent[key] = _hostile_value(rng, parent[key])
        elif action < 0.75:
            del parent[key]
        elif action < 0.9 and isinstance(parent, dict):
            parent[rng.choice(["extra", "version", "elements", "name", "", "\ud800"])] = (
                _hostile_value(rng, None)
            )
        elif isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))  # a duplicate entry
        else:
            other = rng.choice(paths)  # a subtree from elsewhere
            node = doc
            for p in other:
                node = node[p]
            parent[key] = json.loads(json.dumps(node))
    return doc


def dump_json(rng: random.Random, doc: Any, depths: tuple[int, ...] = (65, 1000, 100_000)) -> bytes:
    """``doc`` as JSON bytes; a sentinel node becomes nesting ``depths`` levels deep (bytes
    parsed by our code get depths past what json can parse; objects handed to us, only depths
    json.loads still builds)."""
    text = json.dumps(doc)  # NaN and Infinity pass: Python's json reads them back
    depth = rng.choice(depths)
    deep = "[" * depth + "]" * depth if rng.random() < 0.5 else '{"a":' * depth + "1" + "}" * depth
    return text.replace(json.dumps(_SENTINEL), deep).encode("utf-8", "surrogatepass")


def mutate_bytes(rng: random.Random, data: bytes, region: tuple[int, int] | None = None) -> bytes:
    """``data`` with 1-4 byte-level changes, inside ``region`` (start, end) when given."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        lo, hi = region if region is not None else (0, len(out))
        hi = min(hi, len(out))
        if hi <= lo:
            lo, hi = 0, max(len(out), 1)
        pos = rng.randrange(lo, hi)
        action = rng.random()
        if action < 0.35 and out:
            out[pos % len(out)] ^= 1 << rng.randrange(8)
        elif action < 0.6 and out:
            out[pos % len(out)] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        elif action < 0.7 and out:  # a little-endian integer field set to something extreme
            value = rng.choice([0, 2**31, 2**32 - 1, 2**63, 2**64 - 1, len(out) * 2])
            width = rng.choice([2, 4, 8])
            field = value.to_bytes(16, "little")[:width]
            out[pos : pos + width] = field[: len(out[pos : pos + width])]
        elif action < 0.8:
            out[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif action < 0.88:
            del out[pos : pos + rng.randint(1, 64)]
        elif action < 0.95:
            n = rng.randint(1, 64)
            out[pos:pos] = out[pos : pos + n]
        else:
            del out[pos:]
    return bytes(out)


# -- corpus: real inputs written by streamload -------------------------------------------------

_SCHEMA = {
    "columns": [
        {"name": "id", "kind": "int"},
        {"name": "x", "kind": "float"},
        {"name": "flag", "kind": "bool"},
        {"name": "text", "kind": "str"},
        {"name": "raw", "kind": "bytes"},
        {"name": "vec", "kind": "ndarray", "dtype": "float32", "shape": [4]},
        {"name": "tokens", "kind": "ndarray", "dtype": "uint16", "shape": [None]},
        {"name": "img", "kind": "ndarray", "dtype": "uint8", "shape": [None, 3]},
    ]
}


def _sample(i: int) -> dict[str, Any]:
    return {
        "id": i,
        "x": i / 7,
        "flag": i % 2 == 0,
        "text": f"row {i} é" * (i % 5),
        "raw": bytes(range(i % 40)),
        "vec": np.arange(4, dtype=np.float32) + i,
        "tokens": np.arange(i % 9, dtype=np.uint16),
        "img": np.full((i % 4, 3), i % 256, np.uint8),
    }


def write_dataset(root: Path, fmt: str, n: int = 48, shard_size: str = "3KB") -> Path:
    """A small dataset of every column kind (several shards; index.json format version 2)."""
    import streamload as sl

    with sl.ShardWriter(str(root), format=fmt, schema=_SCHEMA, shard_size=shard_size) as w:
        for i in range(n):
            w.write(_sample(i))
    return root


class Corpus:
    """The valid inputs one child process mutates, written on first use in a temp directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    @functools.cached_property
    def arrow(self) -> Path:
        import streamload as sl

        root = write_dataset(self.tmp / "arrow", "arrow")
        with sl.ShardWriter(str(root), mode="append", schema=_SCHEMA) as w:  # "version": 2
            w.write(_sample(48))
        return root

    @functools.cached_property
    def lmdb(self) -> Path:
        return write_dataset(self.tmp / "lmdb", "lmdb")

    @functools.cached_property
    def indexes(self) -> list[Any]:
        return [json.loads((root / "index.json").read_text()) for root in (self.arrow, self.lmdb)]

    @functools.cached_property
    def dataset(self) -> Any:
        import streamload as sl

        ds = sl.StreamingDataset(str(self.arrow), shuffle=True, seed=3)
        ds.load_state_dict({**ds.state_dict(), "position": 5})
        return ds

    @functools.cached_property
    def state(self) -> dict[str, Any]:
        return dict(self.dataset.state_dict())


# -- targets: each returns "ok" or raises ------------------------------------------------------


def _index(rng: random.Random, corpus: Corpus) -> str:
    from streamload.format.index import parse_index

    doc = rng.choice(corpus.indexes)
    data = dump_json(rng, mutate_json(rng, doc)) if rng.random() < 0.8 else json.dumps(doc).encode()
    if rng.random() < 0.3:
        data = mutate_bytes(rng, data)
    index = parse_index(data, "fuzz/index.json")
    again = parse_index(index.to_bytes(), "fuzz/index.json (re-serialised)")
    assert again == index, "a parsed index does not survive to_bytes + parse_index"
    return "ok"


def _schema(rng: random.Random, corpus: Corpus) -> str:
    from streamload.format.schema import schema_from_json

    doc = mutate_json(rng, rng.choice(corpus.indexes)["schema"])
    raw = json.loads(dump_json(rng, doc, _OBJECT_DEPTHS))
    schema = schema_from_json(raw, "fuzz schema")
    schema.arrow_schema  # noqa: B018  # building the Arrow layout must not fail either
    assert schema_from_json(schema.to_json(), "fuzz (re-serialised)") == schema
    return "ok"


def _state(rng: random.Random, corpus: Corpus) -> str:
    state = json.loads(dump_json(rng, mutate_json(rng, corpus.state), _OBJECT_DEPTHS))
    corpus.dataset.load_state_dict(state, allow_append=rng.random() < 0.5)
    return "ok"


_BATCHES: list[Any] = []


def _transport(rng: random.Random, corpus: Corpus) -> str:
    import torch

    from streamload.transport.codec import ALIGN, HEADER_SIZE, decode, encode

    if not _BATCHES:
        _BATCHES.extend(
            [
                {
                    "ids": np.arange(8, dtype=np.int64),
                    "img": np.zeros((2, 3, 4), np.uint8),
                    "text": ["a", "bé", ""],
                    "raw": [b"x", b""],
                    "t": torch.arange(6, dtype=torch.float32).reshape(2, 3),
                    "meta": (1, 2.5, None, "s", b"b"),
                },
                [np.ones(5, ">f4"), torch.zeros(3, dtype=torch.bfloat16), bytearray(b"ab")],
            ]
        )
    data = encode(rng.choice(_BATCHES))
    if rng.random() < 0.5:  # change the structure, keep the data section where it was
        meta_len = struct.unpack_from("<I", data, 8)[0]
        start = (HEADER_SIZE + meta_len + ALIGN - 1) // ALIGN * ALIGN
        meta = json.loads(data[HEADER_SIZE : HEADER_SIZE + meta_len])
        new_meta = dump_json(rng, mutate_json(rng, meta))
        pad = (-(HEADER_SIZE + len(new_meta))) % ALIGN
        total = HEADER_SIZE + len(new_meta) + pad + len(data) - start
        head = struct.pack("<IIQ", len(new_meta), 0, total)
        data = data[:8] + head + new_meta + bytes(pad) + data[start:]
    if rng.random() < 0.6:
        data = mutate_bytes(rng, data)
    decode(data, copy=rng.random() < 0.5, as_torch=rng.random() < 0.3, allow_pickle=False)
    return "ok"


def _lmdb_value(rng: random.Random, corpus: Corpus) -> str:
    from streamload.format.schema import schema_from_json
    from streamload.shards.lmdb.codec import decode, encode, layout

    schema = schema_from_json(_SCHEMA, "fuzz")
    value = encode(schema, _sample(rng.randrange(48)))
    decode(mutate_bytes(rng, value), layout(schema) if rng.random() < 0.7 else None)
    return "ok"


def _shard(fmt: str) -> Callable[[random.Random, Corpus], str]:
    def run(rng: random.Random, corpus: Corpus) -> str:
        import fsspec

        import streamload as sl
        from streamload.format.checksum import xxh3_64_file

        src = corpus.arrow if fmt == "arrow" else corpus.lmdb
        root = corpus.tmp / f"case-{fmt}"
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(src, root)
        index = json.loads((root / "index.json").read_text())
        entry = rng.choice(index["shards"])
        path = root / entry["name"]
        data = path.read_bytes()
        # LMDB: half the cases hit the last pages (leaves, overflow runs); Arrow: anywhere.
        region = (max(0, len(data) - 8192), len(data)) if rng.random() < 0.5 else None
        path.write_bytes(mutate_bytes(rng, data, region))
        entry["bytes"] = path.stat().st_size
        entry["xxh3_64"] = xxh3_64_file(fsspec.filesystem("file"), str(path))
        (root / "index.json").write_text(json.dumps(index))
        ds = sl.StreamingDataset(str(root), cache_dir=str(corpus.tmp / "cache"))
        n = len(ds)
        for i in range(n):
            ds[i]
        ids = np.array([rng.randrange(n) for _ in range(16)]) if n else np.zeros(0, np.int64)
        ds.get_batch(ids)
        return "ok"

    return run


def _selftest_error(rng: random.Random, corpus: Corpus) -> str:
    if rng.random() < 0.5:
        raise ValueError("a finding the harness must report")
    return "ok"


def _selftest_crash(rng: random.Random, corpus: Corpus) -> str:
    if rng.random() < 0.2:
        os.abort()
    return "ok"


RUNNERS: dict[str, Callable[[random.Random, Corpus], str]] = {
    "index": _index,
    "schema": _schema,
    "state": _state,
    "transport": _transport,
    "lmdb_value": _lmdb_value,
    "lmdb_shard": _shard("lmdb"),
    "arrow_shard": _shard("arrow"),
    "selftest_error": _selftest_error,
    "selftest_crash": _selftest_crash,
}


# -- child: run cases, one line per event ---------------------------------------------------------


def child(plan: list[tuple[str, int, int, float]], seed: int) -> None:
    """Run each (target, first case, end case, seconds) of ``plan`` in turn, printing
    ``case T k`` before and ``done T k <outcome> <seconds so far>`` after each case."""
    from streamload.errors import StreamloadError

    with tempfile.TemporaryDirectory(prefix="streamload-fuzz-") as tmp:
        os.environ["STREAMLOAD_CACHE_DIR"] = str(Path(tmp) / "cache")
        corpus = Corpus(Path(tmp))
        for target, first, end, seconds in plan:
            runner = RUNNERS[target]
            begin = time.monotonic()
            k = first
            while k < end and time.monotonic() - begin < seconds:
                print(f"case {target} {k}", flush=True)
                try:
                    outcome = runner(random.Random(f"{seed}:{k}"), corpus)
                except StreamloadError as exc:
                    outcome = type(exc).__name__
                except (Exception, RecursionError) as exc:  # a finding
                    frame = traceback.extract_tb(exc.__traceback__)[-1]
                    where = f"{os.path.relpath(frame.filename)}:{frame.lineno} in {frame.name}"
                    message = f"{type(exc).__name__}: {str(exc)[:300]!r} at {where}"
                    print(f"finding {target} {k} {message}", flush=True)
                    outcome = "finding"
                print(f"done {target} {k} {outcome} {time.monotonic() - begin:.3f}", flush=True)
                k += 1


# -- parent: children, crashes, the table -------------------------------------------------------


def run_targets(
    targets: list[str], seed: int, start: int, cases: dict[str, int], seconds: float
) -> list[dict[str, Any]]:
    """Run every target (``cases[target]`` cases from ``start``, at most ``seconds`` each) in
    one child process; after a crash, a new child resumes at the case after the fatal one."""
    results = {
        t: {"target": t, "outcomes": collections.Counter(), "findings": [], "seconds": 0.0}
        for t in targets
    }
    todo = [(t, start, start + cases[t], seconds) for t in targets]
    while todo:
        arg = ",".join(f"{t}:{k}:{e}:{s:.3f}" for t, k, e, s in todo)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", arg, "--seed", str(seed)],
            capture_output=True,
            text=True,
            timeout=sum(s for *_, s in todo) + 900,
        )
        current, last, spent = None, None, 0.0
        for line in proc.stdout.splitlines():
            word, _, rest = line.partition(" ")
            if word == "case":
                target, number = rest.split(" ")
                if target != current:
                    current, spent = target, 0.0
                last = int(number)
            elif word == "done":
                target, _number, outcome, elapsed = rest.split(" ")
                results[target]["outcomes"][outcome] += 1
                spent = float(elapsed)
                results[target]["seconds"] = spent + results[target].get("base", 0.0)
                last = None
            elif word == "finding":
                target, finding = rest.split(" ", 1)
                results[target]["findings"].append(f"{target} seed {seed} case {finding}")
        done_targets = [t for t, *_ in todo]
        if proc.returncode == 0:
            break
        if current is None or last is None:  # died before or between cases: cannot resume
            failed = current or done_targets[0]
            results[failed]["findings"].append(
                f"{failed} seed {seed}: child died outside a case (rc {proc.returncode}):"
                f" {proc.stderr.strip()[-500:]!r}"
            )
            break
        result = results[current]
        result["findings"].append(
            f"{current} seed {seed} case {last}: child died (rc {proc.returncode}):"
            f" {proc.stderr.strip()[-500:]!r}"
        )
        result["outcomes"]["crash"] += 1
        result["base"] = result["seconds"]
        position = done_targets.index(current)
        _, _, end, budget = todo[position]
        todo = [(current, last + 1, end, max(0.0, budget - spent)), *todo[position + 1 :]]
    for result in results.values():
        result["outcomes"].pop("finding", None)
        result.pop("base", None)
    return list(results.values())


def table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = [
        "| target | cases | ok | StreamloadErrors | findings | cases/s |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        out = r["outcomes"]
        findings = len(r["findings"])
        cases = sum(out.values()) + findings - out.get("crash", 0)
        errors = ", ".join(f"{k} {v}" for k, v in sorted(out.items()) if k not in ("ok", "crash"))
        rate = cases / r["seconds"] if r["seconds"] else 0.0
        lines.append(
            f"| {r['target']} | {cases} | {out.get('ok', 0)} | {errors or '-'} | {findings}"
            f" | {rate:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short CI run")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated")
    parser.add_argument("--seed", type=int, default=None, help="default: time-based")
    parser.add_argument("--start", type=int, default=0, help="first case number")
    parser.add_argument("--cases", type=int, default=None, help="cases per target")
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target")
    parser.add_argument("--results-md", action="store_true", help="append to RESULTS.md")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    if args.child:
        plan = [item.split(":") for item in args.child.split(",")]
        child([(t, int(k), int(e), float(sec)) for t, k, e, sec in plan], seed)
        return
    targets = [t for t in args.targets.split(",") if t]
    unknown = sorted(set(targets) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown targets {unknown}; known: {', '.join(RUNNERS)}")
    if args.cases is not None:
        cases = dict.fromkeys(targets, args.cases)
    elif args.quick:
        cases = {t: QUICK_CASES.get(t, QUICK_CASES_DEFAULT) for t in targets}
    else:
        cases = dict.fromkeys(targets, 10**9)
    results = run_targets(targets, seed, args.start, cases, 600.0 if args.quick else args.seconds)
    text = table(results)
    mode = " (--quick)" if args.quick else ""
    print(f"\nFuzzing: hostile inputs to every reader{mode}, seed {seed}\n\n{text}\n")
    findings = [f for r in results for f in r["findings"]]
    for finding in findings:
        print("FINDING", finding)
    if args.results_md:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        with contextlib.suppress(OSError), RESULTS_MD.open("a") as f:
            f.write(
                f"\n## Fuzzing: hostile inputs to every reader{mode}\n\n{stamp}, seed {seed}.\n\n{text}\n"
            )
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
