"""Fast in-process checks: QLoRA placement, batched generation, registries, data errors, config redaction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from vlmtune.config import LLMConfig, ModelConfig, PartPolicy, PeftConfig, PolicyConfig, VisionConfig
from vlmtune.data.errors import DataError
from vlmtune.data.records import read_samples
from vlmtune.errors import ConfigError
from vlmtune.eval.generate import generate_answers
from vlmtune.model.checkpoint import load_vlm, save_checkpoint
from vlmtune.model.compose import compose
from vlmtune.registry import Registry
from vlmtune.runs import redact
from vlmtune.train.policy import apply_policy, bnb_4bit_config


@pytest.fixture(scope="module")
def base_checkpoint(tiny, tmp_path_factory):
    cfg = ModelConfig(vision=VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full",
                                          feature_layer=-1), llm=LLMConfig(path=str(tiny / "llm" / "llama")))
    return save_checkpoint(*compose(cfg), tmp_path_factory.mktemp("base") / "ckpt", {"recipe": "test"})


def test_qlora_quantizes_only_the_llm(base_checkpoint):
    import bitsandbytes as bnb

    model, _ = load_vlm(base_checkpoint, quantization_config=bnb_4bit_config(PeftConfig()))
    model = apply_policy(model, PolicyConfig(llm=PartPolicy(mode="qlora")), PeftConfig())
    quantized = {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized and all(".language_model." in n for n in quantized)
    for name, module in model.named_modules():
        if any(part in name for part in ("vision_tower", "multi_modal_projector", "lm_head")):
            assert not isinstance(module, bnb.nn.Linear4bit), name
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any("multi_modal_projector" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)


def test_lora_target_outside_the_llm_is_refused(base_checkpoint):
    model, _ = load_vlm(base_checkpoint)
    with pytest.raises(ValueError, match="LLM only"):
        apply_policy(model, PolicyConfig(), PeftConfig(target=r".*\.(q_proj|k_proj|v_proj|out_proj)"))


def test_batched_generation_matches_one_at_a_time(base_checkpoint, shapes):
    model, processor = load_vlm(base_checkpoint)
    torch.manual_seed(0)
    with torch.no_grad():  # a random model answers with mostly one token; spread its logits to vary the answers
        model.lm_head.weight.mul_(50)
    records = read_samples(shapes / "test.json")
    one = generate_answers(model, processor, records, batch_size=1, max_new_tokens=6)
    eight = generate_answers(model, processor, records, batch_size=8, max_new_tokens=6)
    assert [r["prediction"] for r in one] == [r["prediction"] for r in eight]
    assert len({r["prediction"] for r in one}) > 1, "the check needs varied answers to mean anything"


def test_stop_strings_cut_predictions(base_checkpoint, shapes):
    model, processor = load_vlm(base_checkpoint)
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    records = read_samples(shapes / "test.json")[:4]
    full = generate_answers(model, processor, records, max_new_tokens=6)
    stops = [r["prediction"][1:2] for r in full if len(r["prediction"]) > 1]
    cut = generate_answers(model, processor, records, max_new_tokens=6, stop_strings=stops[:1])
    for a, b in zip(full, cut, strict=True):
        assert a["prediction"].startswith(b["prediction"])
        assert stops[0] not in b["prediction"]


def test_registry_lists_valid_keys():
    registry: Registry[int] = Registry("model.projector.name")
    registry.add("mlp2x_gelu", 1)
    with pytest.raises(ConfigError, match="model.projector.name='mlp' is not known; valid values: mlp2x_gelu"):
        registry.get("mlp")


def test_redact_hides_secret_looking_keys():
    config = {"logger": {"api_key": "abc", "project": "p"}, "hub_token": "t", "runs": [{"password": "x"}],
              "llm": {"pad_token": "<|endoftext|>"}}
    assert redact(config) == {"logger": {"api_key": "***", "project": "p"}, "hub_token": "***",
                              "runs": [{"password": "***"}], "llm": {"pad_token": "<|endoftext|>"}}


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "a", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                               {"from": "gpt", "value": "x"}]}, "does not exist"),
        ({"id": "b", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "x"}]},
         "1 <image> placeholder"),
        ({"id": "c", "conversations": [{"from": "human", "value": "q"}]}, "out of order"),
        ({"id": "d", "conversations": [{"from": "robot", "value": "q"}]}, "each turn needs"),
    ],
)
def test_bad_records_name_file_and_sample(tmp_path, record, message):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DataError, match=message) as error:
        read_samples(path)
    assert str(path) in str(error.value) and repr(record["id"]) in str(error.value)


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("[{")
    with pytest.raises(DataError, match="broken.json: not valid JSON"):
        read_samples(path)


def test_cli_help_is_fast_and_lists_recipes():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vlmtune.cli", "--help"], capture_output=True, text=True, check=True)
    for name in ["tiny", "synth", "demo", "pretrain", "sft", "evaluate", "quantize"]:
        assert name in out.stdout


def test_adapter_merged_on_the_fly_answers_like_the_unmerged_adapter(pipeline, shapes):
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    adapter = pipeline["sft"] / "checkpoint"
    merged, processor = load_vlm(adapter)
    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    base = AutoModelForImageTextToText.from_pretrained(base_path).eval()
    records = read_samples(shapes / "test.json")
    batch = processor(text=[processor.apply_chat_template(r["messages"], tokenize=False) for r in records[:4]],
                      images=[Image.open(r["images"][0]).convert("RGB") for r in records[:4]],
                      padding=True, return_tensors="pt")
    with torch.no_grad():
        base_logits = base(**batch).logits
        unmerged = PeftModel.from_pretrained(base, adapter).eval()
        merged_logits = merged(**batch).logits
        torch.testing.assert_close(merged_logits, unmerged(**batch).logits, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-4), "the adapter must change the model"
    assert [r["prediction"] for r in generate_answers(merged, processor, records)] == [
        r["prediction"] for r in generate_answers(unmerged, processor, records)]


def test_likelihood_is_the_training_loss_of_the_assistant_tokens(base_checkpoint, shapes):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.data.records import to_dataset
    from vlmtune.eval.likelihood import likelihood, sample_nll

    model, processor = load_vlm(base_checkpoint)
    samples = read_samples(shapes / "test.json")[:3]
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    for sample, example in zip(samples, to_dataset(samples), strict=True):
        batch = collator([example])
        with torch.no_grad():
            expected = model(**batch).loss.item()
        nll, tokens = sample_nll(model, processor, sample)
        assert tokens == int((batch["labels"] != -100).sum())
        assert abs(nll / tokens - expected) < 1e-4
    metrics = likelihood(model, processor, samples)
    assert metrics["tokens"] > 0 and abs(metrics["perplexity"] - math.exp(metrics["loss"])) < 1e-9


def test_config_choices_are_the_libraries_values_and_refuse_others():
    from omegaconf import OmegaConf
    from omegaconf.errors import ValidationError
    from transformers import SchedulerType

    from vlmtune.config import OptimConfig, Scheduler

    assert [s.value for s in Scheduler] == [s.value for s in SchedulerType]
    optim = OmegaConf.structured(OptimConfig)
    with pytest.raises(ValidationError, match=r"Invalid value 'bf17', expected one of \[auto, fp32, bf16, fp16\]"):
        optim.precision = "bf17"
    optim.precision = "bf16"
    typed = OmegaConf.to_object(optim)
    assert typed.precision == "bf16" and f"{typed.precision}" == "bf16"  # a choice is its own string


def test_lora_targets_live_in_conf_and_are_peft_configs_defaults():
    import yaml

    from vlmtune.config import PeftConfig

    conf = Path(__file__).resolve().parents[1] / "conf"
    targets = yaml.safe_load((conf / "lora_targets.yaml").read_text())["peft"]
    assert targets == {"target": PeftConfig.target, "vision_target": PeftConfig.vision_target}
    for entry in (conf / "peft").glob("*.yaml"):
        assert "/lora_targets" in yaml.safe_load(entry.read_text())["defaults"], entry.name
