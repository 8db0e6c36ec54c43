"""End of the distributed part of a run: after fit/test, rank zero goes on alone.

Training and testing run on every DDP rank. The stages after them (compression, export,
monitoring) run on rank zero only, in single-process Trainers; a process group left open would
make torchmetrics try to synchronize their metrics with ranks that are not there (a hang, or
"Connection closed by peer" once the other ranks exit). So every rank meets here once, the group
is closed, and the other ranks stop: their share of the work is done, and rank zero writes the
files.
"""

from __future__ import annotations

import logging

import torch.distributed as dist

from lightning_mlcycle.cli.context import RunContext

log = logging.getLogger(__name__)

#: set in ``ctx.extras`` on a rank that has nothing left to do; ``run`` stops there
RANK_DONE = "distributed/rank_done"


def leave_distributed_stage(ctx: RunContext) -> None:
    """Close the process group after fit/test; ranks other than zero end their run here."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world, rank = dist.get_world_size(), dist.get_rank()
    dist.barrier()
    dist.destroy_process_group()
    ctx.summary["distributed/world_size"] = world
    if rank != 0:
        ctx.extras[RANK_DONE] = True
        log.debug("Rank %d: fit and test done; rank 0 runs the remaining stages.", rank)
