"""What an `sft` run puts in W&B, read back from the offline run files: run facts in the summary, the probe
generations table every eval_steps, and the final checkpoint as an artifact when logger.log_checkpoint is on."""

from __future__ import annotations

from conftest import FAST, vlmtune
from wandb_records import records, summary, tables

from vlmtune.tracking import git_state


def test_sft_logs_run_facts_probe_generations_and_the_checkpoint_artifact(pipeline, tmp_path):
    out = tmp_path / "sft"
    vlmtune("sft", f"run_dir={out}", f"init_from={pipeline['pretrain'] / 'checkpoint'}", "eval_steps=2",
            "eval_samples=5", "logger.log_samples=3", "logger.log_checkpoint=true", "evaluate_at_end=false", *FAST)
    state = summary(out)
    facts = state["summary"]
    assert facts["git/sha"] == git_state()["sha"] and isinstance(facts["git/dirty"], bool)
    assert facts["system/version/torch"] and facts["system/version/transformers"]
    assert facts["system/device"] == "cpu" and facts["system/num_processes"] == 1 and facts["system/cpu"]
    assert len(facts["data/train/fingerprint"]) == 16
    assert facts["params/total/trainable"] == facts["params/llm/trainable"] + facts["params/projector/trainable"] > 0
    assert facts["params/vision/trainable"] == 0
    assert state["config"]["vlmtune"]["git/sha"] == facts["git/sha"]  # also in the config, for filtering runs
    # The same data gives the same fingerprint (the pipeline's sft run trained on it too).
    assert summary(pipeline["sft"])["summary"]["data/train/fingerprint"] == facts["data/train/fingerprint"]

    parameters = tables(out, "model/parameters")
    assert len(parameters) == 1
    assert parameters[0]["columns"] == ["part", "parameters", "trainable", "mode", "lr", "lora"]
    assert {row[0]: row[5] for row in parameters[0]["data"]}["llm"] == "r=16,alpha=32,dropout=0"

    generations = tables(out, "eval/generations")  # FAST has max_steps=4: probes at steps 2 and 4
    assert [t["data"][0][0] for t in generations] == [2, 4]
    for table in generations:
        assert table["columns"] == ["step", "id", "image", "question", "answer", "prediction", "correct"]
        assert len(table["data"]) == 3  # logger.log_samples
        assert [row[1] for row in table["data"]] == [row[1] for row in generations[0]["data"]], "fixed probes"
        assert all(row[3].endswith("?") and row[4] for row in table["data"])
    history = [r["history"]["item"] for r in records(out) if r["type"] == "history"]
    assert [h["train/global_step"] for h in history if "eval/generations._type" in h] == [2, 4]

    artifacts = [r["artifact"] for r in records(out) if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert len(artifacts) == 1
    files = {c["path"]: c for c in artifacts[0]["manifest"]["contents"]}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(files)
    assert files["adapter_model.safetensors"]["local_path"] == str(out / "checkpoint" / "adapter_model.safetensors")
    assert "final" in artifacts[0]["aliases"]


def test_no_checkpoint_artifact_without_the_flag(pipeline):
    artifacts = [r for r in records(pipeline["sft"]) if r["type"] == "artifact" and r["artifact"]["type"] == "model"]
    assert artifacts == []
