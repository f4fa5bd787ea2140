"""LMDB shards (one file per shard) and LMDB environments written by other tools."""
