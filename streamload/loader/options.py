"""What a StreamLoader is told about its workers and transport, validated once at construction.

`WorkerOptions` holds DataLoader's worker arguments, checked in DataLoader's order with the same
exception types. `LoaderSettings` holds what the configuration decides for a loader (ring size,
heap retention, start method), resolved by `streamload.config.load` once when the loader is made
and handed down as plain values: nothing behind the loader reads the configuration.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamload.errors import ConfigError


@dataclass(frozen=True)
class LoaderSettings:
    """The configuration's part in a loader.

    Attributes:
        ring_size: shared-memory ring bytes per worker; 0 = auto (sized from the data).
        heap_retain: freed heap a loader process keeps (glibc ``mallopt``; 0 = malloc defaults).
        start_method: worker start method when the loader is given no context (``auto``,
            ``fork``, ``spawn`` or ``forkserver``).
        ring_size_origin: what the user set and where (``"'1MB' (argument)"``), for messages.
    """

    ring_size: int
    heap_retain: int
    start_method: str
    ring_size_origin: str = "auto (default)"

    @classmethod
    def from_config(cls, cfg: Any, ring_size_as_set: object = None) -> LoaderSettings:
        """From a resolved `streamload.config.Config` (``ring_size_as_set``: the loader's own
        ``ring_size`` argument as the user wrote it)."""
        source = cfg.source("ring_size")
        shown = ring_size_as_set if ring_size_as_set is not None else cfg.ring_size
        origin = f"{shown!r} ({source})" if cfg.ring_size else f"auto ({source})"
        return cls(cfg.ring_size, cfg.heap_retain, cfg.start_method, origin)


@dataclass(frozen=True)
class WorkerOptions:
    """The worker-process settings of a loader, validated as DataLoader validates them."""

    num_workers: int = 0
    prefetch_factor: int | None = None
    persistent_workers: bool = False
    timeout: float = 0
    worker_init_fn: Callable[[int], None] | None = None
    multiprocessing_context: multiprocessing.context.BaseContext | None = None
    in_order: bool = True

    @classmethod
    def validated(
        cls,
        num_workers: int,
        prefetch_factor: int | None,
        persistent_workers: bool,
        timeout: float,
        worker_init_fn: Callable[[int], None] | None,
        multiprocessing_context: str | multiprocessing.context.BaseContext | None,
        in_order: bool,
    ) -> WorkerOptions:
        """Check the settings in DataLoader's order and fill its defaults.

        Raises:
            ConfigError: negative num_workers/timeout/prefetch_factor, prefetch_factor or
                persistent_workers or multiprocessing_context without workers, an unknown
                start method.
            TypeError: multiprocessing_context is neither a start method name nor a context.
        """
        if num_workers < 0:
            raise ConfigError(
                f"StreamLoader num_workers: must be >= 0 (0 loads in this process), got {num_workers}"
            )
        if timeout < 0:
            raise ConfigError(f"StreamLoader timeout: must be >= 0, got {timeout}")
        if num_workers == 0 and prefetch_factor is not None:
            raise ConfigError(
                "StreamLoader prefetch_factor: only meaningful with num_workers > 0;"
                " leave it None for num_workers=0"
            )
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        elif prefetch_factor is not None and prefetch_factor < 0:
            raise ConfigError(f"StreamLoader prefetch_factor: must be >= 0, got {prefetch_factor}")
        if persistent_workers and num_workers == 0:
            raise ConfigError("StreamLoader persistent_workers: needs num_workers > 0")
        return cls(
            num_workers=num_workers,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=_start_context(multiprocessing_context, num_workers),
            in_order=in_order,
        )


def _start_context(
    context: str | multiprocessing.context.BaseContext | None, num_workers: int
) -> multiprocessing.context.BaseContext | None:
    if context is None:
        return None
    if num_workers == 0:
        raise ConfigError(
            "StreamLoader multiprocessing_context: only used with num_workers > 0,"
            f" got num_workers={num_workers}"
        )
    if isinstance(context, str):
        methods = multiprocessing.get_all_start_methods()
        if context not in methods:
            raise ConfigError(
                f"StreamLoader multiprocessing_context: {context!r} is not a start method"
                f" here; use one of {methods}"
            )
        return multiprocessing.get_context(context)
    if not isinstance(context, multiprocessing.context.BaseContext):
        raise TypeError(
            "StreamLoader multiprocessing_context: expected a start method name or a"
            f" multiprocessing context, got {context!r}"
        )
    return context


def warn_if_too_many_workers(num_workers: int) -> None:
    if num_workers == 0:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if cpus is None or num_workers > cpus:
        warnings.warn(
            f"StreamLoader will create {num_workers} worker processes but only {cpus} CPUs are"
            " usable; too many workers can slow loading down",
            stacklevel=3,
        )
