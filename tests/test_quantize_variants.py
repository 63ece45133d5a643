"""Every quantization backend available here on the tests' sft adapter: saved, reloaded, measured, and answering
through evaluate, chat, predict and serve as the quantize recipe did; a missing backend is a clear error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli, vlmtune

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

TORCHAO = REPO / ".extras" / "torchao"  # installed beside the venv by `make install` (see the Makefile)
VARIANTS = ["int8", "nf4", "fp4", "torchao_int8", "torchao_int8_dynamic", "quanto_int8", "quanto_int4", "awq_int4"]


@pytest.fixture(scope="module")
def torchao_env() -> dict[str, str]:
    if not (TORCHAO / "torchao").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"torchao is not installed in {TORCHAO}: `make install` puts it there")
        pytest.skip(f"torchao is not installed in {TORCHAO} (make install)")  # CI fails above instead
    return {"PYTHONPATH": str(TORCHAO)}


@pytest.fixture(scope="module")
def variants_run(pipeline, torchao_env) -> Path:
    out = pipeline["runs"] / "quantize-variants"
    vlmtune("quantize", f"run_dir={out}", f"checkpoint={pipeline['sft'] / 'checkpoint'}", "logger=none",
            f"variants=[{','.join(VARIANTS)}]", "group_size=32", "calibration_samples=4", "latency_samples=2",
            "eval.batch_size=4", env=torchao_env)
    return out


def test_report_measures_every_variant(variants_run, shapes):
    table = json.loads((variants_run / "quantize.json").read_text())
    assert [row["variant"] for row in table] == ["fp32", *VARIANTS]
    tests = len(json.loads((shapes / "test.json").read_text()))
    for row in table:
        assert row["answers"] == tests and row["answers_batch1"] == 2
        for key in ["checkpoint_mb", "load_s", "memory_mb", "latency_ms_batch1", "tokens_per_s_batch1",
                    "latency_ms_batched", "tokens_per_s_batched"]:
            assert row[key] > 0, (row["variant"], key)
        assert row["accuracy_delta"] == pytest.approx(row["accuracy"] - table[0]["accuracy"])
        rows = (variants_run / f"predictions_{row['variant']}.jsonl").read_text().splitlines()
        assert row["accuracy"] == pytest.approx(sum(json.loads(r)["score"] for r in rows) / tests)
    by_name = {row["variant"]: row for row in table}
    for four_bit in ["nf4", "quanto_int4", "awq_int4"]:  # 4-bit LLM weights take less than 8-bit ones
        assert by_name[four_bit]["checkpoint_mb"] < by_name["int8"]["checkpoint_mb"] < by_name["fp32"]["checkpoint_mb"]
    markdown = (variants_run / "quantize.md").read_text()
    assert all(f"| {name} |" in markdown for name in VARIANTS)
    config = json.loads((variants_run / "awq_int4" / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "auto-round" and config["bits"] == 4


def test_every_variant_answers_through_evaluate_chat_predict_and_serve(variants_run, shapes, torchao_env):
    out = run_cli(sys.executable, str(REPO / "tests" / "variant_paths.py"), str(variants_run),
                  str(shapes / "test.json"), env=torchao_env)
    results = json.loads(next(line for line in reversed(out.splitlines()) if line.startswith("{")))  # stdout's
    assert results == {name: {"evaluate": True, "predict": True, "chat": True, "serve": True} for name in VARIANTS}


def test_a_missing_backend_names_its_extra(pipeline):
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", "quantize", f"checkpoint={pipeline['sft']}",
                           f"run_dir={pipeline['runs'] / 'quantize-missing'}", "variants=[torchao_int8]"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 1
    assert ("error: quantize variant 'torchao_int8' (torchao) needs the torchao package, which is not installed: "
            "pip install -e \".[torchao]\"") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_loading_a_variant_without_its_backend_names_the_extra(variants_run):
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", "chat", f"checkpoint={variants_run / 'torchao_int8'}",
                           "question=Hello", f"run_dir={variants_run / 'chat-missing'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (f"error: the quantized checkpoint {variants_run / 'torchao_int8'} needs the torchao package, which is "
            "not installed") in proc.stderr


def test_calibration_samples_of_different_lengths_share_one_padded_length(pipeline, shapes):
    """auto-round stacks the cached block inputs of every calibration sample: they must have one length, with the
    padding masked (a demo checkpoint's first calibration samples differ in length)."""
    from transformers import AutoProcessor

    from vlmtune.data.records import read_samples
    from vlmtune.quant.variants import calibration_batches

    processor = AutoProcessor.from_pretrained(pipeline["pretrain"] / "checkpoint")
    samples = read_samples(shapes / "train.json", limit=16)
    alone = [int(calibration_batches(processor, [sample])[0]["attention_mask"].sum()) for sample in samples]
    assert len(set(alone)) > 1, "the samples must differ in length"
    batches = calibration_batches(processor, samples)
    assert {batch["input_ids"].shape[1] for batch in batches} == {max(alone) + 1}  # each with padding
    assert [int(batch["attention_mask"].sum()) for batch in batches] == alone
