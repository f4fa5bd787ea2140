"""LMDB shards (one file per shard) and LMDB environments written by other tools."""

ENV_FORMAT = "lmdb-env"  # an LMDB environment streamload did not write (never in an index.json)
