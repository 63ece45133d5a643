"""The LM head and the cross-entropy on supervised positions only, in chunks: no batch x length x vocabulary floats.

TRL's SFTTrainer gives the model a fused LM head (`trl.trainer.utils.add_fused_lm_head`): called with
`fused_lm_head=True`, the forward runs the backbone and folds the logits into per-token log-probabilities tile by tile
over the vocabulary (`trl.kernels.ChunkedLogProbFunction`), never holding them all. On CUDA it projects only the
positions whose label is supervised; elsewhere, CPUs included, it projects every position (padding, image and prompt
tokens too), because on devices that compile graphs a varying number of positions would recompile them. Eager CPUs
recompile nothing, and on LLaVA-style data only ~20-30 % of the token slots are supervised, so there this projects
the supervised positions alone, with the same kernel and the same outputs (loss, per-token log-probabilities,
entropy and top-1 match for SFTTrainer's metrics). Image and prompt tokens never reach the LM head.
"""

from __future__ import annotations

import types

import torch

# Vocabulary rows per tile (TRL's width): a tile holds (supervised tokens, up to 4096) x this many floats. Wide tiles
# mean few operations per step, which counts on a CPU; the supervised tokens keep the tile small.
VOCAB_CHUNK = 32_768
# Output scalings that TRL's fused head knows and this one does not reproduce: such models keep TRL's head.
UNSUPPORTED_SCALINGS = ("output_multiplier", "lm_head_multiplier", "logits_scaling")


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
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput, maybe_gather_lm_head_ctx

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not supports_supervised_head(base):
        return False
    text_config = base.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None) or 1.0
    own_forward = type(base).forward

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
            per_token = ChunkedLogProbFunction.apply(hidden.to(head.weight.device)[mask], head.weight, head.bias,
                                                     labels[mask], 1.0, VOCAB_CHUNK, softcap, scale,
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
