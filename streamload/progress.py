"""Progress bars for long work (writing, converting, verifying, benchmarking).

`progress()` returns a tqdm bar writing to stderr when bars are enabled, else a `NullProgress`
with the same small surface (iteration, ``update``, ``set_postfix``, ``set_description``,
``close``, context manager), so callers never branch on whether a bar is shown. Whether bars
are shown follows the ``progress`` setting, which the caller passes as ``mode`` (this module reads
no configuration): ``auto`` (only when stderr is a terminal, so logs and pipes stay clean),
``always`` or ``never``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any


class NullProgress:
    """A progress bar that shows nothing; iterating it iterates the wrapped iterable."""

    def __init__(self, iterable: Iterable[Any] | None = None, total: float | None = None) -> None:
        self.iterable = iterable
        self.total = total
        self.n: float = 0

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress bar wraps no iterable; call update() instead")
        for item in self.iterable:
            self.n += 1
            yield item

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def bars_enabled(setting: str) -> bool:
    """Whether progress bars should be shown under the ``progress`` setting ``setting``
    (``"auto"``, ``"always"`` or ``"never"``)."""
    if setting == "always":
        return True
    if setting == "never":
        return False
    stream = sys.stderr
    return stream is not None and stream.isatty()


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str | None = None,
    unit: str = "it",
    mode: str = "auto",
    enabled: bool | None = None,
    unit_scale: bool = False,
    leave: bool = True,
) -> Any:
    """A progress bar over ``iterable`` (or driven by ``update(n)``), or a silent stand-in.

    Args:
        iterable: what to iterate; None for a bar advanced with ``update(n)``.
        total: the expected total (defaults to ``len(iterable)`` where available).
        desc: a short label shown before the bar.
        unit: the unit name (``"B"`` with ``unit_scale=True`` shows MB/s etc.).
        mode: the ``progress`` setting (resolved by the caller's entry point).
        enabled: force bars on or off; None follows ``mode``.
        unit_scale: scale counts with SI prefixes (for bytes).
        leave: keep the finished bar on screen (False erases it, for many short bars).

    Returns:
        A ``tqdm.tqdm`` writing to stderr, or a `NullProgress`; both support iteration,
        ``update``, ``set_postfix``, ``set_description``, ``close`` and ``with``.
    """
    if enabled is None:
        enabled = bars_enabled(mode)
    if not enabled:
        return NullProgress(iterable, total)
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=unit_scale,
        leave=leave,
        file=sys.stderr,
        dynamic_ncols=True,
        # Without a terminal (progress=always into a log), redraw rarely instead of spamming.
        mininterval=0.1 if sys.stderr.isatty() else 5.0,
    )
