"""Existing HF VLMs as the starting point (`model=hf_vlm`, conf entries tiny_hf_*): per architecture, sft with LoRA,
the exact loss mask, evaluation, and reloading with plain transformers; plus pretrain, quantize and the guards."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import FAST, vlmtune

ARCHS = ["llava", "idefics3", "qwen2_vl"]
# What the loss must see for the answer "red": the answer and the end-of-turn token, nothing of the prompt.
SUPERVISED = {"llava": " red</s>", "idefics3": " red<end_of_utterance>", "qwen2_vl": "red<|im_end|>"}
LLM = {"llava": "model.language_model", "idefics3": "model.text_model", "qwen2_vl": "model.language_model"}
PROJECTOR = {"llava": "model.multi_modal_projector", "idefics3": "model.connector", "qwen2_vl": "model.visual.merger"}
# The prompt each architecture's real checkpoints expect (their own chat formats), for one image + question.
PROMPTS = {
    "llava": "<s>USER: <image>\nWhat color is the circle? ASSISTANT:",
    "idefics3": "<|im_start|>User:<image>\nWhat color is the circle?<end_of_utterance>\nAssistant:",
    "qwen2_vl": "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                "<|vision_start|><|image_pad|><|vision_end|>\nWhat color is the circle?<|im_end|>\n"
                "<|im_start|>assistant\n",
}


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory) -> dict[str, Path]:
    """`vlmtune sft model=tiny_hf_<arch>` (LoRA, a few steps) per architecture, then `vlmtune evaluate` on it."""
    root = tmp_path_factory.mktemp("hf-vlm-runs")
    out = {}
    for arch in ARCHS:
        run = root / arch
        log = vlmtune("sft", f"model=tiny_hf_{arch}", f"run_dir={run}", "evaluate_at_end=false", "logger=none", *FAST)
        (run / "stdout.log").write_text(log)
        vlmtune("evaluate", f"checkpoint={run / 'checkpoint'}", f"run_dir={run / 'evaluate'}", "logger=none",
                "eval.batch_size=4")
        out[arch] = run
    return out


def _processor(checkpoint: Path):
    from transformers import AutoProcessor

    from vlmtune.compat import allow_missing_video_processor

    allow_missing_video_processor()  # Qwen2-VL's processor on a machine without torchvision
    return AutoProcessor.from_pretrained(checkpoint)


@pytest.mark.parametrize("arch", ARCHS)
def test_sft_trains_lora_on_the_llm_with_a_finite_nonzero_loss(runs, arch):
    from safetensors.torch import load_file

    run = runs[arch]
    losses = [float(x) for x in re.findall(r"'loss': '([0-9.eE+-]+)'", (run / "stdout.log").read_text())]
    assert len(losses) == 4 and all(math.isfinite(x) and x > 0.1 for x in losses), losses
    checkpoint = run / "checkpoint"
    adapter = json.loads((checkpoint / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"].endswith(f"vlm/{arch}")
    names = list(load_file(checkpoint / "adapter_model.safetensors"))
    lora = [n for n in names if "lora_" in n]
    assert lora and all(n.startswith(f"base_model.model.{LLM[arch]}.") for n in lora), "LoRA on the LLM only"
    assert any(n.startswith(f"base_model.model.{PROJECTOR[arch]}.") for n in names), "projector saved in the adapter"


@pytest.mark.parametrize("arch", ARCHS)
def test_supervised_tokens_are_exactly_the_answer_and_end_of_turn(runs, shapes, arch):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.data.records import read_samples, to_dataset

    processor = _processor(runs[arch] / "checkpoint")  # the template training used is saved with the checkpoint
    records = read_samples(shapes / "train.json", limit=6)
    dataset = to_dataset(records)
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)([dataset[i] for i in range(6)])
    tokenizer = processor.tokenizer
    for record, ids, labels in zip(records, batch["input_ids"], batch["labels"], strict=True):
        answer = record["messages"][-1]["content"][0]["text"]
        expected = SUPERVISED[arch].replace("red", answer)
        supervised = ids[labels != -100].tolist()
        assert supervised == tokenizer(expected, add_special_tokens=False)["input_ids"], (
            tokenizer.decode(supervised), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_template_renders_the_checkpoints_own_prompt_format(runs, arch):
    processor = _processor(runs[arch] / "checkpoint")
    question = {"type": "text", "text": "\nWhat color is the circle?"}
    messages = [{"role": "user", "content": [{"type": "image"}, question]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == PROMPTS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_evaluate_scores_the_checkpoint_with_left_padded_batches(runs, shapes, arch):
    from vlmtune.data.records import read_samples
    from vlmtune.eval.generate import generate_answers
    from vlmtune.model.checkpoint import load_vlm

    out = runs[arch] / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n"] == len(rows) == len(json.loads((shapes / "test.json").read_text()))
    assert metrics["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    # Each answer of a left-padded batch of 4 is the answer the prompt gets alone (no padding at all).
    model, processor = load_vlm(runs[arch] / "checkpoint")
    records = read_samples(shapes / "test.json", limit=4)
    alone = [generate_answers(model, processor, [record], batch_size=1)[0]["prediction"] for record in records]
    prompts = [processor.apply_chat_template(r["messages"][:-1], add_generation_prompt=True) for r in records]
    lengths = {len(processor.tokenizer(prompt)["input_ids"]) for prompt in prompts}
    assert len(lengths) > 1, "the prompts must differ in length, or nothing was padded"
    assert alone == [r["prediction"] for r in rows[:4]]
    suffix = {"llava": " ASSISTANT:", "idefics3": "<end_of_utterance>\nAssistant:",
              "qwen2_vl": "<|im_end|>\n<|im_start|>assistant\n"}[arch]
    assert all(r["prompt"].endswith(suffix) for r in rows)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_checkpoint_reloads_with_plain_transformers(runs, shapes, arch):
    from PIL import Image
    from transformers import AutoModelForImageTextToText

    from vlmtune.model.checkpoint import load_vlm

    checkpoint = runs[arch] / "checkpoint"
    plain = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()  # base + adapter, no vlmtune code
    merged, processor = load_vlm(checkpoint)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat color?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    image = Image.open(sorted((shapes / "images").glob("*.png"))[0]).convert("RGB")
    inputs = processor(text=[text], images=[image], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        torch.testing.assert_close(plain(**inputs).logits, merged(**inputs).logits, rtol=1e-4, atol=1e-4)


def test_quantize_keeps_vision_and_merger_of_qwen2_vl_in_full_precision(runs):
    out = runs["qwen2_vl"].parent / "quantize"
    vlmtune("quantize", f"checkpoint={runs['qwen2_vl'] / 'checkpoint'}", f"run_dir={out}", "logger=none",
            "variants=[nf4]", "eval.batch_size=4", "latency_samples=1")
    table = {row["variant"]: row for row in json.loads((out / "quantize.json").read_text())}
    assert set(table) == {"fp32", "nf4"} and table["nf4"]["memory_mb"] < table["fp32"]["memory_mb"]
    config = json.loads((out / "nf4" / "config.json").read_text())
    assert config["quantization_config"]["llm_int8_skip_modules"] == ["model.visual", "lm_head"]


def test_pretrain_trains_only_the_projector_of_an_hf_vlm(cache, tiny, tmp_path):
    from safetensors.torch import load_file

    vlmtune("pretrain", "model=tiny_hf_idefics3", f"run_dir={tmp_path}", "logger=none", *FAST)
    before, after = load_file(tiny / "vlm" / "idefics3" / "model.safetensors"), \
        load_file(tmp_path / "checkpoint" / "model.safetensors")
    changed = {name.split(".")[1] for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"connector"}


def test_a_template_without_generation_marks_fails_before_training(cache, tmp_path):
    with pytest.raises(AssertionError, match="generation"):
        vlmtune("sft", "model=tiny_hf_qwen2_vl", "model.template=native", f"run_dir={tmp_path}", "logger=none", *FAST)


def test_parts_table_and_bitsandbytes_skip_lists():
    from vlmtune.model.parts import part_of, parts_of
    from vlmtune.quantize import bnb_config

    qwen = parts_of("qwen2_vl")
    assert part_of("base_model.model.model.visual.merger.mlp.0.weight", qwen) == "projector"
    assert part_of("model.visual.blocks.0.attn.qkv.weight", qwen) == "vision"
    assert part_of("model.text_model.layers.0.mlp.up_proj.weight", parts_of("idefics3")) == "llm"
    assert bnb_config(8, model_type="idefics3").llm_int8_skip_modules == [
        "model.vision_model", "model.connector", "lm_head"]
    assert bnb_config(4).llm_int8_skip_modules == ["model.vision_tower", "model.multi_modal_projector", "lm_head"]


def test_all_masked_batches_are_refused():
    from vlmtune.train.supervision import RequireSupervised

    def collate(examples):
        return {"labels": torch.tensor([[1, 2], [-100, -100]])}

    with pytest.raises(ValueError, match=r"\['b'\] have no supervised token"):
        RequireSupervised(collate)([{"id": "a"}, {"id": "b"}])
