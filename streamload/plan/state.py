"""Resume state: where a pass stands, as a small JSON-able dict valid on any topology.

A state is ``{"version", "fingerprint", "epoch", "position"}``: the fingerprint says which
dataset, subset, shuffle settings and order algorithm it belongs to (`fingerprint`), ``position``
counts the ids of the epoch's global order consumed by all ranks together (see
`streamload.plan.partition`), so the same state continues the same order on another world size,
batch size or worker count. `check_state` refuses anything else with a `StateError` showing both
sides (a state saved before issue 12, of numpy's permutations, has no ``order`` key: refused);
a state is data from a file, so every field's type and range is checked (``version`` the
integer 1, not ``true`` or ``1.0``; ``epoch`` below ``MAX_EPOCH``; ``position`` within the
dataset) and values are quoted briefly in messages.

A mixture's state (`make_mixture_state`, `check_mixture_state`) adds each source's cursor (items
it has given) and the weight segments (where weights were set, with the cursors there; see
`streamload.plan.mixture`): still O(sources x segments), whatever the corpus.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from streamload.errors import StateError, quote
from streamload.plan.order import ORDER_VERSION, ShuffleSettings

STATE_VERSION = 1
MAX_EPOCH = 2**32 - 1  # far past any real run, and epoch + 1 stays a small int everywhere
_STATE_KEYS = frozenset(("version", "fingerprint", "epoch", "position"))


def fingerprint(
    num_samples: int, index_digest: str, settings: ShuffleSettings, subset: Any = None
) -> dict[str, Any]:
    """What a resume state must agree on: the dataset's identity, its subset (as given, JSON),
    its shuffle settings and the order algorithm's version."""
    return {
        "num_samples": num_samples,
        "index": index_digest,
        "order": ORDER_VERSION,
        **asdict(settings),
        "subset": subset,
    }


def make_state(fp: Mapping[str, Any], epoch: int, position: int) -> dict[str, Any]:
    """A JSON-serialisable resume state (plain ints and strings)."""
    return {"version": STATE_VERSION, "fingerprint": dict(fp), "epoch": epoch, "position": position}


