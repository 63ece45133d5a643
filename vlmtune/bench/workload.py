"""The benchmarks' workloads: random VLMs with the proportions of real ones, and LLaVA-style conversations.

The model is composed by vlmtune (`compose`, as `vlmtune sft` does) from a vision tower and an LLM written here as
ordinary Hugging Face directories: random weights from real architectures and sizes, and an LM head with a real
vocabulary's rows (the tiny tokenizer's few hundred tokens are a subset; the other rows are never a label but cost
what they cost in every softmax). The data are LLaVA-Instruct-like conversations: one photo-sized JPEG per sample,
1-4 turns, 16-400 text tokens, answers longer than questions. Everything derives from fixed seeds.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

# Published config.json values (architecture and sizes only) of real checkpoints, for random weights at real sizes.
SIGLIP_SO400M_384 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                         image_size=384, patch_size=14)  # google/siglip-so400m-patch14-384: 729 image tokens
QWEN2_5_0_5B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)  # Qwen/Qwen2.5-0.5B
QWEN2_5_7B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)  # Qwen/Qwen2.5-7B


@dataclass(frozen=True)
class Workload:
    """A benchmark model (vision tower + LLM, by architecture and config values) and the shape of its data."""

    vision: str  # "clip" | "siglip"
    vision_config: dict
    llm: str  # "llama" | "qwen2"
    llm_config: dict  # vocab_size included: the LM head's rows
    samples: int  # conversations per epoch
    select_strategy: str = "default"  # model.vision.select_strategy: default drops CLS; SigLIP has none (full)
    text_tokens: tuple[int, int] = (16, 400)
    photo: tuple[int, int] = (640, 480)  # the JPEGs' size before the processor


WORKLOADS = {
    # The development machine's size: a CLIP-like 4x256 tower at 224 px (ViT-B/32's 49 image tokens) + an 8-layer
    # Llama 384 wide with a 32k-row head. The head is ~50 % of the LLM's weights (20-30 % in Qwen2.5-0.5B or
    # Llama-3.2-1B): a smaller LLM body than real ones, to train whole epochs on two shared CPU cores.
    "cpu": Workload(
        vision="clip", vision_config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                          num_attention_heads=4, image_size=224, patch_size=32),
        llm="llama", llm_config=dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                                     num_attention_heads=6, num_key_value_heads=2, vocab_size=32000,
                                     tie_word_embeddings=False),
        samples=48),
    # Seconds, for the test that the benchmark runs end to end.
    "smoke": Workload(
        vision="clip", vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=16),
        llm="llama", llm_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, vocab_size=2048, tie_word_embeddings=False),
        samples=12, text_tokens=(16, 60), photo=(64, 48)),
    # GPU sizes (vlmtune/bench/gpu.py): SigLIP-so400m at 384 px + Qwen2.5-0.5B, and + Qwen2.5-7B for QLoRA.
    "gpu-0.5b": Workload(vision="siglip", vision_config=SIGLIP_SO400M_384, llm="qwen2", llm_config=QWEN2_5_0_5B,
                         samples=256, select_strategy="full"),
    "gpu-7b": Workload(vision="siglip", vision_config=SIGLIP_SO400M_384, llm="qwen2", llm_config=QWEN2_5_7B,
                       samples=64, select_strategy="full"),
    # The GPU script's smoke mode on a CPU: the same architectures, tiny.
    "gpu-smoke": Workload(
        vision="siglip", vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=2, image_size=32, patch_size=16),
        llm="qwen2", llm_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, vocab_size=4096,
                                     tie_word_embeddings=True),
        samples=8, select_strategy="full", text_tokens=(16, 60), photo=(64, 48)),
}

# Words the tiny tokenizer keeps whole (vlmtune.tiny trains it on them), so a word is about one token.
WORDS = ("the a an is are there of in on image picture photo left right yes no what color shape circle square "
         "triangle red green blue yellow purple white black orange how many describe").split()


def write_parts(work: Workload, out: Path, tokenizer_dir: Path, device: str = "cpu") -> dict[str, Path]:
    """The vision tower and LLM of `work`, randomly initialised (on `device`), as Hugging Face directories."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    vision_dir, llm_dir = out / "vision", out / "llm"
    size = work.vision_config["image_size"]
    square = {"height": size, "width": size}
    with torch.device(device):
        if work.vision == "clip":
            tower = tf.CLIPVisionModel(tf.CLIPVisionConfig(**work.vision_config))
            processor = tf.CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=square)
        else:
            tower = tf.SiglipVisionModel(tf.SiglipVisionConfig(**work.vision_config))
            processor = tf.SiglipImageProcessorPil(size=square)
        tower.save_pretrained(vision_dir)
        processor.save_pretrained(vision_dir)
        del tower
        tokenizer = tf.AutoTokenizer.from_pretrained(tokenizer_dir)
        config_class, model_class = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                                     "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[work.llm]
        llm = model_class(config_class(**work.llm_config, max_position_embeddings=4096,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                       bos_token_id=None))
        llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)
    return {"vision": vision_dir, "llm": llm_dir}


