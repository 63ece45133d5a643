"""Train a dual encoder with transformers' Trainer (accelerate underneath: DDP on several processes), the loss
over embeddings gathered from every process (vlmtune.contrastive.loss), per-tower learning rates."""

from __future__ import annotations

from pathlib import Path

from vlmtune.contrastive.data import PairCollator, PairDataset
from vlmtune.contrastive.loss import ContrastiveObjective
from vlmtune.contrastive.model import tower_of


def _param_groups(objective: ContrastiveObjective, cfg) -> list[dict]:
    """AdamW groups per tower (policy.<tower>.lr / weight_decay, else optim's) and for the heads; the temperature,
    the bias, norms and biases get no weight decay (CLIP's practice: decay would pull the temperature to 1)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in objective.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("dual.")
        part = tower_of(name) or "heads"
        decays = param.ndim >= 2
        groups.setdefault((part, decays), []).append(param)
    out = []
    for (part, decays), params in groups.items():
        rule = getattr(cfg.policy, part, None)
        lr = rule.lr if rule is not None and rule.lr is not None else cfg.optim.lr
        decay = rule.weight_decay if rule is not None and rule.weight_decay is not None else cfg.optim.weight_decay
        out.append({"params": params, "lr": lr, "weight_decay": decay if decays else 0.0})
    return out


def refuse_sharding(launcher) -> None:
    """Contrastive training runs on one process or plain DDP: its optimizer is built here over per-tower groups and
    its loss gathers embeddings itself, neither of which DeepSpeed's or FSDP's engine takes over."""
    from vlmtune.errors import ConfigError
    from vlmtune.launch import engine

    if engine(launcher) not in ("NO", "MULTI_GPU", "MULTI_CPU"):
        raise ConfigError(f"launcher={launcher.name}: contrastive training runs on launcher=single or launcher=ddp "
                          f"(plain data parallelism), not under {engine(launcher)}")


def contrastive_trainer(objective: ContrastiveObjective, pairs: list[dict], processor, cfg, out_dir: Path, *,
                        report_to: str, preemption=None, callbacks=None):
    """A Trainer over image-caption pairs; every process's batch has the same size (the last partial batch is
    dropped), since the embeddings of all processes are gathered into one global batch. Its step checkpoints are
    marked complete once whole (so `resume=auto` trusts them) and `preemption` saves one agreed step."""
    from transformers import Trainer, TrainingArguments

    from vlmtune.train.checkpoints import MarkComplete
    from vlmtune.train.guards import NonFiniteLossGuard
    from vlmtune.train.preemption import Preemption
    from vlmtune.train.trainer import training_arguments

    arguments = training_arguments(cfg, out_dir, report_to)
    # Every tower parameter reaches the loss through the pooled embeddings, frozen ones aside: no unused search.
    arguments |= {"dataloader_drop_last": True, "ddp_find_unused_parameters": False}
    class ContrastiveTrainer(Trainer):
        def training_step(self, *args, **kwargs):
            loss = super().training_step(*args, **kwargs)
            loss_guard.observe(loss)  # a non-finite loss stops training before its step is saved
            return loss

    preemption, loss_guard = preemption or Preemption(), NonFiniteLossGuard()
    # The loss guard after preemption: it vetoes a save that preemption asked for on a non-finite step.
    trainer = ContrastiveTrainer(model=objective, args=TrainingArguments(**arguments), train_dataset=PairDataset(pairs),
                                 data_collator=PairCollator(processor, cfg.negatives),
                                 callbacks=[*(callbacks or []), preemption, loss_guard,
                                            MarkComplete(keep=cfg.save_total_limit)])
    trainer.preemption = preemption  # what vlmtune.train.trainer.train reads
    optimizer_class, optimizer_kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, objective)
    trainer.optimizer = optimizer_class(_param_groups(objective, cfg), **optimizer_kwargs)
    return trainer


def fit_contrastive(objective: ContrastiveObjective, pairs: list[dict], processor, cfg, out_dir: Path, *,
                    report_to: str, preemption=None, callbacks=None) -> list[dict]:
    """Train to the end, resuming per `cfg.resume` from step checkpoints in `out_dir`; return the log history. A
    preemption signal saves a step and raises `Preempted` (exit code 143), as in every training recipe."""
    from vlmtune.train.trainer import train

    trainer = contrastive_trainer(objective, pairs, processor, cfg, out_dir, report_to=report_to,
                                  preemption=preemption, callbacks=callbacks)
    return train(trainer, cfg)
