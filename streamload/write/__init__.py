"""Writing datasets: ShardWriter, conversion sources and convert."""
