"""lmms-eval's two request kinds answered by vlmtune's own evaluation code (no lmms-eval import here).

lmms-eval hands a model a prompt string (`context`), the document's images and the task's generation settings.
Each request becomes the record vlmtune's evaluation reads (a user turn and an empty assistant turn), so answers
come from the checkpoint's chat template and the same left-padded, batched greedy generation and stop-string cut
as `vlmtune evaluate`; continuations are scored with the same next-token log-probabilities as its
likelihood metric.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmtune.data.formats import PLACEHOLDER, text_parts
from vlmtune.data.images import load_image
from vlmtune.data.records import split_prompt
from vlmtune.eval.generate import generate_answers
from vlmtune.eval.likelihood import next_token_log_probs

log = logging.getLogger("vlmtune")


def prompt_record(request_id: Any, context: str, images: Sequence[Any]) -> dict[str, Any]:
    """A vlmtune record for one lmms-eval prompt, split into parts exactly as vlmtune's LLaVA-format reader does:
    images at the context's `<image>` placeholders, or (when it has none) before the text on a line of their own,
    as lmms-eval's llava models put them. An empty assistant turn follows, to be answered."""
    placeholders = context.count(PLACEHOLDER)
    if placeholders == 0 and images:
        context = PLACEHOLDER * len(images) + "\n" + context
    elif placeholders != len(images):
        raise ValueError(f"request {request_id!r}: the prompt has {placeholders} {PLACEHOLDER} placeholders but the "
                         f"document has {len(images)} images; give one placeholder per image, or none")
    return {"id": request_id, "images": list(images),
            "messages": [{"role": "user", "content": text_parts(context)},
                         {"role": "assistant", "content": [{"type": "text", "text": ""}]}]}


@dataclass(frozen=True)
class GenerationSettings:
    """What vlmtune takes from a task's generation_kwargs; requests are batched only with equal settings."""

    max_new_tokens: int  # generation budget per answer
    until: tuple[str, ...]  # cut the answer at the first of these strings


def generation_settings(gen_kwargs: Mapping[str, Any], default_max_new_tokens: int) -> GenerationSettings:
    """The greedy settings for one request's generation_kwargs (lmms-eval's `until` may be one string or a list)."""
    until = gen_kwargs.get("until") or ()
    until = (until,) if isinstance(until, str) else tuple(until)
    sampling = gen_kwargs.get("do_sample") or (gen_kwargs.get("temperature") or 0) > 0 or (
        gen_kwargs.get("num_beams") or 1) > 1
    if sampling:  # one decoding rule for every task, as in `vlmtune evaluate`; say so rather than ignore it silently
        log.warning("vlmtune decodes greedily; ignoring sampling/beam settings %s",
                    {k: gen_kwargs.get(k) for k in ("do_sample", "temperature", "num_beams")})
    return GenerationSettings(int(gen_kwargs.get("max_new_tokens") or default_max_new_tokens), until)


def generate_for_requests(
    model, processor, requests: Sequence[tuple[dict[str, Any], GenerationSettings]], batch_size: int
) -> list[str]:
    """One greedy answer per (record, settings), in request order; batched within groups of equal settings."""
    groups: dict[GenerationSettings, list[int]] = {}
    for index, (_, settings) in enumerate(requests):
        groups.setdefault(settings, []).append(index)
    answers: list[str] = [""] * len(requests)
    for settings, indices in groups.items():
        rows = generate_answers(model, processor, [requests[i][0] for i in indices], batch_size=batch_size,
                                max_new_tokens=settings.max_new_tokens, stop_strings=settings.until)
        for index, row in zip(indices, rows, strict=True):
            answers[index] = row["prediction"]
    return answers


@torch.no_grad()
def score_continuation(model, processor, record: dict[str, Any], continuation: str) -> tuple[float, int, bool]:
    """(summed log-probability of `continuation` as the start of the assistant's answer, its number of tokens,
    whether greedy decoding would produce exactly those tokens).

    The continuation is tokenized on its own and appended to the rendered prompt's tokens, so the tokens scored are
    exactly the continuation's, whatever a tokenizer would merge across the boundary.
    """
    prompt, _ = split_prompt(record["messages"])
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    images = [load_image(image, f"request {record['id']!r}") for image in record["images"]]
    # As in generation: the chat template already renders the special tokens.
    inputs = processor(text=[text], images=images or None, return_tensors="pt", add_special_tokens=False)
    tokens = processor.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"]
    n = tokens.shape[1]
    if n == 0:
        return 0.0, 0, True
    inputs["input_ids"] = torch.cat([inputs["input_ids"], tokens], dim=1)
    inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
    device = next(model.parameters()).device
    log_probs, greedy = next_token_log_probs(model, {k: v.to(device) for k, v in inputs.items()})
    return float(log_probs[0, -n:].sum()), n, bool(greedy[0, -n:].all())
