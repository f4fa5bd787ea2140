"""streamload: stream sharded Arrow/LMDB datasets into PyTorch, fast and in bounded memory."""

from streamload import config
from streamload.collate import Blobs
from streamload.convert import convert
from streamload.dataset import StreamingDataset
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
from streamload.exporter import StatsExporter
from streamload.loader import StreamLoader
from streamload.writer import ShardWriter

__version__ = "0.1.0"

__all__ = [
    "Blobs",
    "CacheError",
    "ConfigError",
    "FormatError",
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
