"""Likelihood evaluation: the loss (mean negative log-likelihood) and perplexity of the assistant tokens of held-out
conversations, with the same chat template and loss mask as training.

Each sample's summed NLL and supervised-token count are computed on their own (so batch size and padding cannot
change them), split across processes and gathered by sample id, then averaged over tokens once: 1 and N processes
give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vlmtune.data.images import load_image
from vlmtune.data.lengths import with_images
from vlmtune.progress import track


@torch.no_grad()
def next_token_log_probs(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position t >= 1 of `inputs["input_ids"]`: log p(token t | tokens before it) and whether token t is
    the model's greedy (argmax) choice there. Both [batch, length - 1], in float32 whatever the model's dtype."""
    if "pixel_values" in inputs:
        inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(model.dtype)}
    logits = model(**inputs).logits[:, :-1].float()
    targets = inputs["input_ids"][:, 1:]
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return log_probs, logits.argmax(-1) == targets


@torch.no_grad()
def sample_nll(model, processor, sample: dict[str, Any]) -> tuple[float, int]:
    """(summed NLL of the assistant tokens, number of them) for one sample."""
    images = [load_image(image, f"sample {sample['id']!r}") for image in sample["images"]]
    out = processor.apply_chat_template([with_images(sample["messages"], images)], tokenize=True, return_dict=True,
                                        return_tensors="pt", return_assistant_tokens_mask=True)
    device = next(model.parameters()).device
    mask = torch.as_tensor(out.pop("assistant_masks")).bool().to(device)
    log_probs, _ = next_token_log_probs(model, {k: v.to(device) for k, v in out.items()})
    keep = mask[:, 1:]
    return float(-(log_probs * keep).sum()), int(keep.sum())


def likelihood(model, processor, samples: Sequence[dict[str, Any]], state=None) -> dict[str, float]:
    """{"loss": mean NLL per assistant token, "perplexity": exp(loss), "tokens": count}, identical on every rank."""
    model.eval()

    def local(shard):
        return [{"id": s["id"], "nll": nll, "tokens": n} for s in track(shard, "likelihood", "samples", leave=None)
                for nll, n in [sample_nll(model, processor, s)]]

    if state is None or state.num_processes == 1:
        rows = local(samples)
    else:
        from accelerate.utils import gather_object

        with state.split_between_processes(list(samples)) as shard:
            rows = gather_object(local(shard))
    by_id = {row["id"]: row for row in rows}  # de-duplicated, then summed in one order on every rank
    nll = sum(by_id[s["id"]]["nll"] for s in samples)
    tokens = sum(by_id[s["id"]]["tokens"] for s in samples)
    loss = nll / max(tokens, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": tokens}
