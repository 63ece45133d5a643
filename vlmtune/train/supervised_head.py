"""The LM head and the cross-entropy on supervised positions only, in chunks: no batch x length x vocabulary floats.

TRL's SFTTrainer gives the model a fused LM head (`trl.trainer.utils.add_fused_lm_head`): called with
`fused_lm_head=True`, the forward runs the backbone and folds the logits into per-token log-probabilities tile by tile
over the vocabulary (`trl.kernels.ChunkedLogProbFunction`), never holding them all. On CUDA it projects only the
positions whose label is supervised; elsewhere, CPUs included, it projects every position (padding, image and prompt
tokens too), because on devices that compile graphs a varying number of positions would recompile them. Eager CPUs
recompile nothing, so here only the supervised positions reach the head, with the same outputs (loss, per-token
log-probabilities, entropy and top-1 match for SFTTrainer's metrics).

A frozen head (LoRA and QLoRA leave it alone) needs no weight gradient, and the gradient of a token's
log-probability with respect to its hidden state, W[target] - softmax @ W, is known once the logits are: so
`FrozenHeadLogProbs` computes it in the forward pass, token chunk by token chunk (what Liger-Kernel's fused linear
cross-entropy does on GPUs), and the backward pass only scales it. Two projections per token instead of TRL's three
(its backward projects again), and a few passes over each chunk's logits instead of its tile-by-tile folding. A
trained head, soft-capped or scaled logits keep TRL's kernel (on the supervised positions).
"""

from __future__ import annotations

import functools
import types

import torch

# Vocabulary rows per tile of TRL's kernel (its width): a tile holds (supervised tokens, up to 4096) x this many
# floats. Wide tiles mean few operations per step, which counts on a CPU.
VOCAB_CHUNK = 32_768
# Logit floats per token chunk of the frozen head (64 MB of float32; a chunk holds three such buffers at once).
CHUNK_FLOATS = 2**24
# Output scalings that TRL's fused head knows and this one does not reproduce: such models keep TRL's head.
UNSUPPORTED_SCALINGS = ("output_multiplier", "lm_head_multiplier", "logits_scaling")


class FrozenHeadLogProbs(torch.autograd.Function):
    """(log-probability of each target, entropy, target is the top-1) under a frozen linear head, for hidden states
    (N, H) and targets (N,); the gradient with respect to the hidden states is computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
        n, vocab = hidden.shape[0], weight.shape[0]
        log_probs = torch.empty(n, dtype=torch.float32, device=hidden.device)
        entropy, is_top1 = torch.empty_like(log_probs), torch.empty(n, dtype=torch.bool, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)  # d log p(target) / d hidden
        step = max(1, CHUNK_FLOATS // vocab)
        for start in range(0, n, step):
            rows, target = slice(start, start + step), targets[start:start + step]
            logits = torch.nn.functional.linear(hidden[rows], weight, bias).float()
            is_top1[rows] = logits.argmax(-1) == target  # the first maximum, as TRL counts it
            log_p = logits.sub_(torch.logsumexp(logits, -1, keepdim=True))  # in place: the logits are not needed again
            log_probs[rows] = log_p.gather(-1, target[:, None]).squeeze(-1)
            p = log_p.exp()
            entropy[rows] = -torch.einsum("nv,nv->n", p, log_p)
            grad[rows] = weight[target].float() - torch.mm(p.to(weight.dtype), weight).float()
        ctx.save_for_backward(grad)
        ctx.hidden_dtype = hidden.dtype
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs: torch.Tensor | None, *_):
        (grad,) = ctx.saved_tensors
        grad_hidden = None if grad_log_probs is None else (grad_log_probs[:, None] * grad).to(ctx.hidden_dtype)
        return grad_hidden, None, None, None


def head_log_probs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                   scale: float, outputs: tuple[str, ...]) -> tuple[torch.Tensor | None, ...]:
    """(log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1) of `targets` (N,) under `head` for `hidden` (N, H),
    as TRL's kernel returns them: `FrozenHeadLogProbs` where it applies, else TRL's kernel."""
    from trl.kernels import ChunkedLogProbFunction

    frozen = not any(p.requires_grad for p in head.parameters())
    if frozen and softcap is None and scale == 1.0 and set(outputs) <= {"log_probs", "entropy", "is_top1"}:
        log_probs, entropy, is_top1 = FrozenHeadLogProbs.apply(hidden, head.weight, head.bias, targets)
        return (log_probs, entropy if "entropy" in outputs else None, None, None,
                is_top1 if "is_top1" in outputs else None)
    return ChunkedLogProbFunction.apply(hidden, head.weight, head.bias, targets, 1.0, VOCAB_CHUNK, softcap, scale,
                                        outputs)


def supports_supervised_head(model) -> bool:
    """Whether `model`'s logits are `lm_head(hidden)`, optionally soft-capped and scaled, with no MoE auxiliary loss."""
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in UNSUPPORTED_SCALINGS):
        return False
    return not getattr(text_config, "output_router_logits", False) and model.get_output_embeddings() is not None


def use_supervised_head(model, outputs: tuple[str, ...] = ("log_probs", "entropy", "is_top1")) -> bool:
    """Give `model` (a PEFT wrapper or not) the fused-head forward that projects only supervised positions.

    Replaces the forward that SFTTrainer installed (call it after building the trainer); without `fused_lm_head=True`
    the model's own forward runs, so generation and evaluation are unchanged. Returns False, changing nothing, for a
    model whose head this does not reproduce (`supports_supervised_head`).
    """
    from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports_supervised_head(base):
        return False
    text_config = base.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None) or 1.0
    own_forward = type(base).forward

    # The model's own signature stays visible: generate() (the in-training probe) checks its keyword arguments
    # (pixel_values, ...) against the forward's parameters.
    @functools.wraps(own_forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return own_forward(self, *args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:  # position t predicts label t + 1
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        head = self.get_output_embeddings()
        labels = labels.to(head.weight.device)
        mask = labels != -100
        with maybe_gather_lm_head_ctx(head.weight, head.bias):
            per_token = head_log_probs(head, hidden.to(head.weight.device)[mask], labels[mask], softcap, scale,
                                       outputs)
        # Scattered back to (batch, length - 1) as TRL's head returns them; masked_scatter keeps an all-masked batch
        # connected to the graph (a differentiable zero).
        log_probs, entropy, _, _, is_top1 = (None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x)
                                             for x in per_token)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)

    base.forward = types.MethodType(forward, base)
    return True


def supervised_token_log_probs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per-token log-probabilities of the supervised labels through the fused head, (batch, length - 1), zero
    elsewhere: what the loss sums."""
    return model(**batch, fused_lm_head=True).log_probs
