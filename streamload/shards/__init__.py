"""Shard readers and writers: the reader protocol, Arrow IPC and LMDB."""
