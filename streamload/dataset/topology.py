"""Where this process sits in a distributed job: rank and world size.

`topology` looks at explicit arguments first, then ``torch.distributed`` when it is initialized,
then torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), else a single
process. The plan itself never looks: it takes the world size as a number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from streamload.errors import ConfigError


@dataclass(frozen=True)
class Topology:
    """Where this process sits in a distributed job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def topology(rank: int | None = None, world_size: int | None = None) -> Topology:
    """This process's rank and world size.

    Explicit arguments win (both or neither); else ``torch.distributed`` when it is initialized;
    else the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE); else a single
    process.

    Raises:
        ConfigError: only one of rank/world_size given, a non-integer environment variable, or
            a rank outside ``[0, world_size)``.
    """
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", 1)
    if (rank is None) != (world_size is None):
        raise ConfigError(
            f"rank/world_size: give both or neither, got rank={rank!r} world_size={world_size!r}"
        )
    if rank is None or world_size is None:
        rank, world_size, source = _distributed_or_env()
    else:
        source = "arguments"
    if not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size from {source}: must be an int >= 1, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank from {source}: must be in [0, {world_size}), got {rank!r}")
    return Topology(rank, world_size, local_rank, local_world)


def _distributed_or_env() -> tuple[int, int, str]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), "torch.distributed"
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), "RANK/WORLD_SIZE"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: not an integer: {raw!r}") from None


def local_world_size() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 when unset)."""
    return max(1, _env_int("LOCAL_WORLD_SIZE", 1))
