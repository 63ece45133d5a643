"""The projector zoo: token-count contract, every vision x projector pair trains and round-trips, the vlmtune model
type loads through the Auto classes, and batches mix multi-image, single-image and text-only samples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO

from vlmtune.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig
from vlmtune.errors import ConfigError
from vlmtune.model.checkpoint import load_vlm, save_checkpoint
from vlmtune.model.compose import compose
from vlmtune.model.projectors import PROJECTORS
from vlmtune.tiny import IMAGE_SIZE

CONF = REPO / "conf" / "model"
TINY_VISION = sorted(p.stem for p in (CONF / "vision").glob("tiny_*.yaml"))
PROJECTOR_NAMES = sorted(p.stem for p in (CONF / "projector").glob("*.yaml"))


def _yaml(group: str, name: str) -> dict:
    return yaml.safe_load((CONF / group / f"{name}.yaml").read_text())


def _vision(tiny: Path, name: str) -> VisionConfig:
    entry = _yaml("vision", name)
    entry["path"] = entry["path"].replace("${paths.tiny}", str(tiny))
    return VisionConfig(**entry)


def _projector(name: str, **overrides) -> ProjectorConfig:
    # Fewer learned queries than the conf default keeps the tiny runs fast; the count is still checked.
    return ProjectorConfig(**{**_yaml("projector", name), "num_queries": 6, **overrides})


def test_conf_projectors_are_the_registry():
    assert PROJECTOR_NAMES == sorted(PROJECTORS)


@pytest.mark.parametrize("name", PROJECTOR_NAMES)
@pytest.mark.parametrize("grid", [(3, 3), (4, 4), (5, 7), (24, 24)])
def test_token_count_contract(name, grid):
    """What a projector declares is what it emits, for grids its scale does and does not divide."""
    projector = PROJECTORS.get(name)(40, 32, _projector(name))
    features = torch.randn(2, grid[0] * grid[1], 40)
    out = projector(features, grid)
    assert out.shape == (2, projector.output_tokens(grid[0] * grid[1], grid), 32)


def test_declared_counts():
    expected = {"linear": 81, "mlp": 81, "mlp2x_gelu": 81, "pixel_shuffle": 25, "conv_downsampler": 25,
                "resampler": 6, "qformer": 6}
    for name, tokens in expected.items():
        projector = PROJECTORS.get(name)(8, 8, _projector(name, num_heads=2))
        assert projector.output_tokens(81, (9, 9)) == tokens, name


def test_unknown_projector_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"model\.projector\.name='mlp_2x'.*linear, mlp, mlp2x_gelu"):
        PROJECTORS.get("mlp_2x")


def _conversations(n_images: list[int]):
    """One conversation per entry, with that many images (0 = text only)."""
    from PIL import Image

    colors = ["red", "blue", "green", "yellow", "purple"]
    conversations = []
    for i, count in enumerate(n_images):
        images = [{"type": "image", "image": Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colors[(i + k) % 5])}
                  for k in range(count)]
        conversations.append([
            {"role": "user", "content": [*images, {"type": "text", "text": f"What color is shape {i}?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": colors[i % 5]}]},
        ])
    return conversations


def _batch(processor, conversations):
    processor.tokenizer.padding_side = "right"
    return processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                         padding=True)


@pytest.mark.parametrize("vision", TINY_VISION)
@pytest.mark.parametrize("projector", PROJECTOR_NAMES)
def test_pair_trains_and_round_trips(tiny, tmp_path, vision, projector):
    cfg = ModelConfig(vision=_vision(tiny, vision), llm=LLMConfig(path=str(tiny / "llm" / "qwen2")),
                      projector=_projector(projector))
    model, processor = compose(cfg)
    batch = _batch(processor, _conversations([1, 1]))
    per_sample = (batch["input_ids"] == model.config.image_token_index).sum(dim=1)
    assert per_sample.tolist() == [model.config.image_seq_length] * 2

    weights = {n: p.detach().clone() for n, p in model.model.multi_modal_projector.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    moved = [n for n, p in model.model.multi_modal_projector.named_parameters() if not torch.equal(weights[n], p)]
    assert moved, "the projector got no update"

    model.eval()
    save_checkpoint(model, processor, tmp_path / "checkpoint", {"config": {}})
    loaded, loaded_processor = load_vlm(tmp_path / "checkpoint")
    assert loaded.config.model_type == model.config.model_type
    assert type(loaded_processor).__name__ == type(processor).__name__
    reloaded_batch = _batch(loaded_processor, _conversations([1, 1]))
    assert torch.equal(reloaded_batch["input_ids"], batch["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**reloaded_batch).logits)


def test_mixed_batch_matches_samples_alone(tiny):
    """Two-image, one-image and text-only samples in one batch give each sample's logits computed alone."""
    cfg = ModelConfig(vision=_vision(tiny, "tiny_siglip"), llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                      projector=_projector("resampler"))
    model, processor = compose(cfg)
    model.eval()
    conversations = _conversations([2, 1, 0])
    batch = _batch(processor, conversations)
    assert batch["pixel_values"].shape[0] == 3  # two images, then one, then none
    with torch.no_grad():
        mixed = model(**batch).logits
        for i, conversation in enumerate(conversations):
            alone = _batch(processor, [conversation])
            length = alone["input_ids"].shape[1]
            torch.testing.assert_close(mixed[i, :length], model(**alone).logits[0], atol=1e-5, rtol=1e-5)


