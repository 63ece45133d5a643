"""Tiny random-initialised vision encoders and LLMs, the parts `vlmtune.model.compose` assembles into a VLM.

All of them see the shapes data's image size: IMAGE_SIZE px, cut into PATCH_SIZE px patches (one per grid cell).
"""

from __future__ import annotations

from pathlib import Path

VISION = {
    "siglip": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4),
    "clip": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, projection_dim=64),
    # Fixed-resolution SigLIP2 checkpoints (google/siglip2-base-patch16-224, ...) are SigLIP-architecture models
    # (model_type "siglip"); only the NaFlex variants use transformers' separate siglip2 model. Distinct sizes here.
    "siglip2": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4),
    "dinov2": dict(hidden_size=64, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=4),
    "dinov2_reg": dict(hidden_size=64, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=4, num_register_tokens=4),
    "vit": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    # A CNN: a 4x4 stem then three 2x downsamplings, 48 px -> 12, 12, 6, 3, 1 px maps (hidden_states 0..4), so
    # hidden_states[3] (= -2, stage 3) is the 3x3 map, like ConvNeXt-B's 14x14 stage-3 map at 224 px.
    "convnext": dict(patch_size=4, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1]),
}
LLM = {
    "llama": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
                  initializer_range=0.1),
    "qwen2": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
    # Phi-3: fused attention (qkv_proj) and MLP (gate_up_proj) projections, which LoRA target patterns must name.
    "phi3": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, original_max_position_embeddings=512,
                 tie_word_embeddings=False),
}
IMAGE_SIZE = 48  # the shapes data draws a 3x3 grid of 16 px cells: one patch per cell
PATCH_SIZE = 16


def sincos_2d(grid: int, dim: int, extra_tokens: int = 0):
    """Fixed 2-D sine-cosine position embeddings (MAE / ViT style): half the channels encode the column, half the row.

    A random init gives each patch position an unrelated vector; pretrained ViTs learn embeddings whose similarity
    follows rows and columns. This gives the tiny encoder that structure from the start, as a real checkpoint
    would have it (the left/right questions of the demo need the column). `extra_tokens` (CLIP's CLS) get zeros.
    """
    import torch

    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")

    def encode(pos):
        angles = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([encode(cols), encode(rows)], dim=1)  # row-major patch order, like the encoders'
    return torch.cat([torch.zeros(extra_tokens, dim), table], dim=0)


def _vision_model_and_processor(kind: str):
    """A random-initialised vision model of `kind` and an image processor that yields IMAGE_SIZE x IMAGE_SIZE pixels.

    Only PIL image processors (`*ImageProcessorPil`): torchvision is not installed, and AutoImageProcessor reloads
    them from the saved `image_processor_type`.
    """
    import transformers as tf

    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    if kind == "convnext":
        # crop_pct=1: resize the shortest edge to 48 and crop 48, keeping the whole (square) image.
        processor = tf.ConvNextImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_pct=1.0)
        return tf.ConvNextModel(tf.ConvNextConfig(image_size=IMAGE_SIZE, **VISION[kind])), processor
    vit_like = dict(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, **VISION[kind])
    if kind in ("siglip", "siglip2"):
        return tf.SiglipVisionModel(tf.SiglipVisionConfig(**vit_like)), tf.SiglipImageProcessorPil(size=square)
    if kind == "clip":
        processor = tf.CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
        return tf.CLIPVisionModel(tf.CLIPVisionConfig(**vit_like)), processor
    if kind in ("dinov2", "dinov2_reg"):
        # DINOv2's own processor resizes the shortest edge to 256 and crops 224; here shortest edge 48, crop 48. The
        # position table has exactly 3x3 (+ CLS) entries, so the model's interpolation is a no-op at 48 px.
        processor = tf.BitImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=square,
                                            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        if kind == "dinov2":
            return tf.Dinov2Model(tf.Dinov2Config(**vit_like)), processor
        return tf.Dinov2WithRegistersModel(tf.Dinov2WithRegistersConfig(**vit_like)), processor
    if kind == "vit":
        return tf.ViTModel(tf.ViTConfig(**vit_like)), tf.ViTImageProcessorPil(size=square)
    raise KeyError(f"unknown tiny vision encoder {kind!r}; known: {sorted(VISION)}")


def _position_table(model):
    """The learned position table to overwrite with 2-D sin-cos values: a (positions, dim) tensor, or None (a CNN)."""
    embeddings = getattr(getattr(model, "vision_model", model), "embeddings", None)
    if hasattr(embeddings, "position_embedding"):  # CLIP / SigLIP: an nn.Embedding
        return embeddings.position_embedding.weight
    if hasattr(embeddings, "position_embeddings"):  # ViT / DINOv2: a (1, positions, dim) parameter
        return embeddings.position_embeddings[0]
    return None


def write_vision(kind: str, out_dir: Path, seed: int = 1) -> None:
    """A tiny random vision encoder of `kind` (a key of VISION) with its image processor."""
    import torch

    torch.manual_seed(seed)
    model, processor = _vision_model_and_processor(kind)
    table = _position_table(model)
    if table is not None:
        grid = IMAGE_SIZE // PATCH_SIZE
        with torch.no_grad():  # extra rows (a CLS token) come first; DINOv2's registers have no position
            table.copy_(sincos_2d(grid, table.shape[1], table.shape[0] - grid * grid))
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)


def write_llm(kind: str, out_dir: Path, tokenizer_dir: Path, seed: int = 2) -> None:
    """A tiny random causal LM of `kind` (a key of LLM) with a copy of the tokenizer in `tokenizer_dir`."""
    import torch
    import transformers as tf

    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
               "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM)}
    config_class, model_class = classes[kind]
    model = model_class(config_class(**LLM[kind], **ids))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
