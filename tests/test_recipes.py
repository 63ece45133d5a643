"""The recipes end to end through the `vlmtune` command line, in fresh processes, on tiny parts (offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import FAST, vlmtune
from safetensors.torch import load_file


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for file in directory.glob("*.safetensors"):
        tensors |= load_file(file)
    return tensors


def test_pretrain_changes_only_the_projector(pipeline, tiny):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, SiglipVisionModel

    ckpt = pipeline["pretrain"] / "checkpoint"
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llava"
    model = AutoModelForImageTextToText.from_pretrained(ckpt)
    vision = SiglipVisionModel.from_pretrained(tiny / "vision" / "siglip")
    for name, value in vision.state_dict().items():
        torch.testing.assert_close(model.model.vision_tower.state_dict()[name], value, rtol=0, atol=0)
    llm = AutoModelForCausalLM.from_pretrained(tiny / "llm" / "llama")
    for name, value in llm.model.state_dict().items():
        torch.testing.assert_close(model.model.language_model.state_dict()[name], value, rtol=0, atol=0)
    provenance = json.loads((ckpt / "vlmtune.json").read_text())
    assert provenance["recipe"] == "pretrain" and "transformers" in provenance["versions"]


def test_sft_lora_writes_a_self_contained_adapter_and_metrics(pipeline, shapes):
    ckpt = pipeline["sft"] / "checkpoint"
    adapter = json.loads((ckpt / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(pipeline["pretrain"] / "checkpoint")
    names = list(_weights(ckpt))
    assert any("multi_modal_projector" in n for n in names), "the projector must be saved with the adapter"
    lora = [n for n in names if "lora_" in n]
    assert lora and all("language_model" in n for n in lora), "LoRA must sit on the LLM only"

    metrics = json.loads((pipeline["sft"] / "metrics.json").read_text())
    rows = [json.loads(line) for line in (pipeline["sft"] / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n"] == len(rows) == len(json.loads((shapes / "test.json").read_text()))
    assert metrics["accuracy"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in rows)
    assert list((pipeline["sft"] / "wandb").glob("offline-run-*")), "W&B runs offline inside the run directory"


def test_evaluate_scores_an_adapter_directory(pipeline):
    out = pipeline["runs"] / "evaluate"
    vlmtune("evaluate", f"run_dir={out}", f"checkpoint={pipeline['sft'] / 'checkpoint'}", "logger=none")
    assert json.loads((out / "metrics.json").read_text()) == json.loads((pipeline["sft"] / "metrics.json").read_text())
    assert json.loads((out / "results.json").read_text())["quantization"] is None


def _losses(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"'loss': '([-\d.e]+)'", output)]


def test_sft_full_finetune_trains_every_llm_weight_and_leaves_the_vision_tower(pipeline):
    init = pipeline["pretrain"] / "checkpoint"
    out = pipeline["runs"] / "sft-none"
    output = vlmtune("sft", f"run_dir={out}", f"init_from={init}", "peft=none", "evaluate_at_end=false",
                     "logger=none", *FAST, "optim.max_steps=8")
    losses = _losses(output)
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert not (out / "checkpoint" / "adapter_config.json").exists()
    before, after = _weights(init), _weights(out / "checkpoint")
    assert before.keys() == after.keys()
    llm = [k for k in before if "language_model" in k and "norm" not in k]
    assert llm and all(not torch.equal(before[k], after[k]) for k in llm), "every LLM matrix trains"
    assert all(torch.equal(before[k], after[k]) for k in before if "vision_tower" in k), "the tower stays frozen"


def test_sft_qlora_trains_an_adapter_on_a_4bit_llm(pipeline):
    out = pipeline["runs"] / "sft-qlora"
    output = vlmtune("sft", f"run_dir={out}", f"init_from={pipeline['pretrain'] / 'checkpoint'}", "peft=qlora",
                     "evaluate_at_end=false", "logger=none", *FAST, "optim.max_steps=8")
    losses = _losses(output)
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    # What the run trained on, as recorded with the adapter: the LLM's linear layers stored in 4-bit nf4.
    quantization = json.loads((out / "checkpoint" / "vlmtune.json").read_text())["quantization"]
    assert quantization["bits"] == 4 and quantization["quant_type"] == "nf4"
    assert "model.vision_tower" in quantization["skip_modules"]
    assert "linear layers in 4-bit: 28" in output  # 4 layers x (q, k, v, o, gate, up, down)
    adapter = load_file(out / "checkpoint" / "adapter_model.safetensors")
    assert any(adapter[n].abs().max() > 0 for n in adapter if ".lora_B." in n)


@pytest.fixture(scope="module")
def quantized(pipeline) -> Path:
    """The quantize recipe's run directory for the LoRA sft checkpoint (int8/ and nf4/ saved)."""
    out = pipeline["runs"] / "quantize"
    vlmtune("quantize", f"run_dir={out}", f"checkpoint={pipeline['sft'] / 'checkpoint'}", "logger=none",
            "eval.batch_size=4", "latency_samples=1")
    return out


