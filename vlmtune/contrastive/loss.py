"""Contrastive losses over embeddings gathered from every process: CLIP's InfoNCE and SigLIP's sigmoid loss.

Every process gathers the image and text embeddings of the whole global batch *with* their gradients
(`torch.distributed.nn.functional.all_gather`, as open_clip does with `gather_with_grad`) and computes the loss of
the global batch. Each process's embeddings then receive the gradient of every process's (identical) loss, i.e.
`world_size` times the true one, and DDP's average of the parameter gradients divides that back out: 2 processes
with batch 2 train exactly as 1 process with batch 4 (tested). The shared temperature (and SigLIP's bias) is used
once per process, so its averaged gradient is the true one too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlmtune.registry import Registry

# (image embeddings, text embeddings, log temperature scale, bias or None) -> loss; embeddings are L2-normalised and
# row i of both is the same pair.
Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
LOSSES: Registry[Loss] = Registry("loss")


def gather_with_grad(embeddings: torch.Tensor) -> torch.Tensor:
    """All processes' embeddings in rank order (this process's keep their gradient path); as is on one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(embeddings), dim=0)


def _negative_logits(image: torch.Tensor, negatives: torch.Tensor | None, mask: torch.Tensor | None,
                     scale: torch.Tensor, bias) -> torch.Tensor | None:
    """Image x hard-negative-caption logits; a negative its collator could not make (mask False) gets -inf."""
    if negatives is None:
        return None
    logits = image @ negatives.T * scale + (0 if bias is None else bias)
    return logits.masked_fill(~mask.bool().unsqueeze(0), float("-inf")) if mask is not None else logits


@LOSSES.register("clip")
def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias=None,
              negatives: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE both ways (CLIP): each image must pick its caption among the batch's captions, and each caption its
    image, with a learned temperature exp(log_scale) (CLIP clamps it at 100). Hard negatives (NegCLIP) are extra
    wrong captions each image must rank below its own."""
    scale = log_scale.exp().clamp(max=100)
    logits = image @ text.T * scale
    targets = torch.arange(len(logits), device=logits.device)
    extra = _negative_logits(image, negatives, negative_mask, scale, None)
    per_image = logits if extra is None else torch.cat([logits, extra], dim=1)
    return (F.cross_entropy(per_image, targets) + F.cross_entropy(logits.T, targets)) / 2


@LOSSES.register("siglip")
def siglip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor,
                negatives: torch.Tensor | None = None, negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SigLIP: every (image, caption) cell is its own binary decision, matched or not, with a learned temperature and
    bias; summed over the batch's cells and divided by the batch size (the paper's normalisation). Hard negatives
    are more cells labelled "not a match"."""
    logits = image @ text.T * log_scale.exp() + bias
    labels = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    loss = -F.logsigmoid(labels * logits).sum()
    extra = _negative_logits(image, negatives, negative_mask, log_scale.exp(), bias)
    if extra is not None:  # -inf cells (no negative) add log sigmoid(+inf) = 0
        loss = loss - F.logsigmoid(-extra).sum()
    return loss / len(logits)


class ContrastiveObjective(torch.nn.Module):
    """The dual encoder and its loss as one module whose forward returns `{"loss"}`: the Trainer (and DDP around it)
    see one model, so the temperature, SigLIP's bias and both towers are synchronised alike.

    A dual encoder without its own bias (CLIP, a composed pair) gets one here when the loss is SigLIP's; it starts
    at -10 with the temperature at 10, the paper's initialisation, so the many negatives do not swamp the start.
    """

    def __init__(self, dual, loss: str) -> None:
        super().__init__()
        self.dual = dual
        self.loss_name = loss
        self.loss_fn = LOSSES.get(loss)
        self.bias = None
        if loss == "siglip" and getattr(dual, "logit_bias", None) is None:
            self.bias = torch.nn.Parameter(torch.tensor(-10.0))

    @property
    def logit_bias(self) -> torch.Tensor | None:
        return getattr(self.dual, "logit_bias", None) if self.bias is None else self.bias

    def _texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        text = self.dual.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return gather_with_grad(F.normalize(text, dim=-1))

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                negative_input_ids: torch.Tensor | None = None, negative_attention_mask: torch.Tensor | None = None,
                negative_mask: torch.Tensor | None = None, **_) -> dict[str, torch.Tensor]:
        image = self.dual.get_image_features(pixel_values=pixel_values).pooler_output
        image = gather_with_grad(F.normalize(image, dim=-1))
        text = self._texts(input_ids, attention_mask)
        negatives = None
        if negative_input_ids is not None:  # hard negatives (data: vlmtune.contrastive.data.swapped)
            negatives = self._texts(negative_input_ids, negative_attention_mask)
            negative_mask = gather_with_grad(negative_mask.float())
        return {"loss": self.loss_fn(image, text, self.dual.logit_scale, self.logit_bias, negatives, negative_mask)}
