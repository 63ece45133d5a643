"""Weights that an engine spreads over processes, made whole again for the final checkpoint.

Under DeepSpeed ZeRO-3 every weight is partitioned: a rank's `param` is empty between uses and its slice lives in
`param.ds_tensor`; under FSDP2 every weight is a DTensor holding this rank's shard. Saving the model as it is would
write empty tensors or shards, so the final save gathers the full weights first (every rank must take part) and
rank 0 writes an ordinary checkpoint that plain transformers loads. ZeRO-2 and DDP keep whole weights on every
rank: nothing to gather. (Step checkpoints stay sharded: the Trainer writes each engine's own format for resuming.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def is_partitioned(model) -> bool:
    """True when `model`'s weights are ZeRO-3 partitions (DeepSpeed marks each with a `ds_id`)."""
    return any(hasattr(param, "ds_id") for param in model.parameters())


def is_fsdp2(model) -> bool:
    """True when `model` is sharded by FSDP2 (its weights are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(param, DTensor) for param in model.parameters())


@contextmanager
def full_weights(model) -> Iterator[dict[str, Any] | None]:
    """Inside: `model` can be saved whole (all ranks must enter). Yields None (save the model as it is: ZeRO-3's
    weights gathered on every rank) or, under FSDP2, the full state dict on rank 0's CPU to save instead.

    On the way out, transformers forgets the ZeRO-3 config that the Trainer registered, so models loaded later in
    this process (the end-of-run evaluation) are ordinary ones instead of being partitioned at construction.
    """
    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        yield get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return
    if not is_partitioned(model):
        yield None
        return
    import deepspeed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # The whole model on every rank for the save: it must fit on one device once (see docs/scaling.md).
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield None
    unset_hf_deepspeed_config()
