"""Length-aware batches: samples of similar length share a batch, drawn anew each epoch, so little is padding.

A batch is padded to its longest sample, so random batches of LLaVA-style conversations (16-400 text tokens plus the
image's tokens) are ~40 % padding, and every padding slot costs a full forward and backward. `LengthGroupedBatches`
shuffles the samples each epoch, sorts them by measured length (data/lengths.py: image tokens included) within
groups of `data.length_group` batches, cuts each group into batches of `optim.batch_size` and shuffles the batches:
~5 % padding with groups of 16 batches on LLaVA-like lengths (43 % with groups of 1, the plain path's random
batches). The batches are the plain path's in number and size (the same schedule, optimizer steps and samples per
step); what changes is which samples share one. Because they are drawn anew each epoch, no two samples are tied
together for the whole run (a token budget cut once made samples of one length, on the demo's data one question
kind, always train together: its accuracy fell from 0.906 to 0.730).

Under several processes every process draws the same global batches (`batch_size` x processes samples) and takes
every n-th sample of each, so the processes of one step train together exactly the batch that one process with the
global batch size would. An epoch's batches depend only on the seed and the epoch, so a resumed run replays them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from vlmtune.errors import ConfigError


def length_grouped_batches(lengths: Sequence[int], batch_size: int, group: int, seed: int,
                           min_samples: int = 1) -> list[list[int]]:
    """One epoch's batches of sample indices: a seeded shuffle, sorted by length within groups of `group` batches,
    cut into batches of `batch_size`, in a seeded order. A last batch of fewer than `min_samples` (one per process)
    joins the batch before it."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    span = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), span):
        ordered = sorted(order[start:start + span], key=lengths.__getitem__)  # stable: ties keep the shuffle
        batches += [ordered[k:k + batch_size] for k in range(0, len(ordered), batch_size)]
    if len(batches) > 1 and len(batches[-1]) < min_samples:
        short = batches.pop()
        batches[-1] += short
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """A batch sampler (DataLoader's `batch_sampler`) of `length_grouped_batches`, drawn anew for each epoch
    (`set_epoch`); with `replicas` processes it yields process `rank`'s share of each global batch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, replicas: int = 1, rank: int = 0,
                 group: int = 16):
        if group < 1:
            raise ConfigError(f"data.length_group={group}: expected a positive number of batches per length group")
        if len(lengths) < replicas:
            raise ConfigError(f"{len(lengths)} training samples cannot give each of {replicas} processes one")
        self.lengths, self.global_batch, self.group = list(lengths), batch_size * replicas, group
        self.seed, self.replicas, self.rank = seed, replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """The global batches of `epoch` (every process draws the same)."""
        return length_grouped_batches(self.lengths, self.global_batch, self.group, self.seed + 1 + epoch,
                                      min_samples=self.replicas)

    def __len__(self) -> int:
        return len(self.batches(self.epoch))  # the same every epoch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches(self.epoch):
            yield batch[self.rank::self.replicas]

    def padding(self, epoch: int = 0) -> float:
        """The share of padded token slots in `epoch`, across processes."""
        shares = [batch[rank::self.replicas] for batch in self.batches(epoch) for rank in range(self.replicas)]
        lengths = self.lengths
        return 1 - sum(lengths) / sum(len(share) * max(lengths[i] for i in share) for share in shares)


def length_batches(dataset, data, batch_size: int, seed: int, replicas: int = 1,
                   rank: int = 0) -> LengthGroupedBatches | None:
    """Process `rank`'s length-grouped batches of `dataset` as `data.group_by_length` / `data.length_group` ask
    (`batch_size` per process), or None for random batches."""
    if not data.group_by_length:
        return None
    in_memory = hasattr(dataset, "__len__") and "length" in (dataset.column_names or ())
    lengths = list(dataset["length"]) if in_memory else None
    if lengths is None or any(length is None for length in lengths):
        raise ConfigError("data.group_by_length=true needs every sample's measured length before training; "
                          "set data.group_by_length=false")
    return LengthGroupedBatches(lengths, batch_size, seed, replicas, rank, data.length_group)


def with_batch_sampler(trainer_class: type, batch_sampler: torch.utils.data.Sampler) -> type:
    """`trainer_class` whose training DataLoader draws its batches from `batch_sampler`, which yields this process's
    batches itself (the Trainer's own loader takes a per-sample sampler and a fixed batch size)."""

    class Trainer(trainer_class):
        def get_train_dataloader(self):
            from functools import partial

            from torch.utils.data import DataLoader
            from transformers.trainer_utils import seed_worker

            args = self.args
            loader = DataLoader(self.train_dataset, batch_sampler=batch_sampler, collate_fn=self.data_collator,
                                num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory,
                                persistent_workers=args.dataloader_persistent_workers,
                                prefetch_factor=args.dataloader_prefetch_factor,
                                worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers,
                                                       rank=args.process_index))
            prepared = self.accelerator.prepare(loader)
            shard = getattr(prepared, "batch_sampler", None)
            if getattr(shard, "batch_sampler", None) is batch_sampler:  # accelerate would shard it a second time
                shard.num_processes, shard.process_index = 1, 0
            return prepared

    Trainer.__name__ = Trainer.__qualname__ = trainer_class.__name__
    return Trainer
