"""Train a VLM on chat data with TRL's SFTTrainer: its VLM collator, assistant-only loss, accelerate underneath."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import torch

from vlmtune.config import TrainRecipeConfig

log = logging.getLogger("vlmtune")


def trainer_arguments(cfg: TrainRecipeConfig, out_dir: Path, report_to: str) -> dict:
    """The Trainer settings every TRL trainer of a recipe shares (SFTConfig, DPOConfig): optimizer, schedule,
    precision and device, logging, step checkpoints."""
    optim = cfg.optim
    on_gpu = torch.cuda.is_available()
    bf16, fp16 = precision_flags(optim.precision)
    return dict(
        output_dir=str(out_dir),
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        warmup_steps=optim.warmup_ratio,  # transformers 5: a float < 1 is a fraction of the total steps
        lr_scheduler_type=optim.scheduler,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        max_grad_norm=optim.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # SFTConfig defaults to bf16 + gradient checkpointing; on a CPU both only slow training down. Checkpointing
        # is chosen per part (policy.<part>.gradient_checkpointing).
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=False,
        use_cpu=not on_gpu,
        report_to=report_to,
        logging_steps=cfg.logging_steps,
        # Step checkpoints hold optimizer, scheduler and RNG states too, so a resumed run ends where an
        # uninterrupted one would.
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=cfg.save_total_limit,
        dataloader_num_workers=0,
        disable_tqdm=True,  # the loss lines from `logging_steps` say more in logs and CI than a bar
        remove_unused_columns=False,
        # A trained vision tower has modules without gradients inside Llava (SigLIP's pooling head); plain DDP then
        # desynchronises ranks, so it must look for unused parameters. Otherwise skip that per-step cost.
        ddp_find_unused_parameters=cfg.policy.vision.mode != "frozen",
        # Length-aware batches replace the training DataLoader (vlmtune.data.batching), not this sampler.
        train_sampling_strategy="random",
    )


def sft_config(cfg: TrainRecipeConfig, out_dir: Path, report_to: str):
    """TRL's SFTConfig for a training recipe's config."""
    from trl import SFTConfig

    return SFTConfig(
        **trainer_arguments(cfg, out_dir, report_to),
        # Loss on the assistant's tokens only, from the chat template's {% generation %} marks.
        assistant_only_loss=True,
        # No truncation: cutting a sequence could cut an image's tokens (lengths are checked by the data pipeline).
        max_length=None,
    )


def precision_flags(precision: str) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for `optim.precision` on this machine, or a clear error."""
    on_gpu = torch.cuda.is_available()
    bf16_ok = on_gpu and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return bf16_ok, False
    if precision == "fp32":
        return False, False
    if precision == "bf16":
        if on_gpu and not bf16_ok:
            raise ValueError("optim.precision=bf16: this GPU does not support bfloat16; use fp16 or fp32")
        return True, False  # CPUs run bf16 autocast (slowly: 2.5-4x on this project's development machine)
    if precision == "fp16":
        if not on_gpu:
            raise ValueError("optim.precision=fp16 needs a CUDA GPU (fp16 mixed precision with loss scaling); "
                             "use fp32 or bf16 on a CPU")
        return False, True
    raise ValueError(f"optim.precision={precision!r}: expected auto, fp32, bf16 or fp16")


def use_policy_optimizer(trainer, cfg) -> None:
    """Give `trainer` the optimizer its arguments name (`args.optim`, AdamW fused by default) over per-part parameter
    groups: policy.<part>.lr / weight_decay. The Trainer's scheduler then scales every group's rate alike."""
    from vlmtune.train.policy import param_groups

    decay = set(trainer.get_decay_parameter_names(trainer.model))
    optimizer_class, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, trainer.model)
    trainer.optimizer = optimizer_class(param_groups(trainer.model, cfg.policy, cfg.optim, decay), **optimizer_kwargs)


def latest_complete_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest `checkpoint-N` under `trainer_dir` that a kill did not interrupt.

    The Trainer writes `trainer_state.json` last, so a checkpoint without a readable one was cut short by a kill
    and is skipped (never loaded half-written).
    """
    import json

    complete = []
    for path in Path(trainer_dir).glob("checkpoint-*"):
        try:
            step = int(path.name.removeprefix("checkpoint-"))
            json.loads((path / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        complete.append((step, path))
    return max(complete)[1] if complete else None


def resume_point(resume: str, trainer_dir: Path) -> str | None:
    """What `Trainer.train(resume_from_checkpoint=...)` gets for the `resume` setting."""
    if resume == "never":
        return None
    if resume == "auto":
        latest = latest_complete_checkpoint(trainer_dir)
        return str(latest) if latest else None
    if not Path(resume).is_dir():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint directory (or use resume=auto|never)")
    return resume


class Preempted(SystemExit):
    """SIGTERM arrived: a step checkpoint was written and training stopped; `resume=auto` continues it."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__(128 + signal.SIGTERM)
        self.checkpoint = checkpoint


