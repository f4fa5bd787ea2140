"""streamload on Ray Data (the ``ray`` extra): write a dataset from a Ray Data pipeline with one
atomic commit, or convert a file-based source in parallel Ray tasks.

::

    import ray
    import streamload.ray

    sink = streamload.ray.ShardDatasink("s3://bucket/ds", format="arrow", shard_size="256MB")
    ray.data.read_parquet("s3://corpus/").map_batches(tokenize).write_datasink(sink)

    streamload.ray.convert("s3://corpus/parquet/", "s3://bucket/ds")  # = sl.convert(engine="ray")

How tasks stage shards, how the completion hook commits and why retries never duplicate a sample:
`streamload.write.ray_engine`. Importing this module imports Ray; ``import streamload`` does not.
"""

from streamload.write.ray_engine import ShardDatasink, TaskShards, convert

__all__ = ["ShardDatasink", "TaskShards", "convert"]
