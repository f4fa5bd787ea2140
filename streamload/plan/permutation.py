"""Seeded bijections of ``[0, n)`` evaluated at any positions, in O(1) memory.

`permute(positions, n, key)` maps int64 positions to the ids at those positions of a
pseudo-random permutation of ``[0, n)`` chosen by ``key``, vectorised, without ever building the
permutation; ``n`` and ``key`` may be arrays too (one domain per element: the per-shard
permutations of a subset are evaluated for a whole batch at once). `Permutation(n, key)` is the
same for one domain. This is what makes a shuffled epoch lazy: position ``p`` of a 10^9-item
epoch costs what position ``p`` of a 10^3-item one does, and no process holds the epoch.

Construction: a keyed Feistel network on the smallest power-of-two domain ``2^b >= n`` (at
least 4), split into a left part of ``b // 2`` bits and a right part of the rest (unbalanced:
the parts swap widths every round, and an even number of rounds brings them back), ``ROUNDS``
rounds whose round function is the splitmix64 finaliser of the right part xor a round key. Each
round is invertible, so the network permutes ``[0, 2^b)``; *cycle-walking* (apply it again while
the result is ``>= n``) restricts it to a permutation of ``[0, n)``. As ``2^b < 2n`` (n > 2),
each walk step lands inside with probability above one half.

Invariants (tested): for every ``n`` and key, ``permute(arange(n), n, key)`` is a permutation of
``range(n)``; an element's result never depends on which other elements are evaluated with it;
the same ``(n, key)`` gives the same permutation in every process, platform and numpy version
(uint64 arithmetic that wraps, no numpy random streams). Keys come from `derive_key` (any ints:
seed, epoch, a purpose tag ...).

This is a shuffle, not cryptography: the round function is a fast mixer, good enough that
position/id correlation and where each decile of ids lands look like a uniform permutation's
(see the tests), nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 4
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_ONE = np.uint64(1)
_POW2 = 1 << np.arange(63, dtype=np.int64)  # bit_length(x) = count of powers of two <= x


def _mix_int(z: int) -> int:
    """splitmix64's finaliser on a Python int (key derivation)."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def derive_key(*words: int) -> int:
    """A 64-bit key from any ints (seed, epoch, tags): equal words give equal keys everywhere.

    Words may be negative or wider than 64 bits (folded 64 bits at a time); order matters.
    """
    h = _GOLDEN
    for word in words:
        word = int(word)
        while True:
            h = _mix_int(h ^ ((word & _M64) + _GOLDEN))
            word >>= 64
            if word in (0, -1):
                break
        h = _mix_int(h ^ (1 if word < 0 else 0))
    return h


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, element-wise and in place on a uint64 array (wraps mod 2^64)."""
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    return z


def round_keys(key: int | np.ndarray) -> list[np.ndarray]:
    """The ``ROUNDS`` round keys of ``key`` (a scalar, or one per element), uint64 arrays."""
    base = np.atleast_1d(np.asarray(key, dtype=np.uint64))
    return [_mix(base ^ np.uint64(_mix_int(_GOLDEN * (i + 1)))) for i in range(ROUNDS)]


def key_array(seed_key: int, tags: np.ndarray) -> np.ndarray:
    """One key per element of ``tags`` (e.g. a shard index) under ``seed_key``, vectorised."""
    tags = np.asarray(tags, dtype=np.int64).astype(np.uint64)
    return _mix(tags * np.uint64(_GOLDEN) ^ np.uint64(seed_key & _M64))


def permute(
    positions: np.ndarray | Sequence[int],
    n: int | np.ndarray,
    key: int | np.ndarray,
    *,
    keys: list[np.ndarray] | None = None,
) -> np.ndarray:
    """The ids at ``positions`` of the permutation of ``[0, n)`` keyed by ``key``.

    Args:
        positions: int positions, each in ``[0, n)`` (its own ``n`` when ``n`` is an array).
        n: domain size, or one per position.
        key: a 64-bit key, or one per position.
        keys: ``round_keys(key)`` when the caller keeps them (skips deriving them again).

    Returns:
        int64 ids, the shape of ``positions``.

    Raises:
        IndexError: a position outside its domain.
    """
    pos = np.asarray(positions, dtype=np.int64)
    shape = pos.shape
    flat = pos.reshape(-1)
    sizes = np.asarray(n, dtype=np.int64)
    if flat.size == 0:
        return flat.copy().reshape(shape)
    if flat.min() < 0 or np.any(flat >= sizes):
        raise IndexError("permute: positions must be in [0, n)")
    bits = np.maximum(np.searchsorted(_POW2, sizes - 1, "right"), 2).astype(np.uint64)
    left = bits // np.uint64(2)
    right = bits - left
    rounds = keys if keys is not None else round_keys(key)
    x = _network(flat.astype(np.uint64), rounds, left, right)
    limit = sizes.astype(np.uint64)
    outside = np.flatnonzero(x >= limit)
    while outside.size:  # cycle-walk: more than half of what is left lands inside each pass
        walked = _network(
            x[outside],
            [_pick(k, outside) for k in rounds],
            _pick(left, outside),
            _pick(right, outside),
        )
        x[outside] = walked
        outside = outside[walked >= _pick(limit, outside)]
    return x.astype(np.int64).reshape(shape)


def _pick(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``values[where]`` for per-element values; a scalar (or one value for all) as it is."""
    return values[where] if np.ndim(values) and np.size(values) > 1 else values


def _network(x: np.ndarray, rounds: list[np.ndarray], wl: np.ndarray, wr: np.ndarray) -> np.ndarray:
    """The Feistel network on ``[0, 2^bits)``: each round maps (L, R) to (R, L ^ F(R))."""
    for key in rounds:
        left = x >> wr
        right = x & ((_ONE << wr) - _ONE)
        f = _mix(right ^ key)
        f &= (_ONE << wl) - _ONE
        f ^= left
        right <<= wl
        right |= f
        x = right
        wl, wr = wr, wl
    return x


class Permutation:
    """A seeded bijection of ``[0, n)``: ``perm(positions)`` is ``permute(positions, n, key)``
    with the round keys derived once.

    Raises:
        ValueError: n < 0.
    """

    __slots__ = ("_keys", "n")

    def __init__(self, n: int, key: int) -> None:
        if n < 0:
            raise ValueError(f"Permutation: n must be >= 0, got {n}")
        self.n = int(n)
        self._keys = round_keys(key)

    def __len__(self) -> int:
        return self.n

    def __call__(self, positions: np.ndarray | Sequence[int]) -> np.ndarray:
        """The ids at ``positions`` (each in ``[0, n)``), int64, same shape.

        Raises:
            IndexError: a position outside ``[0, n)``.
        """
        pos = np.asarray(positions, dtype=np.int64)
        if self.n <= 1:
            if pos.size and (pos.min() < 0 or pos.max() >= self.n):
                raise IndexError(f"Permutation: positions must be in [0, {self.n})")
            return pos.copy()
        return permute(pos, self.n, 0, keys=self._keys)

    def __repr__(self) -> str:
        return f"Permutation(n={self.n})"