def _save_and_stop_on_sigterm():
    """A callback that turns SIGTERM (a scheduler's preemption notice) into "save a checkpoint, then stop"."""
    from transformers import TrainerCallback

    class SaveOnSigterm(TrainerCallback):
        requested = False

        def on_step_end(self, args, state, control, **kwargs):
            if self.requested:
                control.should_save = True
                control.should_training_stop = True

    callback = SaveOnSigterm()
    signal.signal(signal.SIGTERM, lambda signum, frame: setattr(callback, "requested", True))
    return callback


def resuming_every_adapter(trainer_class: type) -> type:
    """`trainer_class`, resuming every adapter of a model with one adapter per part (vlmtune.train.policy: parts that
    differ in DoRA). transformers restores the first active adapter only and deactivates the others
    (Trainer._load_from_checkpoint), which would freeze the vision adapter for the rest of the run."""

    class Trainer(trainer_class):
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            from vlmtune.train.policy import activate_adapters

            model = self.model if model is None else model
            names = list(getattr(model, "peft_config", {}))
            if len(names) < 2:
                return super()._load_from_checkpoint(resume_from_checkpoint, model)
            for name in names:  # peft saves adapter "x" in the checkpoint's x/ folder, "default" at its top
                where = Path(resume_from_checkpoint) / ("" if name == "default" else name)
                model.load_adapter(str(where), name, is_trainable=True)
            activate_adapters(model)

    Trainer.__name__ = Trainer.__qualname__ = trainer_class.__name__
    return Trainer


def sft_trainer(model, processor, train_dataset, cfg: TrainRecipeConfig, out_dir: Path, *, report_to: str,
                callbacks=None):
    """The SFTTrainer that `fit` trains with: collator checked and wrapped (stream image decoding, packing, the
    all-masked-row guard), per-part optimizer, the untrained-part and non-finite-loss guards after `callbacks`."""
    from datasets import IterableDataset
    from trl import SFTTrainer

    from vlmtune.data.batching import length_batches, with_batch_sampler
    from vlmtune.data.packing import packed_collator
    from vlmtune.data.streaming import DecodeImages
    from vlmtune.train.guards import NonFiniteLossGuard, UntrainedPartGuard
    from vlmtune.train.supervised_head import use_supervised_head
    from vlmtune.train.supervision import RequireSupervised, check_supervision

    args = sft_config(cfg, out_dir, report_to)
    # Last: it runs after the callbacks that request a save and raises before a non-finite step is saved.
    guard = NonFiniteLossGuard()
    trainer_class = resuming_every_adapter(SFTTrainer)
    batches = length_batches(train_dataset, cfg.data, cfg.optim.batch_size, cfg.seed, args.world_size,
                             args.process_index)
    if batches is not None:  # samples of similar length together under a token budget: little padding
        trainer_class = with_batch_sampler(trainer_class, batches)
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, processing_class=processor,
                            callbacks=[*(callbacks or []), UntrainedPartGuard(), guard])
    if cfg.optim.supervised_head:  # the LM head only where a label is supervised (TRL's head projects all on CPUs)
        use_supervised_head(trainer.model)
    streamed = isinstance(train_dataset, IterableDataset)
    if streamed:  # a stream's images are decoded per batch, in the collator: only a process's own batches
        trainer.data_collator = DecodeImages(trainer.data_collator)
    # The loss mask comes from the chat template's {% generation %} marks: check it before spending any compute,
    # and refuse all-masked rows later on (they would train on nothing with a loss of 0, silently).
    check_supervision(trainer.data_collator, processor.tokenizer, train_dataset)
    if cfg.data.packing:  # the same template and mask, one padding-free row per batch
        packed = packed_collator(processor, model)
        trainer.data_collator = DecodeImages(packed) if streamed else packed
    trainer.data_collator = RequireSupervised(trainer.data_collator)
    if getattr(trainer.model, "is_loaded_in_4bit", False) and not args.bf16:
        # TRL casts every trainable weight of a quantized model to bf16 (the QLoRA paper's choice). Without bf16
        # compute (CPUs) the fully-trained projector then receives float32 features and fails; keep float32.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    use_policy_optimizer(trainer, cfg)
    return trainer


def fit(model, processor, train_dataset, cfg: TrainRecipeConfig, out_dir: Path, *, report_to: str,
        callbacks=None) -> list[dict]:
    """Train to the end, resuming per `cfg.resume` from step checkpoints in `out_dir`; return the log history.

    On SIGTERM it finishes the current step, writes a step checkpoint and raises `Preempted` (exit code 143). A NaN/inf
    loss raises `NonFiniteLoss` (vlmtune.train.guards) before that step is saved. A stream (IterableDataset) resumes
    by reading and skipping the batches trained before the checkpoint (the Trainer's own skip), which is exact
    because the stream is deterministic and endless (vlmtune.data.streaming).
    """
    resume_from = resume_point(cfg.resume, out_dir)
    if resume_from:
        log.info("resuming from %s", resume_from)
    sigterm = _save_and_stop_on_sigterm()
    trainer = sft_trainer(model, processor, train_dataset, cfg, out_dir, report_to=report_to,
                          callbacks=[*(callbacks or []), sigterm])
    trainer.train(resume_from_checkpoint=resume_from)
    if sigterm.requested:
        raise Preempted(latest_complete_checkpoint(trainer.args.output_dir))
    return trainer.state.log_history
