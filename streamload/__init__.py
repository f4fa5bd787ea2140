"""streamload: stream sharded Arrow/LMDB datasets into PyTorch, fast and in bounded memory."""

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

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ConfigError",
    "FormatError",
    "RingError",
    "StateError",
    "StoreError",
    "StreamloadError",
    "WorkerError",
    "__version__",
]
