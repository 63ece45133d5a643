"""The trainer layer every training recipe stands on: TRL's trainers with vlmtune's guarantees added once.

`sft` and `dpo` (vlmtune.train.sft, vlmtune.train.dpo) are thin specialisations: each picks its TRL trainer and
its TRL config, and `trainer_class` adds, to either:
- the settings every recipe shares (`training_arguments`: optimizer, schedule, precision and device, logging,
  step checkpoints);
- the per-part optimizer (policy.<part>.lr / weight_decay as AdamW parameter groups);
- exact resume: full weights loaded through transformers' key mapping (vlmtune.train.checkpoints), every adapter
  of a model with one adapter per part, checkpoints counted only when complete;
- the guards: a non-finite loss stops training before that step is saved, a part that cannot learn stops it early
  (vlmtune.train.guards); preemption saves one step agreed by every process (vlmtune.train.preemption);
- a float32 copy of the trainable weights of a 4-bit model when compute is not bf16.
`train` then runs it to the end, resuming per `cfg.resume`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from vlmtune.config import TrainRecipeConfig
from vlmtune.errors import ConfigError
from vlmtune.progress import watch_training
from vlmtune.train.checkpoints import MarkComplete, latest_complete_checkpoint, load_full_weights, resume_point
from vlmtune.train.guards import NonFiniteLossGuard, UntrainedPartGuard
from vlmtune.train.preemption import Preempted, Preemption

log = logging.getLogger("vlmtune")


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
            raise ConfigError("optim.precision=bf16: this GPU does not support bfloat16; use fp16 or fp32")
        return True, False  # CPUs run bf16 autocast (slowly: 2.5-4x on this project's development machine)
    if precision == "fp16":
        if not on_gpu:
            raise ConfigError("optim.precision=fp16 needs a CUDA GPU (fp16 mixed precision with loss scaling); "
                              "use fp32 or bf16 on a CPU")
        return False, True
    raise ConfigError(f"optim.precision={precision!r}: expected auto, fp32, bf16 or fp16")


def dataloader_workers(data) -> int:
    """`data.workers`, or its default: 4 on a GPU, 0 on a CPU and for streams."""
    if data.workers is not None:
        if data.workers > 0 and data.streaming:
            raise ConfigError("data.workers>0 with data.streaming=true: workers would each read the stream and change "
                              "its order (and exact resume); set data.workers=0")
        return data.workers
    return 4 if torch.cuda.is_available() and not data.streaming else 0


def use_liger(liger_kernel: bool | None) -> bool:
    """`optim.liger_kernel`, or its default: on when liger-kernel is installed and a CUDA GPU trains."""
    import importlib.util

    if liger_kernel is not None:
        return liger_kernel
    return torch.cuda.is_available() and importlib.util.find_spec("liger_kernel") is not None


def training_arguments(cfg: TrainRecipeConfig, out_dir: Path, report_to: str) -> dict:
    """The Trainer settings every TRL trainer of a recipe shares (SFTConfig, DPOConfig): optimizer, schedule,
    precision and device, logging, step checkpoints."""
    optim = cfg.optim
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
        # TRL's configs default to bf16 + gradient checkpointing; on a CPU both only slow training down.
        # Checkpointing is chosen per part (policy.<part>.gradient_checkpointing).
        bf16=bf16,
        fp16=fp16,
        activation_checkpointing=False,
        use_cpu=not torch.cuda.is_available(),
        report_to=report_to,
        logging_steps=cfg.logging_steps,
        # Step checkpoints hold optimizer, scheduler and RNG states too, so a resumed run ends where an
        # uninterrupted one would. MarkComplete keeps `save_total_limit` of them, once the new one is whole.
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=None,
        dataloader_num_workers=dataloader_workers(cfg.data),
        dataloader_persistent_workers=dataloader_workers(cfg.data) > 0,  # not re-forked every epoch
        use_liger_kernel=use_liger(optim.liger_kernel),
        torch_compile=optim.torch_compile,
        # vlmtune.progress.watch_training reports instead: a bar with the running loss on a terminal, loss lines
        # in logs and CI.
        disable_tqdm=True,
        remove_unused_columns=False,
        # A trained vision tower has modules without gradients inside Llava (SigLIP's pooling head); plain DDP then
        # desynchronises ranks, so it must look for unused parameters. Otherwise skip that per-step cost.
        ddp_find_unused_parameters=cfg.policy.vision.mode != "frozen",
        # Length-aware batches replace the training DataLoader (vlmtune.data.batching), not this sampler.
        train_sampling_strategy="random",
    )


def trainer_class(trl_trainer: type) -> type:
    """`trl_trainer` (SFTTrainer, DPOTrainer) with vlmtune's optimizer, resume, guards and preemption.

    The returned class takes two more keyword arguments: `recipe` (the run's TrainRecipeConfig) and `preemption`
    (the run's installed vlmtune.train.preemption.Preemption; None: no signal handling, e.g. in a notebook).
    """

    class Trainer(trl_trainer):
        def __init__(self, *args, recipe: TrainRecipeConfig, preemption: Preemption | None = None, callbacks=None,
                     **kwargs):
            self.recipe = recipe
            self.preemption = preemption or Preemption()
            self.loss_guard = NonFiniteLossGuard()
            super().__init__(*args, callbacks=list(callbacks or []), **kwargs)
            watch_training(self)
            # The loss guard last: it vetoes a save that an earlier callback (preemption) asked for.
            untrained = UntrainedPartGuard(deepspeed=self.is_deepspeed_enabled)  # where the gradients are
            for callback in (self.preemption, untrained, self.loss_guard,
                             MarkComplete(keep=recipe.save_total_limit)):
                self.add_callback(callback)
            if getattr(self.model, "is_loaded_in_4bit", False) and not self.args.bf16:
                # TRL casts every trainable weight of a quantized model to bf16 (the QLoRA paper's choice). Without
                # bf16 compute (CPUs) the fully-trained projector then receives float32 features and fails.
                for param in self.model.parameters():
                    if param.requires_grad:
                        param.data = param.data.float()

        def create_optimizer(self, model=None):
            """The optimizer `args.optim` names, over per-part parameter groups (policy.<part>.lr / weight_decay);
            the scheduler then scales every group's rate alike."""
            from vlmtune.train.policy import param_groups

            if self.optimizer is None:
                model = self.model if model is None else model
                decay = set(self.get_decay_parameter_names(model))
                optimizer_class, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
                self.optimizer = optimizer_class(param_groups(model, self.recipe.policy, self.recipe.optim, decay),
                                                 **kwargs)
            return self.optimizer

        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            self.loss_guard.observe(loss)
            return loss

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            model = self.model if model is None else model
            checkpoint = Path(resume_from_checkpoint)
            adapters = list(getattr(model, "peft_config", {}))
            sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
            full = (checkpoint / "model.safetensors").exists() or (checkpoint / "model.safetensors.index.json").exists()
            if full and not adapters and not sharded:
                load_full_weights(self.accelerator.unwrap_model(model), checkpoint)
            elif len(adapters) > 1:
                # One adapter per part (vlmtune.train.policy: parts differing in DoRA). transformers restores the
                # first active adapter only and deactivates the others, which would freeze them for the rest of the
                # run. peft saves adapter "x" in the checkpoint's x/ folder, "default" at its top.
                from vlmtune.train.policy import activate_adapters

                for name in adapters:
                    model.load_adapter(str(checkpoint / ("" if name == "default" else name)), name,
                                       is_trainable=True)
                activate_adapters(model)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    Trainer.__name__ = Trainer.__qualname__ = trl_trainer.__name__
    return Trainer


def train(trainer, cfg: TrainRecipeConfig) -> list[dict]:
    """Train to the end, resuming per `cfg.resume` from the trainer's step checkpoints; return the log history.

    On a preemption signal it saves a step checkpoint (every process the same step) and raises `Preempted` (exit
    code 143). A NaN/inf loss raises `NonFiniteLoss` (vlmtune.train.guards) before that step is saved.
    """
    resume_from = resume_point(cfg.resume, Path(trainer.args.output_dir))
    if resume_from:
        log.info("resuming from %s", resume_from)
    trainer.train(resume_from_checkpoint=resume_from)
    if trainer.preemption.requested:
        checkpoint = latest_complete_checkpoint(trainer.args.output_dir)
        log.warning("preempted (%s): stopped after writing %s; the same command resumes from it",
                    trainer.preemption.signal, checkpoint)
        raise Preempted(checkpoint)
    return trainer.state.log_history
