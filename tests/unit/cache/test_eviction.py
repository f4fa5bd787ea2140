"""The eviction order (`streamload.cache.eviction.eviction_order`), a pure function."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streamload.cache.eviction import CacheEntry, eviction_order

_entries = st.lists(
    st.builds(
        CacheEntry,
        path=st.sampled_from([f"/c/{i}" for i in range(12)]),
        bytes=st.integers(1, 10),
        mtime=st.floats(0, 100),
    ),
    unique_by=lambda e: e.path,
)


_paths = st.sampled_from([f"/c/{i}" for i in range(12)])


@given(
    _entries,
    st.dictionaries(_paths, st.integers(0, 50)),
    st.lists(st.tuples(st.dictionaries(_paths, st.integers(0, 50)), st.booleans()), max_size=3),
    _paths,
)
def test_eviction_order_is_unknown_lru_then_furthest_next_use_then_worth_waiting(
    entries: list[CacheEntry],
    own: dict[str, int],
    plans: list[tuple[dict[str, int], bool]],
    target: str,
) -> None:
    """Every entry once; nobody's files first (LRU); then Belady by the soonest use by anyone;
    ``later`` holds exactly the files some other process that is not itself stuck reads before
    it needs ``target``."""
    others = [needs for needs, _ in plans]
    moving = [needs for needs, stuck in plans if not stuck]
    now, later = eviction_order(entries, own, others, target, moving)
    assert sorted(e.path for e in now + later) == sorted(e.path for e in entries)
    never = 10**9

    def soonest(path: str) -> int:
        return min([own.get(path, never), *(p.get(path, never) for p in others)])

    def worth_waiting(path: str) -> bool:
        return any(p.get(path, never) < p.get(target, never) for p in moving)

    assert {e.path for e in later} == {e.path for e in entries if worth_waiting(e.path)}
    kinds = [soonest(e.path) != never for e in now]
    assert kinds == sorted(kinds)  # unknown (False) first
    unknown = [e for e in now if soonest(e.path) == never]
    assert [e.mtime for e in unknown] == sorted(e.mtime for e in unknown)
    needed = [soonest(e.path) for e in now if soonest(e.path) != never]
    assert needed == sorted(needed, reverse=True)
    waits = [soonest(e.path) for e in later]
    assert waits == sorted(waits, reverse=True)


def test_a_file_only_this_process_needs_soon_goes_last() -> None:
    """Of three cached files, the one nobody needs goes first, then the one needed latest; the
    one needed next goes last (Belady)."""
    entries = [CacheEntry(f"/c/{i}", 1, float(i)) for i in range(3)]
    now, later = eviction_order(entries, own={"/c/1": 5, "/c/2": 0})
    assert [e.path for e in now] == ["/c/0", "/c/1", "/c/2"] and later == []
