"""Train a VLM on chat data with TRL's SFTTrainer: its VLM collator, assistant-only loss, accelerate underneath."""

from __future__ import annotations

from pathlib import Path

import torch

from vlmtune.config import OptimConfig


def sft_config(
    optim: OptimConfig, out_dir: Path, *, seed: int, report_to: str, logging_steps: int,
    find_unused_parameters: bool = False,
):
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    return SFTConfig(
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
        seed=seed,
        data_seed=seed,
        # Loss on the assistant's tokens only, from the chat template's {% generation %} marks.
        assistant_only_loss=True,
        # No truncation: cutting a sequence could cut an image's tokens (lengths are checked by the data pipeline).
        max_length=None,
        # SFTConfig defaults to bf16 + gradient checkpointing; on a CPU both only slow training down.
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        activation_checkpointing=False,
        use_cpu=not on_gpu,
        report_to=report_to,
        logging_steps=logging_steps,
        save_strategy="no",
        dataloader_num_workers=0,
        disable_tqdm=True,  # the loss lines from `logging_steps` say more in logs and CI than a bar
        remove_unused_columns=False,
        # A trained vision tower has modules without gradients inside Llava (SigLIP's pooling head); plain DDP then
        # desynchronises ranks, so it must look for unused parameters. Otherwise skip that per-step cost.
        ddp_find_unused_parameters=find_unused_parameters,
    )


def fit(model, processor, train_dataset, args, callbacks=None) -> list[dict]:
    """Run the trainer to the end and return its log history (losses, learning rates)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=processor,
                         callbacks=callbacks)
    if getattr(trainer.model, "is_loaded_in_4bit", False) and not args.bf16:
        # TRL casts every trainable weight of a quantized model to bf16 (the QLoRA paper's choice). Without bf16
        # compute (CPUs) the fully-trained projector then receives float32 features and fails; keep float32.
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    trainer.train()
    return trainer.state.log_history
