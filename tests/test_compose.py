"""Composition from parts: real forward/backward, and a saved `llava` checkpoint that plain transformers loads."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import run_cli

from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
from vlmtune.model.checkpoint import PROVENANCE, save_checkpoint
from vlmtune.model.compose import compose
from vlmtune.tiny import IMAGE_SIZE, PATCH_SIZE

STRATEGY = {"siglip": "full", "clip": "default"}


def _cfg(tiny, vision: str, llm: str) -> ModelConfig:
    return ModelConfig(
        vision=VisionConfig(path=str(tiny / "vision" / vision), select_strategy=STRATEGY[vision], feature_layer=-1),
        llm=LLMConfig(path=str(tiny / "llm" / llm)),
    )


def _batch(processor, n: int = 2):
    from PIL import Image

    conversations = [
        [
            {"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), c)},
                                         {"type": "text", "text": "\nWhat color is the circle?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
        ]
        for c in ["red", "blue", "green", "purple"][:n]
    ]
    return processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                         padding=True)


@pytest.mark.parametrize("vision", ["siglip", "clip"])
@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_compose_trains_one_step(tiny, vision, llm):
    model, processor = compose(_cfg(tiny, vision, llm))
    batch = _batch(processor)
    image_token = model.config.image_token_index
    # The processor expands each placeholder to exactly the number of tokens the projector emits.
    assert (batch["input_ids"] == image_token).sum(dim=1).tolist() == [model.config.image_seq_length] * 2
    # One token per patch; CLIP's CLS token is dropped by the "default" strategy.
    assert model.config.image_seq_length == (IMAGE_SIZE // PATCH_SIZE) ** 2
    before = model.model.multi_modal_projector.linear_1.weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.model.multi_modal_projector.linear_1.weight)


def test_siglip_with_default_strategy_is_refused(tiny):
    cfg = _cfg(tiny, "siglip", "llama")
    cfg.vision.select_strategy = "default"
    with pytest.raises(ValueError, match="select_strategy=full"):
        compose(cfg)


PLAIN_TRANSFORMERS = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\\nWhat color is the circle?"}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
size = int(sys.argv[2])
inputs = processor(text=[text], images=[Image.new("RGB", (size, size), "red")], return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
    out = model.generate(**inputs, do_sample=False, max_new_tokens=6)
assert "vlmtune" not in sys.modules
print(json.dumps({"type": type(model).__name__, "logits": logits[0, -1].tolist(),
                  "generated": out[0].tolist()}))
"""


def test_llava_checkpoint_loads_in_plain_transformers(tiny, tmp_path):
    from PIL import Image

    model, processor = compose(_cfg(tiny, "clip", "qwen2"))
    model.eval()
    out_dir = save_checkpoint(model, processor, tmp_path / "ckpt", {"recipe": "test", "config": {}})
    assert json.loads((out_dir / "config.json").read_text())["model_type"] == "llava"
    assert (out_dir / PROVENANCE).exists() and (out_dir / "README.md").exists()
    assert list(out_dir.glob("*.safetensors"))

    script = tmp_path / "plain.py"
    script.write_text(PLAIN_TRANSFORMERS)
    output = run_cli(sys.executable, str(script), str(out_dir), str(IMAGE_SIZE), cwd=tmp_path)
    result = json.loads(next(line for line in output.splitlines() if line.startswith("{\"type\"")))
    assert result["type"] == "LlavaForConditionalGeneration"

    question = {"type": "text", "text": "\nWhat color is the circle?"}
    messages = [{"role": "user", "content": [{"type": "image"}, question]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "red")], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        generated = model.generate(**inputs, do_sample=False, max_new_tokens=6)[0].tolist()
    torch.testing.assert_close(torch.tensor(result["logits"]), logits, rtol=0, atol=1e-5)
    assert result["generated"] == generated


def test_pad_token_fix_per_llm_family(tiny):
    """A tokenizer that pads with its end-of-turn token (SmolLM2) gets the conf entry's pad token, or a new <pad>."""
    from transformers import AutoTokenizer

    from vlmtune.model.compose import _prepare_tokenizer
    from vlmtune.templates import TEMPLATES

    chatml = TEMPLATES.get("chatml")

    def smollm_like():
        tokenizer = AutoTokenizer.from_pretrained(tiny / "llm" / "llama")
        tokenizer.pad_token = "<|im_end|>"
        return tokenizer

    tokenizer = smollm_like()
    _prepare_tokenizer(tokenizer, "<|endoftext|>", chatml)
    assert tokenizer.pad_token == "<|endoftext|>"
    with pytest.raises(ValueError, match="also ends turns"):
        _prepare_tokenizer(smollm_like(), "<|im_end|>", chatml)
    with pytest.raises(ValueError, match="not a token of this tokenizer"):
        _prepare_tokenizer(smollm_like(), "<|finetune_right_pad_id|>", chatml)
    tokenizer = smollm_like()
    _prepare_tokenizer(tokenizer, None, chatml)
    assert tokenizer.pad_token == "<pad>"


def _hydra_cfg(recipe: str, *overrides: str):
    from conftest import REPO
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from vlmtune.hydra_setup import setup

    setup()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(hydra_compose(recipe, overrides=["run_dir=x", *overrides]))


def test_template_group_mirrors_the_registry_and_every_llm_names_a_known_format():
    from conftest import REPO

    from vlmtune.templates import TEMPLATES

    assert {p.stem for p in (REPO / "conf" / "template").glob("*.yaml")} == set(TEMPLATES) | {"auto"}
    for llm in (REPO / "conf" / "model" / "llm").glob("*.yaml"):
        assert llm.read_text().count("\ntemplate: ") == 1, llm
        assert llm.read_text().split("\ntemplate: ")[1].strip() in TEMPLATES, llm


@pytest.mark.parametrize(
    ("overrides", "template"),
    [
        ((), "chatml"),  # the tiny LLM speaks chatml
        (("model/llm=llama3_2_1b",), "llama3"),  # auto: the LLM's own format
        (("model/llm=vicuna_7b",), "vicuna_v1"),
        (("model/llm=llama3_2_1b", "template=vicuna_v1"), "vicuna_v1"),  # the group overrides the LLM's format
        (("model/llm=gemma3_1b", "template=native"), "native"),
    ],
)
def test_template_choice(overrides, template):
    from vlmtune.model.compose import template_key

    assert template_key(_hydra_cfg("sft", *overrides).model) == template


def test_template_group_overrides_an_hf_vlm_entry():
    assert _hydra_cfg("sft", "model=llava_1_5_7b").model.template == "llava"
    assert _hydra_cfg("sft", "model=llava_1_5_7b", "template=llava_mistral").model.template == "llava_mistral"


def test_the_chosen_template_is_the_one_the_model_trains_with(cache):
    from conftest import vlmtune

    assert "template llama3" in vlmtune("describe", "template=llama3")
    shown = vlmtune("data", "inspect", "template=llama3", "samples=1")
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n[[" in shown and "<|im_start|>" not in shown
