"""Supervised fine-tuning on chat data: TRL's SFTTrainer over the shared trainer layer (vlmtune.train.trainer), with
its VLM collator and assistant-only loss, checked before and during training (vlmtune.train.supervision)."""

from __future__ import annotations

from pathlib import Path

from vlmtune.config import TrainRecipeConfig
from vlmtune.train.preemption import Preemption
from vlmtune.train.trainer import trainer_class, training_arguments


def sft_config(cfg: TrainRecipeConfig, out_dir: Path, report_to: str):
    """TRL's SFTConfig for a training recipe's config."""
    from trl import SFTConfig

    return SFTConfig(
        **training_arguments(cfg, out_dir, report_to),
        # Loss on the assistant's tokens only, from the chat template's {% generation %} marks.
        assistant_only_loss=True,
        # No truncation: cutting a sequence could cut an image's tokens (lengths are checked by the data pipeline).
        max_length=None,
    )


def sft_trainer(model, processor, train_dataset, cfg: TrainRecipeConfig, out_dir: Path, *, report_to: str,
                preemption: Preemption | None = None, callbacks=None):
    """The SFTTrainer that `fit` trains with: its collator checked and wrapped (stream image decoding, packing, the
    no-supervised-token guard), on the shared trainer layer."""
    from datasets import IterableDataset
    from trl import SFTTrainer

    from vlmtune.data.batching import length_batches, with_batch_sampler
    from vlmtune.data.packing import packed_collator
    from vlmtune.data.streaming import DecodeImages
    from vlmtune.train.microbatches import microbatch_by_length, with_length_microbatches
    from vlmtune.train.supervised_head import use_supervised_head
    from vlmtune.train.supervision import RequireSupervised, check_supervision

    args = sft_config(cfg, out_dir, report_to)
    sft_class = trainer_class(SFTTrainer)
    batches = length_batches(train_dataset, cfg.data, cfg.optim.batch_size, cfg.seed, args.world_size,
                             args.process_index)
    if batches is not None:  # samples of similar length together: little padding
        sft_class = with_batch_sampler(sft_class, batches)
    if microbatch_by_length(cfg, args):  # each batch computed in length-sorted pieces: the padding's compute saved
        sft_class = with_length_microbatches(sft_class)
    trainer = sft_class(model=model, args=args, train_dataset=train_dataset, processing_class=processor, recipe=cfg,
                        preemption=preemption, callbacks=callbacks)
    if cfg.optim.supervised_head:  # the LM head only where a label is supervised (TRL's projects all on CPUs)
        use_supervised_head(trainer.model)
    streamed = isinstance(train_dataset, IterableDataset)
    if streamed:  # a stream's images are decoded per batch, in the collator: only a process's own batches
        trainer.data_collator = DecodeImages(trainer.data_collator)
    # The loss mask comes from the chat template's {% generation %} marks: check it before spending any compute,
    # and refuse samples with nothing supervised later on (they would train on nothing, silently).
    check_supervision(trainer.data_collator, processor.tokenizer, train_dataset)
    if cfg.data.packing:  # the same template and mask, one padding-free row per batch
        packed = packed_collator(processor, model)
        trainer.data_collator = DecodeImages(packed) if streamed else packed
    trainer.data_collator = RequireSupervised(trainer.data_collator)
    return trainer


def fit(model, processor, train_dataset, cfg: TrainRecipeConfig, out_dir: Path, *, report_to: str,
        preemption: Preemption | None = None, callbacks=None) -> list[dict]:
    """Train with SFT to the end (vlmtune.train.trainer.train: resume, preemption, guards); return the log history.

    A stream (IterableDataset) resumes by reading and skipping the batches trained before the checkpoint (the
    Trainer's own skip), which is exact because the stream is deterministic and endless (vlmtune.data.streaming).
    """
    from vlmtune.train.trainer import train

    trainer = sft_trainer(model, processor, train_dataset, cfg, out_dir, report_to=report_to, preemption=preemption,
                          callbacks=callbacks)
    return train(trainer, cfg)
