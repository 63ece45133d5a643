"""Batched greedy generation over records, split across accelerate processes and gathered once.

Generation pads on the left with an explicit attention mask (right padding reads the next-token logits at a pad
position and changes answers with the batch size). Documents are split between processes without padding, every
rank gathers `(id, prediction)` objects, and the main process de-duplicates by id, so a set whose size does not
divide by the number of processes scores exactly as on one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmtune.data.images import load_image
from vlmtune.data.records import split_prompt
from vlmtune.progress import progress


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> str:
    cut = min((text.find(s) for s in stop_strings if s and s in text), default=-1)
    return text[:cut] if cut >= 0 else text


@torch.no_grad()
def generate_answers(
    model,
    processor,
    records: Sequence[dict[str, Any]],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    stop_strings: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Greedy answers for `records` on this process: [{id, prompt, prediction, target, images}]."""
    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    outputs = []
    with progress(len(records), "generating answers", "answers", leave=None) as bar:
        for start in range(0, len(records), batch_size):
            batch = records[start : start + batch_size]
            prompts, targets = zip(*(split_prompt(r["messages"]) for r in batch), strict=True)
            texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
            images = [load_image(image, f"sample {r['id']!r}") for r in batch for image in r["images"]]
            # The chat template renders every special token (a BOS too, where the model has one), as in training: TRL's
            # collator tokenizes without adding special tokens, and so does evaluation.
            inputs = processor(
                text=texts, images=images or None, padding=True, padding_side="left", return_tensors="pt",
                add_special_tokens=False,
            ).to(device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            generated = model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
            )
            new_tokens = generated[:, inputs["input_ids"].shape[1] :]  # decode only what the model wrote
            for record, text, target, tokens in zip(batch, texts, targets, new_tokens, strict=True):
                prediction = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop_strings).strip()
                outputs.append({"id": record["id"], "prompt": text, "prediction": prediction, "target": target,
                                "images": list(record["images"]), "kind": record.get("kind"),
                                "generated_tokens": generated_length(tokens, model.generation_config.eos_token_id)})
            bar.update(len(batch))
    return outputs


def generated_length(tokens: torch.Tensor, eos_token_id: int | list[int] | None) -> int:
    """Tokens the model generated for one row: up to and including its first end token (the rest is padding
    added while the other rows of the batch went on)."""
    stops = set(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])
    for position, token in enumerate(tokens.tolist()):
        if token in stops:
            return position + 1
    return len(tokens)


def generate_distributed(model, processor, records: Sequence[dict[str, Any]], state=None, **kwargs):
    """Split `records` across processes, generate, gather; every rank returns the full list in input order."""
    if state is None or state.num_processes == 1:
        return generate_answers(model, processor, records, **kwargs)
    from accelerate.utils import gather_object

    with state.split_between_processes(list(records)) as shard:  # no padding: shards may differ by one
        local = generate_answers(model, processor, shard, **kwargs)
    gathered = gather_object(local)
    by_id = {row["id"]: row for row in gathered}  # drop any duplicate a launcher might add
    return [by_id[r["id"]] for r in records]

