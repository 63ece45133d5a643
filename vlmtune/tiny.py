"""Tiny random-initialised "pretrained" parts, written as ordinary Hugging Face directories.

Tests and the demo load these through the same `from_pretrained` code that loads real hub checkpoints; only the
conf entry's `path` differs. Everything here is deterministic and offline.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

TINY_VERSION = 6  # bump when the tiny parts change, so stale caches are rewritten

# Special tokens of the tiny tokenizer: chatml turn markers (they match the chatml template), padding, end of text and
# the image placeholder that processors expand.
SPECIAL_TOKENS = ["<|endoftext|>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>"]

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
# A text encoder for dual encoders (vlmtune contrastive): CLIP's text transformer, pooled at the end-of-text token.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)
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


def _corpus() -> list[str]:
    """Text the tiny tokenizer is trained on: the synthetic data's words plus common chat words."""
    colors = ["red", "green", "blue", "yellow", "purple", "white", "black", "orange"]
    shapes = ["circle", "square", "triangle", "shape", "shapes"]
    lines = [
        f"What color is the {s}? How many {c} shapes are there? Is the {s} left or right of the {t}?"
        for s in shapes for t in shapes for c in colors
    ]
    lines += [f"a {c} {s}, a {d} {t} and a {c} {t}." for c in colors for d in colors for s in shapes for t in shapes]
    lines += ["What shape is on the left? What shape is on the right? Describe the image. " * 2]
    lines += ["0 1 2 3 4 5 6 7 8 9 10 yes no left right the a an is are there of in on image picture photo"]
    lines += ["You are a helpful assistant. Answer with a single word. user assistant system"]
    # Words alone on a line too: an answer starts right after "assistant\n", without a leading space, and should be
    # one token rather than fragments.
    lines += [*colors, *shapes, "left", "right", "yes", "no", *map(str, range(11))]
    return lines


def write_tokenizer(out_dir: Path, vocab_size: int = 600) -> None:
    """Train a byte-level BPE tokenizer offline and save it as a `PreTrainedTokenizerFast` with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vlmtune.templates import CHATML

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<pad>",
        bos_token=None,
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"],
        chat_template=CHATML,
        model_max_length=512,
    )
    fast.save_pretrained(out_dir)


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


def _write_vision(kind: str, out_dir: Path, seed: int) -> None:
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


def _write_llm(kind: str, out_dir: Path, tokenizer_dir: Path, seed: int) -> None:
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


def _write_text_encoder(out_dir: Path, tokenizer_dir: Path, seed: int) -> None:
    """A CLIP text transformer and the tiny tokenizer, which here ends every text with `<|endoftext|>`: CLIP pools
    the hidden state at that token (as the real CLIP tokenizer appends it)."""
    import torch
    import transformers as tf
    from tokenizers.processors import TemplateProcessing

    tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
    end = "<|endoftext|>"
    end_id = tokenizer.convert_tokens_to_ids(end)
    tokenizer._tokenizer.post_processor = TemplateProcessing(single=f"$A {end}", special_tokens=[(end, end_id)])
    tokenizer.eos_token = end
    torch.manual_seed(seed)
    config = tf.CLIPTextConfig(vocab_size=len(tokenizer), eos_token_id=end_id, bos_token_id=end_id,
                               pad_token_id=tokenizer.pad_token_id, **TEXT)
    tf.CLIPTextModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _write_dual_encoder(out_dir: Path, vision_dir: Path, text_dir: Path, seed: int) -> None:
    """A CLIPModel (what `openai/clip-*` checkpoints are) from the tiny CLIP vision tower and text encoder, with new
    projection heads: an untrained dual encoder, so the random tower it holds is exactly `vision/clip`."""
    import torch
    import transformers as tf

    vision, text = tf.CLIPVisionModel.from_pretrained(vision_dir), tf.CLIPTextModel.from_pretrained(text_dir)
    torch.manual_seed(seed)
    model = tf.CLIPModel(tf.CLIPConfig(vision_config=vision.config.to_dict(), text_config=text.config.to_dict(),
                                       projection_dim=VISION["clip"]["projection_dim"]))
    model.vision_model.load_state_dict(vision.state_dict())
    model.text_model.load_state_dict(text.state_dict())
    model.save_pretrained(out_dir)
    tf.AutoImageProcessor.from_pretrained(vision_dir).save_pretrained(out_dir)
    tf.AutoTokenizer.from_pretrained(text_dir).save_pretrained(out_dir)


def write_tiny_parts(cache_dir: Path, force: bool = False) -> dict[str, Path]:
    """Write every tiny part under `cache_dir` (skipped when already there) and return their directories.

    Each part is written to a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a half-written part that later loads wrongly.
    """
    cache_dir = Path(cache_dir)
    parts = {f"vision/{k}": cache_dir / "vision" / k for k in VISION}
    parts |= {f"llm/{k}": cache_dir / "llm" / k for k in LLM}
    parts["tokenizer"] = cache_dir / "tokenizer"
    parts["text/clip"] = cache_dir / "text" / "clip"
    parts["dual/clip"] = cache_dir / "dual" / "clip"
    from vlmtune.tiny_vlm import tiny_vlm_writers  # complete tiny HF VLMs: vlm/llava, vlm/idefics3, vlm/qwen2_vl

    vlm_writers = tiny_vlm_writers(cache_dir)
    parts |= {name: path for name, (path, _) in vlm_writers.items()}
    stamp = cache_dir / "tiny.json"
    if not force and stamp.exists() and json.loads(stamp.read_text()).get("version") == TINY_VERSION:
        return parts

    cache_dir.mkdir(parents=True, exist_ok=True)
    writers = {"tokenizer": lambda d: write_tokenizer(d)}
    writers |= {f"vision/{k}": (lambda d, k=k: _write_vision(k, d, seed=1)) for k in VISION}
    writers |= {f"llm/{k}": (lambda d, k=k: _write_llm(k, d, parts["tokenizer"], seed=2)) for k in LLM}
    writers["text/clip"] = lambda d: _write_text_encoder(d, parts["tokenizer"], seed=3)
    writers["dual/clip"] = lambda d: _write_dual_encoder(d, parts["vision/clip"], parts["text/clip"], seed=4)
    writers |= {name: writer for name, (_, writer) in vlm_writers.items()}
    for name, writer in writers.items():  # the tokenizer first: the LLMs copy it
        final = parts[name]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        writer(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    stamp.write_text(json.dumps({"version": TINY_VERSION, "parts": sorted(parts)}, indent=1))
    return parts
