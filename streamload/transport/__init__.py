"""Moving batches between processes: the native shared-memory ring and the batch codec."""
