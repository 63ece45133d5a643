"""Preference tuning: TRL's DPOTrainer over the shared trainer layer (vlmtune.train.trainer), and the
chosen-vs-rejected log-probability margins that show its effect.

The reference model is TRL's own choice: under LoRA / QLoRA it is the policy with its adapter disabled (a fresh
adapter, so exactly the starting model; no second copy in memory), under a full fine-tune a separate frozen copy.
Settings, resume, guards and preemption are the shared layer's, as for SFT; the loss mask is checked the same way
(vlmtune.train.supervision: each pair's completions must be exactly its chosen and rejected answers).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from vlmtune.train.policy import activate_adapters
from vlmtune.train.preemption import Preemption
from vlmtune.train.trainer import train, trainer_class, training_arguments

log = logging.getLogger("vlmtune")


def dpo_config(cfg, out_dir: Path, report_to: str):
    """TRL's DPOConfig for a DPO recipe's config (a `DPORecipeConfig`)."""
    from trl import DPOConfig

    return DPOConfig(
        **training_arguments(cfg, out_dir, report_to),
        beta=cfg.beta,
        loss_type=[name.strip() for name in cfg.loss_type.split(",")],
        label_smoothing=cfg.label_smoothing,
        # No truncation: cutting a sequence could cut an image's tokens.
        max_length=None,
        # Not supported by TRL for vision data: the reference runs beside the policy on every batch.
        precompute_ref_log_probs=False,
    )


def dpo_trainer(model, processor, train_dataset, cfg, out_dir: Path, *, report_to: str,
                preemption: Preemption | None = None, ref_model=None, callbacks=None):
    """The DPOTrainer that `fit_dpo` trains with: one reference (no copy of a fresh adapter), its collator checked
    and wrapped by the no-supervised-token guard, on the shared trainer layer."""
    from trl import DPOTrainer

    from vlmtune.train.supervision import RequireSupervised, check_supervision

    trainer = trainer_class(DPOTrainer)(model=model, ref_model=ref_model, args=dpo_config(cfg, out_dir, report_to),
                                        train_dataset=train_dataset, processing_class=processor, recipe=cfg,
                                        preemption=preemption, callbacks=callbacks)
    if "ref" in getattr(trainer.model, "peft_config", {}):
        # Given a PeftModel, TRL cannot know that its adapter is fresh and keeps a frozen copy of it (adapter "ref",
        # projector included) as the reference. A fresh LoRA adds exactly nothing, so the adapter-disabled model is
        # the same reference without the copy, which would also be saved beside the trained adapter: drop it.
        trainer.model.set_adapter("default")  # peft refuses to delete next to several active adapters
        trainer.model.delete_adapter("ref")
        activate_adapters(trainer.model)  # with one adapter per part (parts differing in DoRA), all of them train
    check_supervision(trainer.data_collator, processor.tokenizer, trainer.train_dataset)
    trainer.data_collator = RequireSupervised(trainer.data_collator)
    return trainer


def fit_dpo(model, processor, train_dataset, cfg, out_dir: Path, *, report_to: str,
            preemption: Preemption | None = None, ref_model=None, callbacks=None) -> list[dict]:
    """Train with DPO to the end (vlmtune.train.trainer.train: resume, preemption, guards); return the log history.

    `model` is the policy (a PeftModel with a fresh adapter from `apply_policy`, or a full model with `ref_model` its
    frozen copy).
    """
    trainer = dpo_trainer(model, processor, train_dataset, cfg, out_dir, report_to=report_to, preemption=preemption,
                          ref_model=ref_model, callbacks=callbacks)
    return train(trainer, cfg)


@torch.no_grad()
def preference_margins(model, processor, pairs: list[dict[str, Any]], batch_size: int = 16) -> list[float]:
    """log π(chosen | prompt, image) − log π(rejected | prompt, image) per pair, in nats (summed over the answer's
    tokens, end-of-turn included), tokenized exactly as DPOTrainer does (its vision collator)."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlmtune.data.preferences import to_preference_dataset

    collator = DataCollatorForVisionPreference(processor)
    dataset = to_preference_dataset(pairs)
    was_training = model.training
    model.eval()
    margins = []
    for start in range(0, len(dataset), batch_size):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        completion_mask = batch.pop("completion_mask")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(**batch, use_cache=False).logits[:, :-1].float()
        token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        logps = (token_logps * completion_mask[:, 1:].to(token_logps.device)).sum(-1)
        chosen, rejected = logps.chunk(2)  # the collator puts all chosen rows first, then all rejected rows
        margins.extend((chosen - rejected).tolist())
    model.train(was_training)
    return margins


def margin_summary(margins: list[float], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean margin, preference accuracy (share of pairs with a positive margin), and both per question kind."""
    by_kind = defaultdict(list)
    for margin, pair in zip(margins, pairs, strict=True):
        by_kind[pair.get("kind") or "all"].append(margin)
    return {"margin": fmean(margins), "accuracy": fmean(m > 0 for m in margins), "n": len(margins),
            "per_kind": {kind: {"margin": fmean(ms), "accuracy": fmean(m > 0 for m in ms)}
                         for kind, ms in sorted(by_kind.items())}}


def score_preferences(before_dir: Path, after_dir: Path, pairs: list[dict[str, Any]], beta: float,
                      batch_size: int = 16) -> dict[str, Any]:
    """Margins on `pairs` of the starting checkpoint (DPO's reference) and of the trained one, each loaded the way a
    user loads it (adapters merged); `reward_margin` is DPO's implicit reward of chosen over rejected, β·Δmargin."""
    from vlmtune.model.checkpoint import load_vlm

    result: dict[str, Any] = {"beta": beta}
    margins = {}
    for name, directory in (("before", before_dir), ("after", after_dir)):
        model, processor = load_vlm(directory, what=f"{name}-DPO checkpoint")
        margins[name] = preference_margins(model, processor, pairs, batch_size)
        result[name] = {"checkpoint": str(directory), **margin_summary(margins[name], pairs)}
    rewards = [beta * (a - b) for a, b in zip(margins["after"], margins["before"], strict=True)]
    result["reward_margin"] = fmean(rewards)
    result["reward_accuracy"] = fmean(r > 0 for r in rewards)
    return result
