"""Byte sizes as users write them: ``512MB``, ``2GiB``, ``1.5 GB``, ``123``.

Decimal units (KB, MB, GB, TB) are powers of 10, binary units (KiB, MiB, GiB, TiB) powers of 2,
``B`` or no unit means bytes; units are case-insensitive. A fractional size rounds down to a whole
byte. Parsing never guesses: anything else is a ``ValueError`` naming what was being parsed, so
callers (config, ShardWriter) can re-raise it as a ``ConfigError`` naming their key.
"""

from __future__ import annotations

import math
import re

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(value: object, *, what: str) -> int:
    """Parse a byte size.

    Args:
        value: a non-negative int, or a string such as ``"512MB"``, ``"2GiB"``, ``"1.5 GB"``, ``"123"``.
        what: the name of the setting being parsed, used in the error message.

    Returns:
        The size in bytes.

    Raises:
        ValueError: the value is negative, not an int/str, or not a size string.
    """
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected a size such as 512MB or 2GiB, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what}: size must be >= 0, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a size such as 512MB or 2GiB, got {value!r}")
    match = _SIZE_RE.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{what}: cannot parse size {value!r} (use e.g. 512MB, 2GiB, 100 KiB or a byte count;"
            f" units: {', '.join(u for u in ('B', 'KB', 'MB', 'GB', 'TB', 'KiB', 'MiB', 'GiB', 'TiB'))})"
        )
    number = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    size = number * _UNITS[unit]
    if isinstance(size, float):
        if not math.isfinite(size):
            raise ValueError(f"{what}: size {value!r} is too large")
        return math.floor(size)
    return size


def format_size(n: int) -> str:
    """Format a byte count for people, in binary units: ``1536`` -> ``"1.5 KiB"``.

    Args:
        n: a byte count (negative counts keep their sign).

    Returns:
        ``"512 B"`` below 1 KiB, else one decimal with the largest binary unit that keeps the
        number >= 1 (``"1.5 GiB"``).
    """
    sign = "-" if n < 0 else ""
    if abs(n) < 1024:
        return f"{sign}{abs(n)} B"
    size = float(abs(n))
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{sign}{size:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
