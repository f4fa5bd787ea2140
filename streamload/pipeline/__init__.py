"""Turning plan items into batches: fetchers and collation (stack columns, then tensors)."""
