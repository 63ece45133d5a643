"""Weights that an engine spreads over processes, made whole again for the final checkpoint.

Under DeepSpeed ZeRO-3 every weight is partitioned: a rank's `param` is empty between uses and its slice lives in
`param.ds_tensor`. Saving the model then writes empty tensors, so the final save gathers the full weights first
(every rank must take part) and rank 0 writes an ordinary checkpoint that plain transformers loads. ZeRO-2 and DDP
keep whole weights on every rank: nothing to gather.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def is_partitioned(model) -> bool:
    """True when `model`'s weights are ZeRO-3 partitions (DeepSpeed marks each with a `ds_id`)."""
    return any(hasattr(param, "ds_id") for param in model.parameters())


@contextmanager
def full_weights(model) -> Iterator[None]:
    """Inside: `model` holds its full weights on every rank (ZeRO-3: gathered, all ranks must enter).

    On the way out, transformers forgets the ZeRO-3 config that the Trainer registered, so models loaded later in
    this process (the end-of-run evaluation) are ordinary ones instead of being partitioned at construction.
    """
    if not is_partitioned(model):
        yield
        return
    import deepspeed
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # The whole model on every rank for the save: it must fit on one device once (see docs/scaling.md).
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        yield
    unset_hf_deepspeed_config()
