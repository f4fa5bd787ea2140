"""What a StreamLoader is told about its workers and transport, validated once at construction.

`WorkerOptions` holds DataLoader's worker arguments, checked in DataLoader's order with the same
exception types and DataLoader's messages (streamload's detail appended). `effective_start_method`
decides how workers start when the loader is given no context. `LoaderSettings` holds what the configuration decides for a loader (ring size,
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
        ring_size: shared-memory ring bytes per worker; 0 = auto (4 MiB; with zero_copy sized
            from the data).
        heap_retain: freed heap a loader process keeps (`streamload.loader.heap`: workers set
            glibc's trim threshold, the trainer only primes glibc's own sliding thresholds; 0 =
            leave malloc alone).
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
                "num_workers option should be non-negative; use num_workers=0 to disable"
                f" multiprocessing. (StreamLoader: got num_workers={num_workers})"
            )
        if timeout < 0:
            raise ConfigError(
                f"timeout option should be non-negative (StreamLoader: got timeout={timeout})"
            )
        if num_workers == 0 and prefetch_factor is not None:
            raise ConfigError(
                "prefetch_factor option could only be specified in multiprocessing.let"
                " num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to"
                f" None. (StreamLoader: got prefetch_factor={prefetch_factor})"
            )
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        elif prefetch_factor is not None and prefetch_factor < 0:
            raise ConfigError(
                "prefetch_factor option should be non-negative"
                f" (StreamLoader: got prefetch_factor={prefetch_factor})"
            )
        if persistent_workers and num_workers == 0:
            raise ConfigError(
                "persistent_workers option needs num_workers > 0 (StreamLoader: got num_workers=0)"
            )
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
            "multiprocessing_context can only be used with multi-process loading"
            f" (num_workers > 0), but got num_workers={num_workers}"
        )
    if isinstance(context, str):
        methods = multiprocessing.get_all_start_methods()
        if context not in methods:
            raise ConfigError(
                f"multiprocessing_context option should specify a valid start method in"
                f" {methods!r}, but got multiprocessing_context={context!r}"
            )
        return multiprocessing.get_context(context)
    if not isinstance(context, multiprocessing.context.BaseContext):
        raise TypeError(
            "multiprocessing_context option should be a valid context object or a string"
            f" specifying the start method, but got multiprocessing_context={context}"
        )
    return context


def effective_start_method(configured: str) -> str:
    """The start method of a loader given no ``multiprocessing_context``, at ``iter()``.

    Precedence, highest first: the ``start_method`` setting when it names a method (``fork``,
    ``spawn``, ``forkserver``: the user chose it for streamload); the program's global
    ``multiprocessing.set_start_method(...)``, which DataLoader follows; ``auto`` (see
    `streamload.loader.pool.default_context`). A global method equal to the platform's default
    (``fork`` on Linux before Python 3.14) counts as no choice: libraries fix the default
    context implicitly as soon as they create a lock or queue, so it cannot be told apart from
    a deliberate ``set_start_method("fork")``; ``auto`` also forks then, unless the trainer runs
    other threads.

    Returns:
        ``fork``, ``spawn``, ``forkserver`` or ``auto``.
    """
    if configured != "auto":
        return configured
    chosen = multiprocessing.get_start_method(allow_none=True)
    if chosen is not None and chosen != _platform_default_start_method():
        return chosen
    return "auto"


def _platform_default_start_method() -> str:
    default = multiprocessing.context._default_context._default_context  # type: ignore[attr-defined]
    return str(default.get_start_method())


def warn_if_too_many_workers(num_workers: int, stacklevel: int = 3) -> None:
    """DataLoader's warning when more workers are asked for than CPUs are usable
    (``check_worker_number_rationality``), worded as DataLoader words it."""
    if num_workers == 0:
        return
    cpuset_checked = hasattr(os, "sched_getaffinity")
    cpus = len(os.sched_getaffinity(0)) if cpuset_checked else os.cpu_count()
    if cpus is not None and num_workers <= cpus:
        return
    if cpus is None:
        suggested = (
            "DataLoader is not able to compute a suggested max number of worker in current system."
        )
    else:
        suggested = (
            f"Our suggested max number of worker in current system is {cpus}"
            f"{'' if cpuset_checked else ' (`cpuset` is not taken into account)'}, which is"
            " smaller than what this DataLoader is going to create."
        )
    warnings.warn(
        f"This DataLoader will create {num_workers} worker processes in total. {suggested}"
        " Please be aware that excessive worker creation might get DataLoader running slow or"
        " even freeze, lower the worker number to avoid potential slowness/freeze if necessary."
        " (StreamLoader: each worker also holds one shared-memory ring of ring_size bytes.)",
        stacklevel=stacklevel,
    )
