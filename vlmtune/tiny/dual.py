"""A tiny text encoder and a tiny dual encoder (CLIPModel) for `vlmtune contrastive`, `embed` and `search`.

The text encoder is CLIP's text transformer on the tiny tokenizer; the dual encoder joins it to the tiny CLIP vision
tower (parts.py) with new projection heads, as an untrained `openai/clip-*`-shaped checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from vlmtune.tiny.parts import VISION

# CLIP's text transformer, pooled at the end-of-text token.
TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64)


def write_text_encoder(out_dir: Path, tokenizer_dir: Path, seed: int = 3) -> None:
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


def write_dual_encoder(out_dir: Path, vision_dir: Path, text_dir: Path, seed: int = 4) -> None:
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