def write_model(work: Workload, out: Path, device: str = "cpu") -> Path:
    """Compose the benchmark VLM with vlmtune and save it as the `llava` checkpoint both paths start from."""
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.checkpoint import save_checkpoint
    from vlmtune.model.compose import compose
    from vlmtune.tiny import write_tokenizer

    write_tokenizer(out / "tokenizer")
    parts = write_parts(work, out / "parts", out / "tokenizer", device)
    model, processor = compose(ModelConfig(
        vision=VisionConfig(path=str(parts["vision"]), feature_layer=-2, select_strategy=work.select_strategy),
        llm=LLMConfig(path=str(parts["llm"]))))
    # compose fits the embeddings to the tokenizer; the head gets back the real vocabulary's rows (random, like the
    # rest: mean-resizing would make them all alike).
    model.resize_token_embeddings(work.llm_config["vocab_size"], mean_resizing=False)
    return save_checkpoint(model, processor, out / "base", {"recipe": "bench"})


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


def conversation(rng: random.Random, work: Workload, image: str, sample_id: str) -> dict:
    """One LLaVA-format record: the image in the first question, 1-4 turns, answers ~4x longer than questions."""
    low, high = work.text_tokens
    # LLaVA-Instruct's text lengths are skewed: many short exchanges, a tail of long descriptions.
    total = int(min(high, max(low, rng.lognormvariate(4.8, 0.6))))
    turns = rng.randint(1, 4)
    # Each turn costs ~10 tokens of template (role markers, newlines, punctuation) on top of its words, and a word
    # is ~1.2 tokens of the tiny tokenizer.
    words = max(2 * turns, int((total - 10 * turns) / 1.2))
    conversations = []
    for turn in range(turns):
        share = words // turns
        question = max(1, share // 5)
        prefix = "<image>\n" if turn == 0 else ""
        conversations.append({"from": "human", "value": prefix + _text(rng, question) + "?"})
        conversations.append({"from": "gpt", "value": _text(rng, share - question) + "."})
    return {"id": sample_id, "image": image, "conversations": conversations}


def _photo(rng: random.Random, size: tuple[int, int]):
    """A photo-like JPEG payload: a smooth background with a few blurred shapes (compresses like a photo)."""
    from PIL import Image, ImageDraw, ImageFilter

    image = Image.radial_gradient("L").resize(size).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        r = rng.randrange(size[0] // 16 + 1, size[0] // 4 + 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
    return image.filter(ImageFilter.GaussianBlur(2))


def write_data(work: Workload, out: Path, seed: int = 0) -> Path:
    """`work.samples` conversations, each with its own JPEG photo, as a LLaVA-format JSON file."""
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(work.samples):
        name = f"images/{i:05d}.jpg"
        _photo(rng, work.photo).save(out / name, quality=90)
        records.append(conversation(rng, work, name, f"bench-{i}"))
    path = out / "train.json"
    path.write_text(json.dumps(records))
    return path
