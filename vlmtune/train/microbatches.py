"""Each step's batch run as micro-batches of similar length: the plain path's batches, without most of the padding.

A batch is padded to its longest sample, and on a CPU every padding slot costs what a real token costs: random
batches of LLaVA-style conversations are ~40 % padding. Sorting samples by length across batches (the usual cure)
changes which samples train together, and where length tells tasks apart it makes each step's gradient one task's
(the demo's accuracy fell from 0.920 to 0.648 with length-grouped batches). Here the batch stays the one the sampler
drew; only its computation is split: the samples are sorted by length and cut into a few micro-batches, each padded
to its own longest sample, and each does its forward and backward with the loss divided by the whole batch's
supervised-token count (the Trainer's `num_items_in_batch`), so the summed gradient is the whole batch's.

The cut minimises the padded token slots plus a fixed cost per micro-batch (`OVERHEAD_TOKENS`). Under several
processes every process cuts its batch into the same number of micro-batches (agreed by one all-reduce), because
TRL's loss gathers metrics across processes once per forward; gradients are synchronised on the last one only.

A batch is split only where each tensor holds one row per sample (LLaVA-style models: `pixel_values` with one image
per sample, as its image tokens confirm) and the padding is on the right; anything else (Qwen2-VL's flattened
patches, several images per sample, a packed row) trains whole.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from vlmtune.errors import ConfigError
from vlmtune.processes import launched_engine

log = logging.getLogger("vlmtune")

# The cost of one more micro-batch, in padded token slots: the fixed work of a forward and backward (Python, small
# kernels, the optimizer-free part of the step) that a micro-batch adds whatever its size.
OVERHEAD_TOKENS = 64


def length_cut(lengths: list[int], parts: int | None = None, overhead: int | None = None) -> list[list[int]]:
    """Sample indices in groups of similar length: the contiguous cut of the length-sorted samples that minimises
    padded slots (group size x its longest) plus `overhead` per group (default `OVERHEAD_TOKENS`), into exactly
    `parts` groups if given."""
    overhead = OVERHEAD_TOKENS if overhead is None else overhead
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ascending = [lengths[i] for i in order]
    n = len(order)
    most = n if parts is None else parts
    inf = float("inf")
    # cost[g][j]: the least padded slots covering the j shortest samples with g groups; cut[g][j]: its last start
    cost = [[inf] * (n + 1) for _ in range(most + 1)]
    cut = [[0] * (n + 1) for _ in range(most + 1)]
    cost[0][0] = 0
    for g in range(1, most + 1):
        for j in range(g, n + 1):
            for start in range(g - 1, j):
                value = cost[g - 1][start] + (j - start) * ascending[j - 1]
                if value < cost[g][j]:
                    cost[g][j], cut[g][j] = value, start
    groups = parts or min(range(1, most + 1), key=lambda g: cost[g][n] + overhead * g)
    bounds, end = [], n
    for g in range(groups, 0, -1):
        bounds.append((cut[g][end], end))
        end = cut[g][end]
    return [order[start:end] for start, end in reversed(bounds)]


def _rows_per_sample(inputs: dict, image_token_id: int | None) -> bool:
    """Whether every tensor of `inputs` has one row per sample, right-padded sequences included."""
    mask = inputs.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        return False
    batch = mask.shape[0]
    if not torch.equal(mask.cumprod(1).sum(1), mask.sum(1)):  # not right-padded (or not one sample per row)
        return False
    if "pixel_values" in inputs:  # one image per sample, in sample order: each row shows one image's tokens
        if image_token_id is None or inputs["pixel_values"].shape[0] != batch:
            return False
        counts = (inputs["input_ids"] == image_token_id).sum(1)
        if not bool((counts == counts[0]).all()) or int(counts[0]) == 0:
            return False
    return all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == batch
               for v in inputs.values() if v is not None)


def split_batch(inputs: dict, groups: list[list[int]]) -> list[dict]:
    """`inputs` cut into the samples of each group, each trimmed to its longest sample (right padding)."""
    lengths = inputs["attention_mask"].sum(1)
    width = inputs["attention_mask"].shape[1]
    parts = []
    for group in groups:
        index = torch.tensor(group, device=lengths.device)
        longest = int(lengths[index].max())
        part = {}
        for key, value in inputs.items():
            if value is None:
                part[key] = None
                continue
            value = value.index_select(0, index.to(value.device))
            part[key] = value[:, :longest] if value.dim() > 1 and value.shape[1] == width else value
        parts.append(part)
    return parts


def microbatch_by_length(cfg, args) -> bool:
    """`optim.microbatch_by_length`, or its default: on a CPU, off on a GPU; refused under DeepSpeed and FSDP, whose
    engines count one backward per micro-step."""
    asked = cfg.optim.microbatch_by_length
    sharded = bool(getattr(args, "deepspeed", None)) or launched_engine() is not None
    if asked and sharded:
        raise ConfigError("optim.microbatch_by_length=true is not supported under DeepSpeed or FSDP (their engines "
                          "count one backward per micro-step); set optim.microbatch_by_length=false")
    if asked is None:
        return not torch.cuda.is_available() and not sharded
    return asked


def image_token_id(model) -> int | None:
    config = model.config
    return getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)


def with_length_microbatches(trainer_class: type) -> type:
    """`trainer_class` (an SFTTrainer) whose training step runs its batch as length-sorted micro-batches (see the
    module); batches it cannot split, or without the Trainer's token count, train whole."""

    class Trainer(trainer_class):
        def training_step(self, model, inputs, num_items_in_batch=None):
            parts = self._length_parts(model, inputs) if num_items_in_batch is not None else None
            self._count_pieces(inputs, parts)
            if parts is None:
                return super().training_step(model, inputs, num_items_in_batch)
            loss = None
            for k, part in enumerate(parts):
                last = k == len(parts) - 1  # gradients are synchronised across processes once, on the last
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    part_loss = super().training_step(model, part, num_items_in_batch)
                loss = part_loss if loss is None else loss + part_loss
            return loss

        def train(self, *args, **kwargs):
            output = super().train(*args, **kwargs)
            pieces = getattr(self, "_pieces", None)
            if pieces and self.is_world_process_zero():
                log.info("length micro-batches: %d of %d batches ran in %d pieces; padding %.0f%% of the token slots "
                         "(%.0f%% whole)", pieces["split"], pieces["batches"], pieces["pieces"],
                         100 * (1 - pieces["tokens"] / pieces["slots"]),
                         100 * (1 - pieces["tokens"] / pieces["whole_slots"]))
            return output

        def _count_pieces(self, inputs, parts: list[dict] | None) -> None:
            """This process's batches, pieces and padded slots, for the summary at the end of training."""
            if not isinstance(inputs.get("attention_mask"), torch.Tensor):
                return
            pieces = self.__dict__.setdefault("_pieces", dict.fromkeys(
                ("batches", "split", "pieces", "tokens", "slots", "whole_slots"), 0))
            mask = inputs["attention_mask"]
            pieces["batches"] += 1
            pieces["split"] += parts is not None
            pieces["pieces"] += len(parts) if parts else 1
            pieces["tokens"] += int(mask.sum())
            pieces["whole_slots"] += mask.numel()
            pieces["slots"] += sum(p["attention_mask"].numel() for p in parts) if parts else mask.numel()

        def _length_parts(self, model, inputs) -> list[dict] | None:
            splittable = _rows_per_sample(inputs, image_token_id(self.accelerator.unwrap_model(model)))
            lengths = inputs["attention_mask"].sum(1).tolist() if splittable else []
            groups = length_cut(lengths) if splittable else [lengths]
            if self.accelerator.num_processes > 1:  # the same number everywhere: TRL's loss gathers per forward
                import torch.distributed as dist

                # max over processes of (any unsplittable, preferred parts, -samples): the fewest samples bound it
                agreed = torch.tensor([not splittable, len(groups), -len(lengths)], device=self.accelerator.device)
                dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
                splittable, parts = not agreed[0], min(int(agreed[1]), -int(agreed[2]))
                if splittable and parts != len(groups):
                    groups = length_cut(lengths, parts)
            if not splittable or len(groups) < 2:
                return None
            return split_batch(inputs, groups)

    Trainer.__name__ = Trainer.__qualname__ = trainer_class.__name__
    return Trainer
