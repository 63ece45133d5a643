"""Tiny random-initialised "pretrained" parts, written as ordinary Hugging Face directories (`vlmtune tiny`).

Tests and the demo load these through the same `from_pretrained` code that loads real hub checkpoints; only the
conf entry's `path` differs. Everything here is deterministic and offline:

- tokenizer.py: the one BPE trainer, and the chatml tokenizer the tiny LLMs share;
- parts.py: vision encoders (SigLIP, CLIP, DINOv2, ViT, ConvNeXt) and LLMs (Llama, Qwen2, Phi-3) to compose;
- vlms.py: complete HF VLMs (llava, idefics3, qwen2_vl) for `model=hf_vlm`;
- dual.py: a CLIP text encoder and a CLIPModel dual encoder for `vlmtune contrastive`, `embed` and `search`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vlmtune.tiny.dual import write_dual_encoder, write_text_encoder
from vlmtune.tiny.parts import IMAGE_SIZE, LLM, PATCH_SIZE, VISION, sincos_2d, write_llm, write_vision
from vlmtune.tiny.tokenizer import write_tokenizer
from vlmtune.tiny.vlms import ARCHITECTURES, write_tiny_vlm

__all__ = ["IMAGE_SIZE", "PATCH_SIZE", "sincos_2d", "write_tiny_parts"]

TINY_VERSION = 7  # bump when the tiny parts change, so stale caches are rewritten


def write_tiny_parts(cache_dir: Path, force: bool = False) -> dict[str, Path]:
    """Write every tiny part under `cache_dir` (skipped when already there) and return their directories.

    Each part is written to a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a half-written part that later loads wrongly.
    """
    cache_dir = Path(cache_dir)
    tokenizer = cache_dir / "tokenizer"
    writers = {"tokenizer": write_tokenizer}  # first: the LLMs copy it
    writers |= {f"vision/{k}": (lambda d, k=k: write_vision(k, d)) for k in VISION}
    writers |= {f"llm/{k}": (lambda d, k=k: write_llm(k, d, tokenizer)) for k in LLM}
    writers |= {f"vlm/{arch}": (lambda d, a=arch: write_tiny_vlm(a, d)) for arch in ARCHITECTURES}
    writers["text/clip"] = lambda d: write_text_encoder(d, tokenizer)
    writers["dual/clip"] = lambda d: write_dual_encoder(d, cache_dir / "vision" / "clip", cache_dir / "text" / "clip")
    parts = {name: cache_dir / name for name in writers}
    stamp = cache_dir / "tiny.json"
    if not force and stamp.exists() and json.loads(stamp.read_text()).get("version") == TINY_VERSION:
        return parts

    cache_dir.mkdir(parents=True, exist_ok=True)
    for name, writer in writers.items():
        final = parts[name]
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        writer(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    stamp.write_text(json.dumps({"version": TINY_VERSION, "parts": sorted(parts)}, indent=1))
    return parts