def check_state(state: Any, fp: Mapping[str, Any], what: str) -> tuple[int, int]:
    """Validate a resume state against this dataset's fingerprint.

    Args:
        state: what ``make_state`` produced (possibly through JSON or torch.save).
        fp: this dataset's ``fingerprint``.
        what: the object loading it, for messages (e.g. ``"StreamLoader.load_state_dict"``).

    Returns:
        ``(epoch, position)``.

    Raises:
        StateError: not a state, unknown version, missing/extra keys, a fingerprint that differs
            (each differing field with both values), or a bad epoch/position.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"{what}: expected a state dict, got {type(state).__name__}")
    version = state.get("version")
    if type(version) is not int or version != STATE_VERSION:  # not True, not 1.0
        raise StateError(
            f"{what}: state version {quote(version)} is not supported"
            f" (this streamload reads version {STATE_VERSION})"
        )
    keys = sorted(map(str, state))
    if set(state) != _STATE_KEYS:
        raise StateError(
            f"{what}: state keys {quote(keys)} differ from the expected {sorted(_STATE_KEYS)}"
        )
    saved = state["fingerprint"]
    if not isinstance(saved, Mapping) or not _same(saved, fp):
        saved = dict(saved) if isinstance(saved, Mapping) else {"?": saved}
        fields = sorted({str(k) for k in saved} | set(fp))
        by_name = {str(k): v for k, v in saved.items()}
        diffs = [
            f"{key}: state has {quote(by_name.get(key, '<missing>'))}, this dataset has"
            f" {quote(fp.get(key, '<missing>'))}"
            for key in fields
            if not _same_value(by_name.get(key, "<missing>"), fp.get(key, "<missing>"))
        ]
        raise StateError(
            f"{what}: the state belongs to another dataset or other shuffle settings; "
            + "; ".join(diffs)
            + f"\nstate fingerprint: {quote(by_name)}"
            + f"\nthis dataset:      {json.dumps(dict(fp), sort_keys=True)}"
        )
    epoch, position = state["epoch"], state["position"]
    if type(epoch) is not int or not 0 <= epoch <= MAX_EPOCH:
        raise StateError(
            f"{what}: state epoch must be an int in [0, {MAX_EPOCH}], got {quote(epoch)}"
        )
    if type(position) is not int or position < 0:
        raise StateError(f"{what}: state position must be an int >= 0, got {quote(position)}")
    if position > fp["num_samples"]:
        raise StateError(
            f"{what}: state position {position} is past the end of the dataset"
            f" ({fp['num_samples']} samples)"
        )
    return epoch, position


# -- mixtures ---------------------------------------------------------------------------------------

#: 2 records each source's shuffle window (``windows``); 1 (before) had none: each source then
#: shuffled within its own ``shuffle_block``, which is what a version-1 state loads as.
MIXTURE_STATE_VERSION = 2
_MIXTURE_KEYS_V1 = frozenset(
    ("version", "kind", "fingerprint", "epoch", "position", "cursors", "segments")
)
_MIXTURE_KEYS = _MIXTURE_KEYS_V1 | {"windows"}
_SEGMENT_KEYS = frozenset(("epoch", "position", "weights", "cursors"))
#: A weight segment: (epoch, position, integer weights, cursors) where the weights were set.
SegmentState = tuple[int, int, tuple[int, ...], tuple[int, ...]]


def make_mixture_state(
    fp: Mapping[str, Any],
    names: Sequence[str],
    epoch: int,
    position: int,
    cursors: Sequence[int],
    segments: Sequence[SegmentState],
    windows: Sequence[int | None],
) -> dict[str, Any]:
    """A mixture's JSON-serialisable state (the shape is in the module docstring of
    `streamload.dataset.mixed`); ``windows``: each source's shuffle window in shards (None for
    a source not shuffled in block mode)."""
    return {
        "version": MIXTURE_STATE_VERSION,
        "kind": "mixture",
        "fingerprint": dict(fp),
        "epoch": epoch,
        "position": position,
        "cursors": dict(zip(names, cursors, strict=True)),
        "segments": [
            {
                "epoch": e,
                "position": p,
                "weights": dict(zip(names, weights, strict=True)),
                "cursors": dict(zip(names, seg_cursors, strict=True)),
            }
            for e, p, weights, seg_cursors in segments
        ],
        "windows": dict(zip(names, windows, strict=True)),
    }


def check_mixture_state(
    state: Any, fp: Mapping[str, Any], names: Sequence[str], what: str
) -> tuple[int, int, tuple[int, ...], list[SegmentState], tuple[int | None, ...] | None]:
    """Validate a mixture state against this mixture's fingerprint.

    Args:
        state: what `make_mixture_state` produced (possibly through JSON or torch.save).
        fp: this mixture's fingerprint: ``{"sources": {name: source fingerprint}, ...}``, whose
            ``samples`` bounds the position.
        names: the sources, in order.
        what: the object loading it, for messages.

    Returns:
        ``(epoch, position, cursors, segments, windows)``; windows None for a version-1 state
        (which predates them).

    Raises:
        StateError: not a mixture state, another version, missing or extra keys, sources that
            changed (each named: only in the state, not in the state, or another dataset, subset
            or shuffle), other mixture settings (both sides), malformed cursors or segments.
    """
    if not isinstance(state, Mapping):
        raise StateError(f"{what}: expected a state dict, got {type(state).__name__}")
    if state.get("kind") != "mixture":
        raise StateError(f"{what}: not a mixture state (kind={state.get('kind')!r})")
    version = state.get("version")
    if type(version) is not int or version not in (1, MIXTURE_STATE_VERSION):
        raise StateError(
            f"{what}: mixture state version {version!r} is not supported"
            f" (this streamload reads versions 1 and {MIXTURE_STATE_VERSION})"
        )
    keys = _MIXTURE_KEYS if version == MIXTURE_STATE_VERSION else _MIXTURE_KEYS_V1
    if set(state) != keys:
        raise StateError(
            f"{what}: state keys {sorted(state)} differ from the expected {sorted(keys)}"
            f" (mixture state version {version})"
        )
    _check_sources(state["fingerprint"], fp, what)
    epoch, position = state["epoch"], state["position"]
    for name, value in (("epoch", epoch), ("position", position)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise StateError(f"{what}: state {name} must be an int >= 0, got {value!r}")
    if position > fp["samples"]:
        raise StateError(
            f"{what}: state position {position} is past the end of the epoch"
            f" ({fp['samples']} positions)"
        )
    cursors = _per_source(state["cursors"], names, what, "cursors")
    segments = state["segments"]
    if not isinstance(segments, list) or not segments:
        raise StateError(f"{what}: state segments must be a non-empty list")
    loaded: list[SegmentState] = []
    for i, seg in enumerate(segments):
        where = f"segments[{i}]"
        if not isinstance(seg, Mapping) or set(seg) != _SEGMENT_KEYS:
            raise StateError(f"{what}: state {where} must have {sorted(_SEGMENT_KEYS)}")
        for key in ("epoch", "position"):
            value = seg[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise StateError(f"{what}: state {where}.{key} must be an int >= 0, got {value!r}")
        weights = _per_source(seg["weights"], names, what, f"{where}.weights")
        if min(weights) <= 0:
            raise StateError(f"{what}: state {where}.weights must be positive, got {weights}")
        seg_cursors = _per_source(seg["cursors"], names, what, f"{where}.cursors")
        loaded.append((seg["epoch"], seg["position"], weights, seg_cursors))
    windows = None if version == 1 else _windows(state["windows"], names, what)
    return epoch, position, cursors, loaded, windows


def _windows(values: Any, names: Sequence[str], what: str) -> tuple[int | None, ...]:
    if not isinstance(values, Mapping) or list(values) != list(names):
        raise StateError(f"{what}: state windows must map each of {list(names)} to an int or null")
    out = tuple(values[n] for n in names)
    if not all(
        k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1) for k in out
    ):
        raise StateError(f"{what}: state windows must be ints >= 1 or null, got {dict(values)}")
    return out


def _check_sources(saved: Any, fp: Mapping[str, Any], what: str) -> None:
    if not isinstance(saved, Mapping) or not isinstance(saved.get("sources"), Mapping):
        raise StateError(f"{what}: the state's fingerprint has no sources: {saved!r:.200}")
    theirs, mine = saved["sources"], fp["sources"]
    changed = [f"{n!r} (only in the state)" for n in theirs if n not in mine]
    changed += [f"{n!r} (not in the state)" for n in mine if n not in theirs]
    changed += [
        f"{n!r} (another dataset, subset or shuffle: {_diff(theirs[n], source)})"
        for n, source in mine.items()
        if n in theirs and theirs[n] != source
    ]
    if changed:
        raise StateError(f"{what}: the mixture's sources changed: " + "; ".join(changed))
    if list(theirs) != list(mine):
        raise StateError(
            f"{what}: the sources come in another order: the state has {list(theirs)}, this"
            f" mixture {list(mine)}"
        )
    others = {k: v for k, v in saved.items() if k != "sources"}
    expected = {k: v for k, v in fp.items() if k != "sources"}
    if others != expected:
        raise StateError(
            f"{what}: the state belongs to other mixture settings: {_diff(others, expected)}"
        )


def _per_source(values: Any, names: Sequence[str], what: str, field: str) -> tuple[int, ...]:
    if not isinstance(values, Mapping) or list(values) != list(names):
        raise StateError(f"{what}: state {field} must map each of {list(names)} to an int")
    out = tuple(values[n] for n in names)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in out):
        raise StateError(f"{what}: state {field} must be ints >= 0, got {dict(values)}")
    return out


def _diff(theirs: Any, mine: Any) -> str:
    if isinstance(theirs, Mapping) and isinstance(mine, Mapping):
        return "; ".join(
            f"{k}: state has {theirs.get(k, '<missing>')!r}, now {mine.get(k, '<missing>')!r}"
            for k in sorted(set(theirs) | set(mine))
            if theirs.get(k, "<missing>") != mine.get(k, "<missing>")
        )
    return f"state has {json.dumps(theirs, default=str)}, now {json.dumps(mine, default=str)}"


def _same_value(saved: object, ours: object) -> bool:
    """Equal and of the same JSON type (a state's ``true`` is not this dataset's ``1``)."""
    return type(saved) is type(ours) and saved == ours


def _same(saved: Mapping[Any, Any], fp: Mapping[str, Any]) -> bool:
    return len(saved) == len(fp) and all(
        key in saved and _same_value(saved[key], value) for key, value in fp.items()
    )
