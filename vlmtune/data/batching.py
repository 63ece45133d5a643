"""Length-aware batches under a token budget: long and short samples never share a batch, so little is padding.

A batch is padded to its longest sample, so random batches of LLaVA-style conversations (16-400 text tokens plus the
image's tokens) are ~40 % padding, and every padding slot costs a full forward and backward. `TokenBudgetBatches`
sorts the samples by their measured length (data/lengths.py: image tokens included) and cuts the sorted list into
batches whose padded size, samples x longest, stays within a token budget: short samples travel in larger batches,
long ones in smaller, and a step costs about the same whatever it holds.

The batches are cut once (the sort breaks ties in a seeded random order), so every epoch has the same number of
steps, which the Trainer's schedule needs; each epoch visits them in a new seeded order (`set_epoch`), which a
resumed run reproduces. The default budget is the smallest that keeps the steps per epoch of fixed batches of
`optim.batch_size` (per process): the same schedule and optimizer steps as the plain path, the least padding, and
a batch never larger than the worst fixed batch. Under several processes every process cuts the same global
batches and takes every n-th sample of each (similar lengths, so similar work per process): the processes of one
step train together exactly the batch that one process would, whenever each batch holds a sample per process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from vlmtune.errors import ConfigError


def _batch_sizes(ascending: Sequence[int], max_tokens: int, min_samples: int) -> list[int]:
    """The sizes of the batches a greedy cut of ascending lengths gives under `max_tokens`."""
    sizes: list[int] = []
    size = 0
    for length in ascending:  # the newest sample is the batch's longest
        if size >= min_samples and (size + 1) * length > max_tokens:
            sizes.append(size)
            size = 0
        size += 1
    if sizes and size < min_samples:  # too few left for every process: they join the last batch
        sizes[-1] += size
    elif size:
        sizes.append(size)
    return sizes


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int = 0,
                         min_samples: int = 1) -> list[list[int]]:
    """Sample indices cut into length-sorted batches of at most `max_tokens` padded tokens, each holding at least
    `min_samples` samples (one per process, even when that exceeds the budget)."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    order = sorted(shuffled, key=lambda i: lengths[i])  # stable: equal lengths stay in shuffled order
    batches, start = [], 0
    for size in _batch_sizes([lengths[i] for i in order], max_tokens, min_samples):
        batches.append(order[start:start + size])
        start += size
    return batches


def default_budget(lengths: Sequence[int], batch_size: int, min_samples: int = 1) -> int:
    """The smallest budget that cuts no more batches than fixed batches of `batch_size` would make: the plain path's
    steps per epoch (so its schedule and optimizer steps), with the least padding per step. At most `batch_size`
    times the longest sample, the worst a fixed batch can pad to."""
    ascending = sorted(lengths)
    steps = math.ceil(len(lengths) / batch_size)
    low, high = max(lengths), batch_size * max(lengths)
    while low < high:  # fewer batches as the budget grows
        middle = (low + high) // 2
        if len(_batch_sizes(ascending, middle, min_samples)) <= steps:
            high = middle
        else:
            low = middle + 1
    return low


class TokenBudgetBatches(torch.utils.data.Sampler[list[int]]):
    """A batch sampler (DataLoader's `batch_sampler`) of `token_budget_batches`, in a new seeded order each epoch;
    with `replicas` processes it yields process `rank`'s share of each batch."""

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int = 0, replicas: int = 1, rank: int = 0):
        if max_tokens < 1:
            raise ConfigError(f"data.batch_tokens={max_tokens}: expected a positive number of tokens per batch")
        if len(lengths) < replicas:
            raise ConfigError(f"{len(lengths)} training samples cannot give each of {replicas} processes one")
        self.batches = token_budget_batches(lengths, max_tokens, seed, min_samples=replicas)
        self.seed, self.replicas, self.rank = seed, replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + 1 + self.epoch)
        for i in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[i][self.rank::self.replicas]

    def padding(self, lengths: Sequence[int]) -> float:
        """The share of padded token slots over an epoch, across processes."""
        shares = [batch[rank::self.replicas] for batch in self.batches for rank in range(self.replicas)]
        return 1 - sum(lengths) / sum(len(share) * max(lengths[i] for i in share) for share in shares)


def length_batches(dataset, data, batch_size: int, seed: int, replicas: int = 1,
                   rank: int = 0) -> TokenBudgetBatches | None:
    """Process `rank`'s length-aware batches of `dataset` as `data.group_by_length` / `data.batch_tokens` ask
    (`batch_size` per process), or None for random batches (asked for, or no lengths known: a stream)."""
    if not data.group_by_length:
        return None
    in_memory = hasattr(dataset, "__len__") and "length" in (dataset.column_names or ())
    lengths = list(dataset["length"]) if in_memory else None
    if lengths is None or any(length is None for length in lengths):
        raise ConfigError("data.group_by_length=true needs every sample's measured length before training "
                          "(in-memory data); set data.group_by_length=false")
    budget = data.batch_tokens or default_budget(lengths, batch_size * replicas, min_samples=replicas)
    return TokenBudgetBatches(lengths, budget, seed, replicas, rank)


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
