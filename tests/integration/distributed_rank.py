"""One rank of test_distributed.py: run a StreamLoader under torch.distributed (gloo) and write
what this rank received as JSON. Not a test module: test_distributed.py starts it as a process.

Usage: distributed_rank.py DATASET PORT RANK WORLD_SIZE OUT [STOP_AFTER] [STATE_IN]
"""

from __future__ import annotations

import datetime
import json
import sys
import warnings

import torch
import torch.distributed as dist

import streamload as sl


def main() -> None:
    url, port, rank, world_size, out = sys.argv[1:6]
    stop_after = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    state_in = sys.argv[7] if len(sys.argv) > 7 else None
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=int(rank),
        world_size=int(world_size),
        timeout=datetime.timedelta(seconds=30),
    )
    try:
        # rank/world_size are not passed: the plan must take them from torch.distributed.
        dataset = sl.StreamingDataset(
            url, shuffle=True, seed=3, shuffle_mode="block", shuffle_block=2
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # 2 workers per rank on 2 CPUs
            loader = sl.StreamLoader(
                dataset, batch_size=5, num_workers=2, multiprocessing_context="fork", timeout=30
            )
        if state_in is not None:
            with open(state_in) as f:
                loader.load_state_dict(json.load(f))
        batches = []
        for batch in loader:
            batches.append(batch["id"].tolist())
            # What DDP does every step: a collective that hangs if one rank has fewer steps.
            dist.all_reduce(torch.ones(1))
            if stop_after is not None and len(batches) == stop_after:
                break
        result = {
            "rank": dist.get_rank(),
            "batches": batches,
            "state": loader.state_dict(),
            "padded": loader.padded_samples,
            "order": dataset.sample_order().tolist(),
        }
        with open(out, "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
