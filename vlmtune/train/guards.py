"""Stop a diverged run before it writes a checkpoint of it: a non-finite training loss (or weights) is an error.

The Trainer keeps `save_total_limit` step checkpoints and deletes the oldest when it writes a new one, so a run that
kept training on NaN weights would replace its good checkpoints with NaN ones within a few `save_steps`. The guard
raises at the end of the first optimizer step whose loss was NaN/inf, before the Trainer saves anything for that
step; on a step that is due to be saved it also checks the trainable weights (a finite loss can still produce
non-finite gradients and weights). The newest step checkpoint then is the last good one, and `resume=auto` continues
from it.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from vlmtune.errors import TrainingStopped
from vlmtune.processes import any_process, distributed
from vlmtune.train.checkpoints import latest_complete_checkpoint

log = logging.getLogger("vlmtune")


class NonFiniteLoss(TrainingStopped):
    """Training produced a NaN/inf loss or weights; nothing of that step was saved."""

    def __init__(self, step: int, what: str, last_good: Path | None) -> None:
        self.step, self.what, self.last_good = step, what, last_good
        if last_good is not None:
            where = (f"The last good checkpoint is {last_good} (kept; resume=auto, the default, continues from it "
                     "with its saved optimizer and learning-rate schedule).")
        else:
            where = "No step checkpoint was written before it (set save_steps=N to keep resumable checkpoints)."
        super().__init__(f"{what} at step {step}: training stopped, no checkpoint of this step was written. {where} "
                         "Lower optim.lr, keep optim.max_grad_norm > 0 or check the data around this step.")


class NonFiniteLossGuard(TrainerCallback):
    """Watches the loss of every training step (the trainer passes it to `observe`: vlmtune.train.trainer), and the
    trainable weights on save steps and the last step; raises `NonFiniteLoss` from `on_step_end`, before the
    Trainer saves that step. It works for any loss a trainer computes (SFT's, DPO's).

    Processes agree through one all-reduce of a flag per step, so all of them stop at the same step.
    """

    def __init__(self) -> None:
        self.bad_loss: float | None = None  # the first non-finite loss of the current step

    def observe(self, loss) -> None:
        if self.bad_loss is None and isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss).all()):
            self.bad_loss = float(loss.float().reshape(-1)[0])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        what = None
        if self.bad_loss is not None:
            what = f"the training loss became {self.bad_loss}"
        elif (control.should_save or state.global_step >= state.max_steps) and model is not None \
                and not _weights_finite(model):  # weights about to be saved (a step or the final checkpoint)
            what = "the trainable weights became non-finite (the loss was still finite)"
        if any_process(what is not None, args.device) and what is None:
            what = "another process saw a non-finite loss or weights"
        self.bad_loss = None
        if what is None:
            return
        control.should_save = False  # belt and braces: the raise below already prevents the save
        control.should_training_stop = True
        error = NonFiniteLoss(state.global_step, what, latest_complete_checkpoint(args.output_dir))
        log.error("%s", error)
        raise error


def _weights_finite(model) -> bool:
    with torch.no_grad():
        # Under ZeRO-3 a weight is empty between uses and this rank's partition is its `ds_tensor`; under FSDP2 a
        # weight is a DTensor whose local shard is this rank's.
        return all(bool(torch.isfinite(_local(getattr(p, "ds_tensor", p))).all())
                   for p in model.parameters() if p.requires_grad)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (an FSDP2 DTensor's local shard; any other tensor as it is)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _reached_on_any_process(model, reached: set[str], device) -> set[str]:
    """The trainable tensors that received a gradient in any process (one all-reduce of a flag per tensor)."""
    if not distributed():
        return reached
    import torch.distributed as dist

    names = [name for name, param in model.named_parameters() if param.requires_grad]
    flags = torch.tensor([1.0 if name in reached else 0.0 for name in names], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return {name for name, flag in zip(names, flags.tolist(), strict=True) if flag}


class UntrainedPart(TrainingStopped):
    """A part the policy trains received no gradient at all: its weights would never change."""


class UntrainedPartGuard(TrainerCallback):
    """Checks, over the first `steps` optimizer steps, that every part the policy trains receives a gradient.

    A part can be trainable and still never learn: a vision tower (or projector) when no batch holds an image, or any
    part cut off from the loss. Such a part raises `UntrainedPart`, naming it; trainable tensors of a learning part
    that never get a gradient are reported as a warning, since they only cost memory. (Vision layers after
    model.vision.feature_layer are frozen up front by the policy: vlmtune.train.reach.) Several steps are watched
    because one batch without images legitimately leaves the vision side without gradient. Each process notes what
    its own gradients reached and the processes pool their notes (one all-reduce) before the verdict, so all reach
    the same one.

    Where the gradients are depends on the engine (the trainer says which): in `param.grad` before the optimizer
    step for one process, DDP and FSDP (there a rank's shard); DeepSpeed steps inside the backward pass and keeps
    (ZeRO-2/3: partitions of) the gradients to itself, so under it each trainable tensor's gradient is watched as
    autograd produces it (a tensor hook, removed after `steps` steps).
    """

    def __init__(self, steps: int = 8, enabled: bool = True, deepspeed: bool = False) -> None:
        self.steps = steps if enabled else 0
        self.deepspeed = deepspeed
        self.seen = 0
        self.reached: set[str] = set()  # trainable parameter names that received a non-zero gradient
        self._hooks: list = []  # DeepSpeed: gradient hooks on the trainable tensors

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.deepspeed and self.steps and model is not None and not self._hooks:
            for name, param in model.named_parameters():
                if param.requires_grad:
                    self._hooks.append(param.register_hook(functools.partial(self._note, name)))

    def _note(self, name: str, grad: torch.Tensor) -> None:
        if name not in self.reached and bool(_local(grad).detach().ne(0).any()):
            self.reached.add(name)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.seen >= self.steps or model is None:
            return
        if not self.deepspeed:
            for name, param in model.named_parameters():
                if param.requires_grad and param.grad is not None:
                    self._note(name, param.grad)
        self.seen += 1
        if self.seen == self.steps:
            self._verdict(model, state.global_step + 1, args.device)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if 0 < self.seen < self.steps and model is not None:
            self._verdict(model, self.seen, args.device)
            self.seen = self.steps

    def _verdict(self, model, steps: int, device) -> None:
        from vlmtune.model.parts import parts_of
        from vlmtune.train.policy import part_of

        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.reached = _reached_on_any_process(model, self.reached, device)
        parts = parts_of(model)
        untouched: dict[str, list[str]] = {}
        reached_parts = set()
        for name, param in model.named_parameters():
            if param.requires_grad:
                part = part_of(name, parts)
                if name in self.reached:
                    reached_parts.add(part)
                else:
                    untouched.setdefault(part, []).append(name)
        dead = sorted(set(untouched) - reached_parts)
        if dead:
            part = dead[0]
            raise UntrainedPart(
                f"policy trains the {part} ({parts.get(part, part)}), but none of its {len(untouched[part])} "
                f"trainable tensors received a gradient in {steps} optimizer step(s), e.g. {untouched[part][0]}: "
                f"it would never change. Check that the training data reaches it (images, for the vision tower and "
                f"the projector), or set policy.{part}.mode=frozen.")
        for part, names in sorted(untouched.items()):
            log.warning("%d trainable tensors of the %s received no gradient in %d step(s) and will not train "
                        "(e.g. %s): they only cost memory", len(names), part, steps, names[0])
