"""What the processes of one launch share: which one is the main process, and agreeing on a flag.

Under `accelerate launch` every process runs the same recipe; they must stop, save and report together.
"""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def distributed() -> bool:
    """True inside a process group of more than one process."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_process(flag: bool, device=None) -> bool:
    """True when `flag` is true in any process (one all-reduce; just `flag` in a single process)."""
    if not distributed():
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def wait_for_all() -> None:
    """A barrier across the launch's processes (nothing in a single process)."""
    if distributed():
        import torch.distributed as dist

        dist.barrier()


def launched_engine() -> str | None:
    """The sharding engine accelerate launched this process under, from the environment it gives each rank:
    "DEEPSPEED", "FSDP", or None (one process, or plain data parallelism)."""
    from accelerate.utils import parse_flag_from_env

    return next((name for name in ("DEEPSPEED", "FSDP") if parse_flag_from_env(f"ACCELERATE_USE_{name}")), None)
