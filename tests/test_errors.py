"""Bad input, run through the command line as a user would: every case exits non-zero and prints one `error:` line
that names the culprit (file and line, sample, config key, checkpoint), with no traceback. VLMTUNE_DEBUG=1 shows the
traceback; a bug (an unexpected exception) keeps its traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import REPO

COMMON = ["logger=none", "evaluate_at_end=false", "optim.max_steps=2", "optim.batch_size=4"]


def _sample(i: int, image: str = "red.png", answer: str = "red", question: str = "<image>\nWhat color?") -> dict:
    return {"id": f"s{i}", "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _json(path: Path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture(scope="module")
def bad(pipeline, tmp_path_factory) -> dict[str, str]:
    """A folder of broken inputs, one per case (paths as strings)."""
    from datasets import Dataset
    from PIL import Image

    root = tmp_path_factory.mktemp("bad")
    Image.new("RGB", (32, 32), "red").save(root / "red.png")
    png = (root / "red.png").read_bytes()
    (root / "corrupt.png").write_bytes(b"not an image at all" * 10)
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    paths = {name: _json(root / f"{name}.json", [_sample(0), _sample(1, image)]) for name, image in [
        ("missing_image", "nowhere.png"), ("corrupt_image", "corrupt.png"), ("truncated_image", "truncated.png"),
        ("zero_byte_image", "empty.png"), ("image_is_a_directory", "folder.png")]}
    paths["object_not_list"] = _json(root / "object.json", {"id": "x", "conversations": []})
    paths["placeholders"] = _json(root / "placeholders.json", [_sample(0, question="<image><image>\nWhat?")])
    paths["empty_answer"] = _json(root / "empty_answer.json", [_sample(0), _sample(1, answer=" ")])
    paths["role_order"] = _json(root / "roles.json", [{"id": "r", "conversations": [
        {"from": "gpt", "value": "red"}, {"from": "human", "value": "What?"}]}])
    (root / "latin1.json").write_bytes(json.dumps([_sample(0, answer="rouge")]).replace("rouge", "r\xf6t").encode(
        "latin-1"))
    paths["not_utf8"] = str(root / "latin1.json")
    (root / "lines.jsonl").write_text(json.dumps(_sample(0)) + "\n" + '{"id": "s1", "image": \n')
    paths["malformed_line"] = str(root / "lines.jsonl")
    Dataset.from_dict({"question": ["What?"], "answer": ["red"]}).to_parquet(str(root / "columns.parquet"))
    paths["parquet_columns"] = str(root / "columns.parquet")
    paths["same_pair"] = _json(root / "pairs.json", [{"id": "p", "image": "red.png", "prompt": "<image>\nColour?",
                                                      "chosen": "red", "rejected": "red"}])

    # Checkpoints: no config.json; truncated weights; an adapter whose base moved; a quantized full checkpoint.
    (root / "not_a_checkpoint").mkdir()
    (root / "not_a_checkpoint" / "notes.txt").write_text("hello")
    paths["not_a_checkpoint"] = str(root / "not_a_checkpoint")
    truncated = root / "truncated_checkpoint"
    shutil.copytree(pipeline["pretrain"] / "checkpoint", truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    paths["truncated_checkpoint"] = str(truncated)
    moved = root / "moved_adapter"
    shutil.copytree(pipeline["sft"] / "checkpoint", moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(root / "the_base_that_moved")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    paths["moved_adapter"] = str(moved)
    paths["quantized"] = str(_quantized(pipeline["pretrain"] / "checkpoint", root / "nf4"))

    # Evaluation tasks: a missing column; a missing image.
    Dataset.from_dict({"question_id": [1], "question": ["What?"], "image": [str(root / "red.png")]}).to_parquet(
        str(root / "task_columns.parquet"))
    paths["task_columns"] = str(root / "task_columns.parquet")
    (root / "task_image.jsonl").write_text(json.dumps({"question_id": 1, "question": "What?", "image": "gone.png",
                                                       "answers": [{"answer": "red"}] * 10}) + "\n")
    paths["task_image"] = str(root / "task_image.jsonl")
    paths["pretrain"] = str(pipeline["pretrain"] / "checkpoint")
    paths["sft"] = str(pipeline["sft"] / "checkpoint")
    paths["root"] = str(root)
    return paths


def _quantized(source: Path, out: Path) -> Path:
    from vlmtune.model.checkpoint import load_vlm, save_checkpoint
    from vlmtune.quantize import bnb_config

    save_checkpoint(*load_vlm(source, quantization_config=bnb_config(4)), out, {"recipe": "test"})
    return out


def _sft(*args: str) -> list[str]:
    return ["sft", *COMMON, *args]


# name: (command, what the error line must name); `{key}` is filled from the `bad` fixture.
CASES = {
    # data
    "missing_image": (_sft("data.train={missing_image}", "init_from={pretrain}"), "nowhere.png"),
    "corrupt_image": (_sft("data.train={corrupt_image}", "init_from={pretrain}"), "corrupt.png"),
    "truncated_image": (_sft("data.train={truncated_image}", "init_from={pretrain}", "data.verify_images=full"),
                        "truncated.png"),
    "zero_byte_image": (_sft("data.train={zero_byte_image}", "init_from={pretrain}"), "empty.png"),
    "image_is_a_directory": (_sft("data.train={image_is_a_directory}", "init_from={pretrain}"), "folder.png"),
    "not_utf8": (_sft("data.train={not_utf8}", "init_from={pretrain}"), "not UTF-8"),
    "malformed_line": (_sft("data.train={malformed_line}", "init_from={pretrain}"), "lines.jsonl:2"),
    "object_not_list": (_sft("data.train={object_not_list}", "init_from={pretrain}"), "object.json"),
    "parquet_columns": (_sft("data.train={parquet_columns}", "init_from={pretrain}"), "columns.parquet"),
    "placeholders": (_sft("data.train={placeholders}", "init_from={pretrain}"), "placeholders.json"),
    "empty_answer": (_sft("data.train={empty_answer}", "init_from={pretrain}"), "'s1'"),
    "role_order": (_sft("data.train={role_order}", "init_from={pretrain}"), "roles.json"),
    "missing_data_file": (_sft("data.train={root}/no_such_file.json", "init_from={pretrain}"), "no_such_file.json"),
    "identical_preference": (["dpo", *COMMON, "data.train={same_pair}", "init_from={sft}"], "pairs.json"),
    # configs
    "unknown_projector_entry": (_sft("model/projector=perceiver9000"), "perceiver9000"),
    "unknown_projector_name": (_sft("model.projector.name=perceiver9000"), "model.projector.name"),
    "wrong_type": (_sft("optim.lr=fast"), "optim.lr"),
    "misspelt_key": (_sft("optim.lrr=1e-3"), "lrr"),
    "wrong_choice": (_sft("data.on_error=ignore"), "expected one of [raise, skip]"),
    "wrong_part_mode": (_sft("policy.projector.mode=lora"), "policy.projector.mode=lora: expected one of frozen"),
    "refused_policy": (_sft("policy.vision.mode=lora"), "feature_layer"),  # tiny SigLIP feeds its embeddings
    "everything_frozen": (_sft("peft=none", "policy.llm.mode=frozen", "policy.projector.mode=frozen"),
                          "nothing would train"),
    "fp16_on_cpu": (_sft("optim.precision=fp16", "init_from={pretrain}"), "optim.precision=fp16"),
    "streaming_without_max_steps": (_sft("data.streaming=true", "optim.max_steps=-1", "init_from={pretrain}"),
                                    "optim.max_steps"),
    # checkpoints
    "missing_init_from": (_sft("init_from={root}/no_such_checkpoint"), "no_such_checkpoint"),
    "not_a_checkpoint": (["evaluate", "logger=none", "checkpoint={not_a_checkpoint}"], "not_a_checkpoint"),
    "truncated_weights": (["evaluate", "logger=none", "checkpoint={truncated_checkpoint}"], "truncated_checkpoint"),
    "adapter_base_moved": (["evaluate", "logger=none", "checkpoint={moved_adapter}"], "the_base_that_moved"),
    "quantized_to_export": (["export", "checkpoint={quantized}"], "is quantized (bitsandbytes): export writes"),
    "resume_missing": (_sft("resume={root}/no_such_step", "init_from={pretrain}"), "resume="),
    "unknown_quantize_variant": (["quantize", "logger=none", "checkpoint={sft}", "variants=[int8,int3]"], "'int3'"),
    "wrong_image_position": (["chat", "checkpoint={sft}", "question=Hi", "answer.image_position=middle"],
                             "answer.image_position"),
    # evaluation tasks
    "task_missing_column": (["evaluate", "logger=none", "checkpoint={sft}", "eval/task=vqav2",
                             "eval.task.dataset_path={task_columns}"], "answers"),
    "task_missing_image": (["evaluate", "logger=none", "checkpoint={sft}", "eval/task=vqav2",
                            "eval.task.dataset_path={task_image}"], "gone.png"),
}


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmtune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def outcomes(bad, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """Every case run once, three at a time (each is a fresh process: mostly start-up time)."""
    runs = tmp_path_factory.mktemp("error-runs")

    def run(name: str) -> subprocess.CompletedProcess:
        args = [arg.format(**bad) for arg in CASES[name][0]]
        return _run([*args, f"run_dir={runs / name}"], cwd=runs)

    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_error_line_naming_the_culprit_without_a_traceback(outcomes, name):
    result = outcomes[name]
    output = result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0, output[-3000:]
    assert "Traceback" not in output and "HYDRA_FULL_ERROR" not in output, output[-3000:]
    assert "Error executing job" not in output, output[-3000:]  # Hydra's line before a job's exception
    assert len(errors) == 1, output[-3000:]
    assert CASES[name][1] in errors[0], errors[0]


def test_vlmtune_debug_shows_the_traceback(bad, tmp_path):
    result = _run(["sft", *COMMON, f"data.train={bad['missing_image']}", f"init_from={bad['pretrain']}",
                   f"run_dir={tmp_path / 'run'}"], cwd=tmp_path, env={"VLMTUNE_DEBUG": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr and "DataError" in result.stderr


def test_a_bug_keeps_its_traceback():
    """An exception that is not a user error is a bug: it is reported as one (here, through run_command)."""
    code = ("from vlmtune.errors import run_command\n"
            "def main():\n    raise ZeroDivisionError('a bug')\n"
            "run_command(main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ZeroDivisionError: a bug" in result.stderr
    assert "error: " not in result.stderr


def test_several_processes_print_the_error_once_and_all_exit(bad, tmp_path):
    """Both ranks hit the bad sample; one prints it, both exit (no hang). What follows is accelerate's launcher
    reporting failed ranks (its ChildFailedError summary), with no frame of vlmtune's code."""
    import re

    from test_distributed import launch

    result = subprocess.run([*launch(2), "recipes/sft.py", *COMMON, f"data.train={bad['missing_image']}",
                             f"init_from={bad['pretrain']}", f"run_dir={tmp_path / 'run'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.returncode != 0 and len(errors) == 1 and "nowhere.png" in errors[0], output[-3000:]
    assert not re.search(r'File "[^"]*/(vlmtune|recipes)/', output), output[-3000:]


def test_a_vlmtune_launch_of_several_processes_prints_only_the_error(bad, tmp_path):
    """Through `vlmtune <recipe> launcher=ddp`, vlmtune starts accelerate's launcher itself and drops its report of
    the failed ranks when they stopped on an error the user can fix: one `error:` line, no traceback, exit code 1."""
    result = _run(["sft", *COMMON, "launcher=ddp", "launcher.num_processes=2", f"data.train={bad['missing_image']}",
                   f"init_from={bad['pretrain']}", f"run_dir={tmp_path / 'run'}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and len(errors) == 1 and "nowhere.png" in errors[0], output[-3000:]
    assert "Traceback" not in output and "ChildFailedError" not in output, output[-3000:]
