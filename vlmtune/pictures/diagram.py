"""A diagram of a composed VLM drawn from its own config and one measured image: image -> patches -> vision encoder
-> image tokens -> projector -> LLM, with the tensor shape and token count at every arrow."""

from __future__ import annotations

from pathlib import Path

import torch

from vlmtune.pictures import figure, save


@torch.no_grad()
def model_stages(model, processor) -> list[tuple[str, str, str]]:
    """(box title, what it is, the tensor it hands on) per stage: names and sizes from the config, tensor shapes
    measured on one blank image (the projector's input and output, caught by a hook)."""
    from PIL import Image

    from vlmtune.model.parts import parts_of

    config = model.config
    vision, text = config.vision_config, config.text_config
    pixels = processor.image_processor(Image.new("RGB", (224, 224)), return_tensors="pt")["pixel_values"]
    shapes = {}
    projector = model.get_submodule(parts_of(model)["projector"])
    hook = projector.register_forward_hook(
        lambda module, args, output: shapes.update(inputs=tuple(args[0].shape), outputs=tuple(output.shape)))
    try:
        model.get_image_features(pixel_values=pixels.to(model.dtype))
    finally:
        hook.remove()
    size = tuple(pixels.shape[-2:])
    (_, features, feature_dim), (_, tokens, width) = shapes["inputs"][-3:], shapes["outputs"][-3:]
    options = getattr(config, "projector", None)
    name = options.get("name", "mlp2x_gelu") if isinstance(options, dict) else "mlp2x_gelu"
    stages = [("image", f"{size[0]}x{size[1]} px, RGB", f"pixels (1, 3, {size[0]}, {size[1]})")]
    patch = getattr(vision, "patch_size", None)
    if patch:
        grid = (size[0] // patch, size[1] // patch)
        stages.append(("patches", f"{patch}x{patch} px each", f"{grid[0]}x{grid[1]} = {grid[0] * grid[1]} patches"))
    stages += [
        (f"vision encoder\n{vision.model_type}",
         f"{getattr(vision, 'num_hidden_layers', '?')} layers, width {getattr(vision, 'hidden_size', '?')}",
         f"layer {config.vision_feature_layer} ({config.vision_feature_select_strategy}):\n"
         f"{features} tokens x {feature_dim}"),
        (f"projector\n{name}", f"{feature_dim} -> {width}", f"{tokens} image tokens x {width}\n+ the text's tokens"),
        (f"LLM\n{text.model_type}", f"{text.num_hidden_layers} layers, width {text.hidden_size}",
         f"next-token logits\nover {text.vocab_size} tokens"),
    ]
    return stages


def model_diagram(stages: list[tuple[str, str, str]], config, path: str | Path, title: str = "") -> Path:
    """Boxes left to right, one per stage of `model_stages`, each arrow labelled with what flows along it."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = figure(2.6 * len(stages), 2.6)
    axes = fig.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, len(stages))
    axes.set_ylim(0, 1)
    axes.axis("off")
    colours = ["#dbe9f6", "#dbe9f6", "#fde2c8", "#e3f1d9", "#eadcf2"]
    for i, (head, body, flow) in enumerate(stages):
        axes.add_patch(FancyBboxPatch((i + 0.12, 0.45), 0.76, 0.4, boxstyle="round,pad=0.02",
                                      facecolor=colours[min(i, len(colours) - 1)], edgecolor="#444444"))
        axes.text(i + 0.5, 0.72, head, ha="center", va="center", fontsize=9, fontweight="bold")
        axes.text(i + 0.5, 0.53, body, ha="center", va="center", fontsize=7.5)
        axes.text(i + 0.5, 0.3, flow, ha="center", va="top", fontsize=7, color="#333333", wrap=True)
        if i + 1 < len(stages):
            axes.add_patch(FancyArrowPatch((i + 0.9, 0.65), (i + 1.1, 0.65), arrowstyle="-|>", mutation_scale=12))
    axes.text(0.05, 0.95, title or f"{config.model_type}: {config.image_seq_length} image tokens per image",
              fontsize=9, va="top")
    save(fig, path)
    return Path(path)
