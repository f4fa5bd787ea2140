"""Storage: fsspec filesystems for every URL, and the one retry policy every remote request runs under."""
