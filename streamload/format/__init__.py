"""The on-disk format: schema, index.json, checksums, verification marks, columnar blobs."""
