"""streamload: stream sharded Arrow/LMDB datasets into PyTorch, fast and in bounded memory.

The public names below are all importable from here (``sl.StreamLoader``, ``from streamload
import StreamingDataset``). Importing the package itself is cheap: the errors and ``config`` load
at once, every other name (and with it torch, pyarrow, numpy) on first use, through the module
``__getattr__`` (PEP 562). So ``streamload --version``, ``info``, ``verify``, ``config`` and
``cache`` never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from streamload import config
from streamload.errors import (
    CacheError,
    ConfigError,
    FormatError,
    RingError,
    StateError,
    StoreError,
    StreamloadError,
    WorkerError,
)

if TYPE_CHECKING:
    from streamload.dataset.mixed import MixedDataset
    from streamload.dataset.streaming import StreamingDataset
    from streamload.loader.exporter import StatsExporter
    from streamload.loader.loader import StreamLoader
    from streamload.pipeline.collate import Blobs
    from streamload.write.convert import convert
    from streamload.write.writer import ShardWriter

__version__ = "0.1.0"

# Public name -> the module defining it, imported on first use.
_LAZY = {
    "Blobs": "streamload.pipeline.collate",
    "MixedDataset": "streamload.dataset.mixed",
    "ShardWriter": "streamload.write.writer",
    "StatsExporter": "streamload.loader.exporter",
    "StreamLoader": "streamload.loader.loader",
    "StreamingDataset": "streamload.dataset.streaming",
    "convert": "streamload.write.convert",
}

__all__ = [
    "Blobs",
    "CacheError",
    "ConfigError",
    "FormatError",
    "MixedDataset",
    "RingError",
    "ShardWriter",
    "StateError",
    "StatsExporter",
    "StoreError",
    "StreamLoader",
    "StreamingDataset",
    "StreamloadError",
    "WorkerError",
    "__version__",
    "config",
    "convert",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'streamload' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
