"""The ``streamload`` command line: main, demo, bench and the PSS sampler."""
