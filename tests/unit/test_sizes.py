"""Size strings: decimal and binary units, errors that name the setting."""

from __future__ import annotations

import pytest

from streamload.sizes import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (123, 123),
        ("123", 123),
        ("512MB", 512 * 10**6),
        ("2GiB", 2 * 2**30),
        ("1.5GB", 1_500_000_000),
        ("100 KiB", 100 * 1024),
        ("7b", 7),
        ("3 tib", 3 * 2**40),
        ("1kb", 1000),
        (" 4 MiB ", 4 * 2**20),
        ("0.5KiB", 512),
    ],
)
def test_parse_size_accepts_ints_and_unit_strings(text: object, expected: int) -> None:
    """Decimal units are powers of 10, binary units powers of 2, case-insensitive."""
    assert parse_size(text, what="shard_size") == expected


@pytest.mark.parametrize(
    "bad", [-1, "", "MB", "12 parsecs", "1.2.3GB", "-5MB", True, 1.5, None, "1e3"]
)
def test_parse_size_rejects_garbage_naming_the_setting(bad: object) -> None:
    """Anything that is not a size raises ValueError naming the setting and the value."""
    with pytest.raises(ValueError, match="cache_limit") as info:
        parse_size(bad, what="cache_limit")
    if isinstance(bad, str) and bad:
        assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * 2**30 // 2, "1.5 GiB"),
        (5 * 2**40, "5.0 TiB"),
    ],
)
def test_format_size_uses_largest_binary_unit(n: int, text: str) -> None:
    """format_size picks the largest binary unit keeping the number >= 1."""
    assert format_size(n) == text