def test_quantize_table(quantized):
    from vlmtune.quantize import checkpoint_bytes

    out = quantized
    table = {row["variant"]: row for row in json.loads((out / "quantize.json").read_text())}
    assert set(table) == {"fp32", "int8", "nf4"}
    assert table["nf4"]["memory_mb"] < table["int8"]["memory_mb"] < table["fp32"]["memory_mb"]
    # Each variant's own size on disk: the directory it was saved to and reloaded from (fp32: the merged adapter).
    for variant, directory in [("fp32", "base"), ("int8", "int8"), ("nf4", "nf4")]:
        assert table[variant]["checkpoint_mb"] == checkpoint_bytes(out / directory) / 2**20
    assert table["nf4"]["checkpoint_mb"] < table["int8"]["checkpoint_mb"] < table["fp32"]["checkpoint_mb"]
    for variant in ["int8", "nf4"]:
        config = json.loads((out / variant / "config.json").read_text())
        assert config["quantization_config"]["llm_int8_skip_modules"] == [
            "model.vision_tower", "model.multi_modal_projector", "lm_head"]


def test_evaluate_scores_saved_quantized_checkpoints_as_the_quantize_recipe_did(quantized, pipeline):
    # A saved int8 / nf4 checkpoint holds the quantized weights with their scales, so reloading it must reproduce the
    # in-memory quantized model exactly: same answers with the same batch size, hence the same accuracy.
    table = {row["variant"]: row for row in json.loads((quantized / "quantize.json").read_text())}
    for variant, bits in [("int8", 8), ("nf4", 4)]:
        out = pipeline["runs"] / f"evaluate-{variant}"
        vlmtune("evaluate", f"run_dir={out}", f"checkpoint={quantized / variant}", "logger=none", "eval.batch_size=4")
        results = json.loads((out / "results.json").read_text())
        assert results["quantization"]["bits"] == bits and results["quantization"]["quant_type"] == variant
        assert results["metrics"]["accuracy"] == table[variant]["accuracy"]
        evaluated = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        in_memory = [json.loads(line) for line in (quantized / f"predictions_{variant}.jsonl").read_text().splitlines()]
        assert [(r["id"], r["prediction"]) for r in evaluated] == [(r["id"], r["prediction"]) for r in in_memory]


def test_sweep_runs_each_job_in_its_own_directory_and_wandb_group(pipeline):
    runs = pipeline["runs"] / "sweeps"
    output = vlmtune("sft", "-m", "optim.lr=1e-4,3e-4", "peft.r=4", f"paths.runs={runs}",
                     f"init_from={pipeline['pretrain'] / 'checkpoint'}", "evaluate_at_end=false", *FAST)
    sweep_dirs = list(runs.glob("sft-sweep/*"))
    assert len(sweep_dirs) == 1, output
    jobs = sorted(p for p in sweep_dirs[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs = set()
    for job in jobs:
        assert (job / "checkpoint" / "adapter_config.json").exists()
        config = (job / "config.yaml").read_text()
        lrs.add(next(line.split(":")[1].strip() for line in config.splitlines() if line.strip().startswith("lr:")))
        wandb_runs = list((job / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1
        # The run's records (group included) are in its .wandb file.
        assert sweep_dirs[0].name.encode() in next(wandb_runs[0].glob("*.wandb")).read_bytes()
    assert lrs == {"0.0001", "0.0003"}


def test_sft_without_init_from_composes_and_saves_its_base(pipeline):
    out = pipeline["runs"] / "sft-composed"
    vlmtune("sft", f"run_dir={out}", "model/llm=tiny_qwen2", "model/vision=tiny_clip", "evaluate_at_end=false",
            "logger=none", *FAST)
    base = json.loads((out / "base" / "config.json").read_text())
    assert base["model_type"] == "llava" and base["vision_config"]["model_type"] == "clip_vision_model"
    adapter = json.loads((out / "checkpoint" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(out / "base")


def test_a_misspelt_config_key_fails_before_any_work(pipeline):
    with pytest.raises(AssertionError, match="optim.lrr"):
        vlmtune("sft", f"run_dir={pipeline['runs'] / 'typo'}", "optim.lrr=1e-3", "logger=none")


def test_export_rewrites_a_full_checkpoint_as_it_is(pipeline):
    """A full checkpoint is exported unchanged (the adapter case: tests/test_infer.py)."""
    source, out = pipeline["pretrain"] / "checkpoint", pipeline["runs"] / "export-full"
    vlmtune("export", f"run_dir={out}", f"checkpoint={source}")
    assert json.loads((out / "checkpoint" / "vlmtune.json").read_text())["exported_from"] == str(source)
    before, after = _weights(source), _weights(out / "checkpoint")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_describe_prints_parts_tokens_and_trainable_table_and_writes_nothing(cache, tmp_path):
    output = vlmtune("describe", "model/vision=tiny_clip", "peft=lora", cwd=tmp_path)
    assert "clip" in output and "9 image tokens per image" in output
    table = {line.split()[0]: line.split()[1:] for line in output.splitlines() if line.split()[:1] in (
        ["vision"], ["projector"], ["llm"], ["total"])}
    assert table["vision"][1:3] == ["0", "frozen"], "the vision tower is frozen under LoRA"
    assert table["projector"][2] == "full" and table["llm"][2] == "lora"
    assert table["llm"][1] != "0" and table["projector"][1] != "0"
    assert list(tmp_path.iterdir()) == []


def test_in_training_evaluation_is_logged_against_the_step(pipeline):
    out = pipeline["runs"] / "sft-probe"
    output = vlmtune("sft", f"run_dir={out}", f"init_from={pipeline['pretrain'] / 'checkpoint'}", "eval_steps=2",
                     "eval_samples=5", "evaluate_at_end=false", *FAST)
    assert "in-training evaluation at step 2" in output and "in-training evaluation at step 4" in output
    record = next((out / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
    assert b"eval/accuracy" in record and b"train/global_step" in record
