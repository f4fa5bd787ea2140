"""StreamLoader and what runs behind it: options, passes, worker processes, statistics."""