def test_vlmtune_checkpoint_loads_through_auto_classes(tiny, tmp_path):
    """A vlmtune-typed checkpoint loads in a fresh process that only calls `vlmtune.register_auto_classes()` and the
    Auto classes."""
    cfg = ModelConfig(vision=_vision(tiny, "tiny_clip"), llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                      projector=_projector("pixel_shuffle"))
    model, processor = compose(cfg)
    model.eval()
    save_checkpoint(model, processor, tmp_path / "checkpoint", {"config": {}})
    batch = _batch(processor, _conversations([1]))
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        torch.save(model(**batch).logits, tmp_path / "logits.pt")
    script = f"""
import torch, vlmtune
from transformers import AutoModelForImageTextToText, AutoProcessor
vlmtune.register_auto_classes()
model = AutoModelForImageTextToText.from_pretrained({str(tmp_path / 'checkpoint')!r}).eval()
processor = AutoProcessor.from_pretrained({str(tmp_path / 'checkpoint')!r})
assert type(model).__name__ == "VlmtuneForConditionalGeneration", type(model)
assert type(processor).__name__ == "VlmtuneProcessor", type(processor)
batch = torch.load({str(tmp_path / 'batch.pt')!r}, weights_only=True)
with torch.no_grad():
    assert torch.equal(model(**batch).logits, torch.load({str(tmp_path / 'logits.pt')!r}, weights_only=True))
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_spatial_projector_refuses_cls_token(tiny):
    cfg = ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="full"),
                      llm=LLMConfig(path=str(tiny / "llm" / "qwen2")), projector=_projector("pixel_shuffle"))
    with pytest.raises(ValueError, match="select_strategy=patches"):
        compose(cfg)


def test_feature_layer_list_concatenates(tiny):
    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full", feature_layer=[-1, -3])
    model, _ = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "qwen2"))))
    assert model.config.model_type == "llava"  # Llava itself concatenates a list of layers
    width = model.config.vision_config.hidden_size
    assert model.model.multi_modal_projector.linear_1.in_features == 2 * width


def test_image_policy_pad_keeps_a_plain_llava(tiny):
    """pad = LLaVA-1.5's pad-to-square: a wide image keeps its aspect ratio inside a mean-coloured square."""
    from PIL import Image

    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full", image_policy="pad")
    _, processor = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "qwen2"))))
    assert type(processor.image_processor).__name__ == "LlavaImageProcessorPil"
    wide = Image.new("RGB", (IMAGE_SIZE * 2, IMAGE_SIZE), "white")
    pixels = processor.image_processor(wide, return_tensors="pt")["pixel_values"][0]
    assert pixels.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)
    # Top and bottom quarters are padding (the mean colour normalises to ~0), the middle is the white image.
    assert pixels[:, : IMAGE_SIZE // 8].abs().max() < 0.05
    assert pixels[:, IMAGE_SIZE // 2].min() > 0.9


def test_qlora_keeps_a_zoo_projector_in_full_precision(tiny, tmp_path):
    import bitsandbytes as bnb

    from vlmtune.config import PartPolicy, PeftConfig, PolicyConfig
    from vlmtune.train.policy import apply_policy, bnb_4bit_config

    cfg = ModelConfig(vision=_vision(tiny, "tiny_siglip"), llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                      projector=_projector("qformer"))
    save_checkpoint(*compose(cfg), tmp_path / "base", {"config": {}})
    peft = PeftConfig()
    model, _ = load_vlm(tmp_path / "base", quantization_config=bnb_4bit_config(peft))
    model = apply_policy(model, PolicyConfig(llm=PartPolicy(mode="qlora")), peft)
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized and all(".language_model." in n for n in quantized)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("multi_modal_projector" in n and "queries" in n for n in trainable)


def test_sft_and_evaluate_a_composed_zoo_model_from_the_command_line(cache, tmp_path):
    from conftest import FAST, vlmtune

    vlmtune("sft", f"run_dir={tmp_path / 'sft'}", "model/vision=tiny_clip", "model.vision.select_strategy=patches",
            "model/llm=tiny_qwen2", "model/projector=conv_downsampler", "logger=none", "data.max_test_samples=4",
            *FAST)
    assert (tmp_path / "sft" / "metrics.json").exists()
    out = vlmtune("evaluate", f"checkpoint={tmp_path / 'sft' / 'checkpoint'}", f"run_dir={tmp_path / 'eval'}",
                  "logger=none", "data.max_test_samples=4")
    assert "accuracy" in out
    card = (tmp_path / "sft" / "checkpoint" / "README.md").read_text()
    assert "projector: `conv_downsampler`" in card and "model type: `vlmtune`" in card and "import vlmtune" in card


def test_training_collator_mixes_multi_image_single_image_and_text_only(tiny, tmp_path):
    """LLaVA records with two images, one image and none go through TRL's collator into one training batch."""
    import json

    from PIL import Image
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.data.records import read_samples, to_dataset

    for color in ["red", "blue"]:
        Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), color).save(tmp_path / f"{color}.png")
    records = [
        {"id": "two", "image": ["red.png", "blue.png"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nColors?"}, {"from": "gpt", "value": "red"}]},
        {"id": "one", "image": "red.png",
         "conversations": [{"from": "human", "value": "<image>\nColor?"}, {"from": "gpt", "value": "red"}]},
        {"id": "none", "conversations": [{"from": "human", "value": "Say yes"}, {"from": "gpt", "value": "yes"}]},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    dataset = to_dataset(read_samples(tmp_path / "data.json"))
    cfg = ModelConfig(vision=_vision(tiny, "tiny_siglip"), llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                      projector=_projector("pixel_shuffle"))
    model, processor = compose(cfg)
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(list(dataset))
    assert batch["pixel_values"].shape[0] == 3
    image_tokens = (batch["input_ids"] == model.config.image_token_index).sum(dim=1)
    assert image_tokens.tolist() == [2 * model.config.image_seq_length, model.config.image_seq_length, 0]
    assert ((batch["labels"] != -100).sum(dim=1) > 0).all()  # every sample supervises its answer
    loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
