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


@LOSSES.register("clip")
def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias=None) -> torch.Tensor:
    """InfoNCE both ways (CLIP): each image must pick its caption among the batch's captions, and each caption its
    image, with a learned temperature exp(log_scale) (CLIP clamps it at 100)."""
    logits = image @ text.T * log_scale.exp().clamp(max=100)
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


@LOSSES.register("siglip")
def siglip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP: every (image, caption) cell is its own binary decision, matched or not, with a learned temperature and
    bias; summed over the batch's cells and divided by the batch size (the paper's normalisation)."""
    logits = image @ text.T * log_scale.exp() + bias
    labels = 2 * torch.eye(len(logits), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(logits)


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

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_) -> dict[str, torch.Tensor]:
        image = self.dual.get_image_features(pixel_values=pixel_values).pooler_output
        text = self.dual.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        image = gather_with_grad(F.normalize(image, dim=-1))
        text = gather_with_grad(F.normalize(text, dim=-1))
        return {"loss": self.loss_fn(image, text, self.dual.logit_scale, self.logit_bias)}
