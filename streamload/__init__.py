"""streamload: stream sharded Arrow/LMDB datasets into PyTorch, fast and in bounded memory."""

from streamload import config
from streamload.dataset.mixed import MixedDataset
from streamload.dataset.streaming import StreamingDataset
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
from streamload.loader.exporter import StatsExporter
from streamload.loader.loader import StreamLoader
from streamload.write.convert import convert
from streamload.write.writer import ShardWriter

__version__ = "0.1.0"

__all__ = [
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
