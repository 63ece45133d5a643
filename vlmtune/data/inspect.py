"""See what the model will be trained on: samples rendered with supervised, masked and image-token spans marked.

On a terminal the spans are coloured (supervised green, masked grey, image tokens magenta); piped, they get plain
markers: supervised text inside `[[...]]`, each image block as `<image x N>`, masked text as is.
"""

from __future__ import annotations

from typing import Any

from vlmtune.data.images import load_image
from vlmtune.data.lengths import with_images

COLORS = {"supervised": "\033[32m", "masked": "\033[90m", "image": "\033[35m"}
RESET = "\033[0m"


def token_spans(sample: dict[str, Any], processor) -> list[tuple[str, list[int]]]:
    """[(kind, token ids)] runs of image / supervised / masked tokens, as the processor renders the sample."""
    images = [load_image(image, f"sample {sample['id']!r}") for image in sample["images"]]
    out = processor.apply_chat_template([with_images(sample["messages"], images)], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    spans: list[tuple[str, list[int]]] = []
    for token, supervised in zip(out["input_ids"][0], out["assistant_masks"][0], strict=True):
        kind = "image" if token == image_id else "supervised" if supervised else "masked"
        if spans and spans[-1][0] == kind:
            spans[-1][1].append(int(token))
        else:
            spans.append((kind, [int(token)]))
    return spans


def render(sample: dict[str, Any], processor, color: bool) -> str:
    """A header with the token counts, then the sample's text with its spans marked."""
    spans = token_spans(sample, processor)
    counts = {kind: sum(len(ids) for k, ids in spans if k == kind) for kind in COLORS}
    header = (f"--- sample {sample['id']}: {sum(counts.values())} tokens = {counts['supervised']} supervised + "
              f"{counts['masked']} masked + {counts['image']} image ({len(sample['images'])} image(s))")
    pieces = []
    for kind, ids in spans:
        text = f"<image x{len(ids)}>" if kind == "image" else processor.tokenizer.decode(ids)
        if color:
            pieces.append(f"{COLORS[kind]}{text}{RESET}")
        else:
            pieces.append(f"[[{text}]]" if kind == "supervised" else text)
    return header + "\n" + "".join(pieces)
