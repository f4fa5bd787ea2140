"""Arrow IPC shards: memory-mapped reader and writer."""
