"""The plan: which sample ids each rank and worker reads, in order — pure functions of small integers.

No I/O, no torch, no environment: only the ground floor and numpy."""
