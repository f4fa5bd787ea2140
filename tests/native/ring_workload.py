"""A short, deterministic workload over the Python ring API, run against a sanitizer build.

usage: python ring_workload.py PATH_TO_RING_EXTENSION.so

Loads the given build of `streamload.transport._ring` in place of the installed one (so an ASan/UBSan build
can be exercised without reinstalling), then drives every binding path: create/attach, put and
reserve/commit/abort across wraps, out-of-order release, export counting, zero-copy views, close,
and corrupt headers. Exits 0 and prints "ok" when every check passed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import mmap
import struct
import sys


def poke(ring: object, offset: int, data: bytes) -> None:
    """Write raw bytes into a ring's shared memory through a second mapping of its memfd."""
    with mmap.mmap(ring.fileno(), 0) as shared:  # type: ignore[attr-defined]
        shared[offset : offset + len(data)] = data


def load_extension(path: str) -> None:
    loader = importlib.machinery.ExtensionFileLoader("streamload.transport._ring", path)
    spec = importlib.util.spec_from_file_location("streamload.transport._ring", path, loader=loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["streamload.transport._ring"] = module
    loader.exec_module(module)


def main() -> None:
    load_extension(sys.argv[1])
    import numpy as np

    from streamload.transport.ring import RecordType, Ring, RingCorrupted, RingTimeout

    cons = Ring.create(1 << 12)
    prod = Ring.attach(cons.handle(), "producer")
    rng = np.random.default_rng(1)
    held = []
    for seq in range(3000):
        size = int(rng.integers(0, prod.max_record - 10))
        data = rng.bytes(size)
        while True:  # one thread plays both sides: free space instead of blocking on ourselves
            try:
                prod.reserve(size + 10, timeout=0).abort()
                break
            except RingTimeout:
                held.pop(0).release()
        if seq % 3 == 0:
            with prod.reserve(size + 10) as res:
                view = np.frombuffer(res, dtype=np.uint8)
                view[:size] = np.frombuffer(data, dtype=np.uint8)
                del view
                res.commit(size)
        else:
            if seq % 7 == 0:
                prod.reserve(size).abort()
            prod.put(data, seq=seq)
        rec = cons.get(timeout=0)
        assert rec.seq == seq and bytes(rec) == data, seq
        held.append(rec)
        if len(held) > 2 or rng.integers(0, 2):
            held.pop(int(rng.integers(0, len(held)))).release()
    for rec in held:
        rec.release()

    prod.put(np.arange(10, dtype=np.int64))
    rec = cons.get(timeout=0)
    arr = np.frombuffer(rec.view(writable=True), dtype=np.int64)
    del rec
    arr += 1
    assert int(arr.sum()) == 55
    del arr
    assert cons.stats()["bytes_in_use"] == 0

    for garbage in (b"\xff" * 16, struct.pack("<IHHQ", 1 << 30, 1, 0, 0), b"\0" * 16):
        c2 = Ring.create(1 << 12)
        p2 = Ring.attach(c2.handle(), "producer")
        p2.put(b"x" * 100)
        poke(c2, 4096, garbage)
        try:
            c2.get(timeout=0)
        except RingCorrupted:
            pass
        else:
            raise AssertionError("garbage header accepted")

    # split(): the codec's str/bytes fast path, on valid and on hostile offsets.
    from streamload.transport import _ring

    texts = ["", "a", "héllo", "日本語", "x" * 300, "\udcff"]
    blob = "".join(texts).encode("utf-8", "surrogatepass")
    offsets = np.cumsum([0] + [len(t.encode("utf-8", "surrogatepass")) for t in texts])
    assert _ring.split(blob, offsets.astype(np.int64), True) == texts
    assert _ring.split(blob, offsets.astype(np.int64), False) == [
        t.encode("utf-8", "surrogatepass") for t in texts
    ]
    for bad in ([0, 5, 3], [0, len(blob) + 1], [-1, 2], [3]):
        try:
            _ring.split(blob, np.asarray(bad, np.int64), False)
        except ValueError:
            pass
        else:
            assert bad == [3], bad  # one offset, zero rows: an empty list
    try:
        _ring.split(b"\xff\xfe", np.asarray([0, 2], np.int64), True)
    except UnicodeDecodeError:
        pass
    else:
        raise AssertionError("invalid UTF-8 accepted")

    prod.close()
    assert cons.get(timeout=0).type == RecordType.EOS
    try:
        cons.get(timeout=0)
    except RingTimeout:
        raise AssertionError("closed ring timed out instead of raising RingClosed") from None
    except Exception as exc:
        assert type(exc).__name__ == "RingClosed", exc
    cons.close()
    print("ok")


if __name__ == "__main__":
    main()
