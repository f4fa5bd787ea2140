"""StreamingDataset: a sharded dataset with random access, its open shards and its place in a job."""
