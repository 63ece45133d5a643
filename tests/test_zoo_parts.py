"""The model zoo's parts: tiny offline vision encoders of each family, the tiny Phi-3 LLM and the conf entries."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, vlmtune
from omegaconf import OmegaConf

from vlmtune.config import LLMConfig, PeftConfig, VisionConfig
from vlmtune.tiny import IMAGE_SIZE, PATCH_SIZE

GRID = IMAGE_SIZE // PATCH_SIZE  # 3: a 3x3 patch grid at 48 px

# tiny encoder -> (model class, tokens before the patch tokens (CLS, registers), hidden size)
TRANSFORMERS = {
    "siglip": ("SiglipVisionModel", 0, 256),
    "clip": ("CLIPVisionModel", 1, 64),
    "siglip2": ("SiglipVisionModel", 0, 96),
    "dinov2": ("Dinov2Model", 1, 64),
    "dinov2_reg": ("Dinov2WithRegistersModel", 5, 64),
    "vit": ("ViTModel", 1, 64),
}
# ConvNeXt: hidden_states[i] is a (B, C, H, W) map: the stem, then stages 1-4.
CONVNEXT_MAPS = [(16, 12, 12), (16, 12, 12), (32, 6, 6), (64, 3, 3), (128, 1, 1)]
SELECT_DROPS = {"full": lambda prefix: 0, "default": lambda prefix: 1, "patches": lambda prefix: prefix}


def _yaml(group: str, name: str, schema, tiny: Path = Path("TINY")):
    """One conf entry validated against its schema, with ${paths.tiny} pointing at `tiny`."""
    root = OmegaConf.create({"paths": {"tiny": str(tiny)},
                             "entry": OmegaConf.load(REPO / "conf" / "model" / group / f"{name}.yaml")})
    OmegaConf.resolve(root)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), root.entry))


def _encode(tiny: Path, name: str):
    from PIL import Image
    from transformers import AutoImageProcessor

    from vlmtune.model.compose import load_vision_tower

    path = tiny / "vision" / name
    vision = load_vision_tower(str(path), torch.float32)
    processor = AutoImageProcessor.from_pretrained(path)
    assert type(processor).__name__.endswith("ImageProcessorPil"), "torchvision is absent: PIL processors only"
    # A non-square image too: every processor must give exactly 48x48 pixels.
    for size in [(IMAGE_SIZE, IMAGE_SIZE), (80, 56)]:
        pixels = processor(Image.new("RGB", size, "red"), return_tensors="pt")["pixel_values"]
        assert tuple(pixels.shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE), (name, size)
    with torch.no_grad():
        out = vision(pixel_values=pixels, output_hidden_states=True)
    return vision, out.hidden_states


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
def test_tiny_vit_encoders_load_offline_and_emit_a_3x3_grid(tiny, name):
    model_class, prefix, hidden = TRANSFORMERS[name]
    vision, hidden_states = _encode(tiny, name)
    assert type(vision).__name__ == model_class
    cfg = vision.config
    assert cfg.hidden_size == hidden <= 256 and cfg.num_hidden_layers <= 2
    assert len(hidden_states) == cfg.num_hidden_layers + 1
    assert all(tuple(h.shape) == (1, prefix + GRID * GRID, hidden) for h in hidden_states)

    # The conf entry's select strategy leaves exactly the 9 patch tokens.
    entry = _yaml("vision", f"tiny_{name}", VisionConfig, tiny)
    assert Path(entry.path) == tiny / "vision" / name
    assert prefix + GRID * GRID - SELECT_DROPS[entry.select_strategy](prefix) == GRID * GRID
    assert -len(hidden_states) <= entry.feature_layer < 0


def test_tiny_position_tables_are_2d_sincos(tiny):
    from vlmtune.tiny import sincos_2d

    for name in ["siglip2", "dinov2", "dinov2_reg", "vit"]:
        vision, _ = _encode(tiny, name)
        embeddings = getattr(vision, "vision_model", vision).embeddings
        table = (embeddings.position_embedding.weight if hasattr(embeddings, "position_embedding")
                 else embeddings.position_embeddings[0])
        extra = table.shape[0] - GRID * GRID
        assert extra == TRANSFORMERS[name][1] - (4 if name == "dinov2_reg" else 0)  # registers have no position
        torch.testing.assert_close(table, sincos_2d(GRID, table.shape[1], extra))


def test_tiny_convnext_stage3_is_a_3x3_map(tiny):
    vision, hidden_states = _encode(tiny, "convnext")
    assert type(vision).__name__ == "ConvNextModel" and max(vision.config.hidden_sizes) <= 256
    assert [tuple(h.shape[1:]) for h in hidden_states] == CONVNEXT_MAPS
    entry = _yaml("vision", "tiny_convnext", VisionConfig, tiny)
    assert Path(entry.path) == tiny / "vision" / "convnext"
    assert entry.select_strategy == "full"
    assert tuple(hidden_states[entry.feature_layer].shape[-2:]) == (GRID, GRID)  # 9 tokens once flattened


REAL_VISION = {
    "siglip2_base_p16_224": ("google/siglip2-", "full"),
    "siglip_so400m_p14_384": ("google/siglip-so400m", "full"),
    "dinov2_base": ("facebook/dinov2-", "default"),
    "dinov2_large": ("facebook/dinov2-", "default"),
    "dinov2_reg_base": ("facebook/dinov2-with-registers", "patches"),
    "vit_base_p16_224": ("google/vit-", "default"),
    "convnext_base_224": ("facebook/convnext-", "full"),
}
REAL_LLM = ["llama3_2_1b", "llama3_1_8b", "qwen2_5_0_5b", "qwen2_5_7b", "qwen3_0_6b", "qwen3_8b", "mistral_7b",
            "gemma2_2b", "gemma3_1b", "phi3_mini", "phi4_mini", "smollm2_360m", "smollm2_1_7b", "vicuna_7b"]
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def test_real_checkpoint_entries_parse_and_name_hub_ids():
    for name, (prefix, strategy) in REAL_VISION.items():
        text = (REPO / "conf" / "model" / "vision" / f"{name}.yaml").read_text()
        assert text.startswith("# ") and "token" in text.splitlines()[0], f"{name}: first line says the token count"
        entry = _yaml("vision", name, VisionConfig)
        assert HUB_ID.fullmatch(entry.path) and entry.path.startswith(prefix), name
        assert entry.select_strategy == strategy and entry.image_policy in ("resize", "pad"), name
    for name in REAL_LLM:
        assert (REPO / "conf" / "model" / "llm" / f"{name}.yaml").read_text().startswith("# "), name
        entry = _yaml("llm", name, LLMConfig)
        assert HUB_ID.fullmatch(entry.path), name
        assert entry.pad_token is None or re.fullmatch(r"<[^<>\s]+>", entry.pad_token), name




def test_tiny_phi3_loads_and_the_default_lora_target_reaches_its_fused_projections(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(tiny / "llm" / "phi3")
    tokenizer = AutoTokenizer.from_pretrained(tiny / "llm" / "phi3")
    assert type(llm).__name__ == "Phi3ForCausalLM" and llm.config.vocab_size == len(tokenizer)
    ids = tokenizer("What color is the circle?", return_tensors="pt")["input_ids"]
    assert llm(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))

    # Module names as they sit inside the composed Llava: peft matches the regex against the full name.
    names = [f"model.language_model.{n}" for n, m in llm.model.named_modules() if isinstance(m, torch.nn.Linear)]

    def targeted(pattern: str) -> set[str]:
        return {n.rsplit(".", 1)[-1] for n in names if re.fullmatch(pattern, n)}

    assert targeted(".*") == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    from vlmtune.model.parts import parts_of
    from vlmtune.train.policy import lora_target

    assert targeted(lora_target(PeftConfig().target, parts_of("llava"))) == targeted(".*")


def test_describe_composes_with_tiny_phi3_and_lora_reaches_the_fused_projections(tiny, tmp_path):
    from transformers import AutoConfig

    output = vlmtune("describe", "model/llm=tiny_phi3", "model/vision=tiny_dinov2", cwd=tmp_path)
    assert "llm/phi3" in output and "9 image tokens per image" in output
    table = {line.split()[0]: line.split()[1:] for line in output.splitlines()
             if line.split()[:1] in (["vision"], ["llm"])}
    assert table["vision"][1] == "0"
    # LoRA A (r x in) + B (out x r) on qkv_proj, o_proj, gate_up_proj and down_proj of every layer.
    c = AutoConfig.from_pretrained(tiny / "llm" / "phi3")
    h, inter = c.hidden_size, c.intermediate_size
    qkv = h + 2 * c.num_key_value_heads * (h // c.num_attention_heads)  # queries + keys + values
    r = OmegaConf.load(REPO / "conf" / "peft" / "lora.yaml").peft.r
    lora = r * ((h + qkv) + (h + h) + (h + 2 * inter) + (inter + h)) * c.num_hidden_layers
    assert int(table["llm"][1].replace(",", "")) == lora
    assert list(tmp_path.iterdir()) == []
