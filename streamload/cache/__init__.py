"""The node's shard cache: disk layout, locks, eviction order, index.json copies, read-ahead.

Settings arrive as plain values; nothing here reads the configuration."""
