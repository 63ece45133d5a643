"""chat (through a pseudo-terminal), predict (resumable, 2 processes, bad input) and serve (headless Chromium) on
the tests' pretrain -> sft (LoRA adapter) checkpoint, compared with evaluate's answers."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, vlmtune

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread

ANSWER = ["answer.max_new_tokens=8"]  # evaluate's budget in the pipeline fixture (eval.max_new_tokens default)


def _test_records(shapes: Path) -> list[dict]:
    return json.loads((shapes / "test.json").read_text())


def _question(record: dict) -> str:
    return record["conversations"][0]["value"]  # e.g. "What color is the square?\n<image>", as evaluate renders it


def _evaluated(pipeline) -> dict[str, str]:
    rows = (pipeline["sft"] / "predictions.jsonl").read_text().splitlines()
    return {row["id"]: row["prediction"] for row in map(json.loads, rows)}


@pytest.fixture(scope="module")
def adapter(pipeline) -> Path:
    return pipeline["sft"] / "checkpoint"


@pytest.fixture(scope="module")
def engine(adapter):
    from vlmtune.model.checkpoint import load_vlm

    return load_vlm(adapter)


def _one_shot(engine, image: str, question: str, position: str = "before") -> str:
    from vlmtune.infer.conversation import Conversation

    conversation = Conversation(*engine, max_new_tokens=8, image_position=position)
    conversation.add_image(image)
    return conversation.answer(question)


def test_chat_question_prints_evaluates_answer(pipeline, adapter, shapes, tmp_path):
    record = _test_records(shapes)[0]
    out = vlmtune("chat", f"checkpoint={adapter}", f"image={shapes / record['image']}",
                  f"question='{_question(record)}'", f"run_dir={tmp_path / 'chat'}", *ANSWER)
    stdout = out.split("\n")  # run_cli joins stdout + stderr: the answer is stdout's only line
    assert stdout[0].strip() == _evaluated(pipeline)[record["id"]]


def test_stream_yields_the_answer_piece_by_piece(engine, shapes):
    from vlmtune.infer.conversation import Conversation

    record = _test_records(shapes)[0]
    conversation = Conversation(*engine, max_new_tokens=24)
    conversation.add_image(str(shapes / record["image"]))
    pieces = list(conversation.stream("Describe the image."))
    assert "".join(pieces).strip() == conversation.last_answer
    if " " in conversation.last_answer.strip():  # TextIteratorStreamer hands text over word by word
        assert len(pieces) > 1
    assert [m["role"] for m in conversation.messages] == ["user", "assistant"]
    assert conversation.messages[1]["content"][0]["text"] == conversation.last_answer


def _read_until(fd: int, marker: str, timeout: float = 180) -> str:
    text, deadline = "", time.monotonic() + timeout
    while marker not in text:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} within {timeout} s; the terminal showed:\n{text}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        text += chunk.decode(errors="replace")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text).replace("\r\n", "\n")


def test_chat_in_a_pseudo_terminal(engine, adapter, shapes, tmp_path):
    """The real CLI on a terminal: stream an answer, a bad /image is reported, /image, /clear and /quit work."""
    first, second = [str(shapes / r["image"]) for r in _test_records(shapes)[:2]]
    question = "What color is the square?"
    argv = [sys.executable, "-m", "vlmtune.cli", "chat", f"checkpoint={adapter}", f"image={first}",
            f"run_dir={tmp_path / 'chat'}", "answer.image_position=after", *ANSWER]
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat on the pseudo-terminal's slave side
        os.chdir(REPO)
        os.execv(argv[0], argv)
    try:
        _read_until(fd, "you> ")
        os.write(fd, f"{question}\n".encode())
        shown = _read_until(fd, "you> ")
        assert f"model> {_one_shot(engine, first, question, 'after')}\n" in shown
        os.write(fd, b"/image /no/such/image.png\n")
        assert "error: /image: image file /no/such/image.png does not exist" in _read_until(fd, "you> ")
        os.write(fd, f"/image {second}\n".encode())
        assert "goes with the next question" in _read_until(fd, "you> ")
        os.write(fd, b"/clear\n")
        assert "(conversation cleared)" in _read_until(fd, "you> ")
        os.write(fd, f"{question}\n".encode())  # a fresh conversation about the second image
        assert f"model> {_one_shot(engine, second, question, 'after')}\n" in _read_until(fd, "you> ")
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        os.close(fd)


def test_predict_gives_evaluates_answers_and_resumes(pipeline, adapter, shapes, tmp_path):
    run = tmp_path / "predict"
    args = ["predict", f"checkpoint={adapter}", f"input={shapes / 'test.json'}", f"run_dir={run}", "batch_size=4",
            *ANSWER]
    vlmtune(*args)
    answers = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert {a["id"]: a["prediction"] for a in answers} == _evaluated(pipeline)
    assert [a["id"] for a in answers] == [r["id"] for r in _test_records(shapes)]  # input order
    assert all(a["target"] for a in answers)  # the file's answers come along as targets

    # A killed run: three answers written, the fourth cut mid-line. The rerun answers only the rest.
    kept = (run / "predictions.jsonl").read_text().splitlines()[:3]
    (run / "predictions.jsonl").write_text("\n".join(kept) + '\n{"id": "test-000')
    out = vlmtune(*args)
    assert f"{len(answers) - 3} answered, 3 already in the output" in out
    assert [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()] == answers


def test_predict_folder_on_two_processes_reports_a_bad_image(engine, adapter, shapes, tmp_path):
    from vlmtune.infer.predict import folder_records, predict

    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for record in _test_records(shapes)[:3]:
        shutil.copy(shapes / record["image"], folder / Path(record["image"]).name)
    shutil.copy(shapes / _test_records(shapes)[3]["image"], folder / "more" / "nested.png")
    (folder / "broken.png").write_bytes(b"not a png")
    run = tmp_path / "run"
    question = "What color is the square?"
    run_cli(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            str(REPO / "recipes" / "predict.py"),
            f"checkpoint={adapter}", f"input={folder}", f"question={question}", "on_error=skip", f"run_dir={run}",
            "batch_size=2", *ANSWER, env={"OMP_NUM_THREADS": "1"})
    answers = {row["id"]: row["prediction"] for row in map(json.loads, (run / "predictions.jsonl").read_text().split(
        "\n")[:-1])}
    report = json.loads((run / "data_input.json").read_text())
    assert report["errors"] == {"corrupt_image": 1} and report["kept"] == 4
    from vlmtune.data.errors import DataReport

    records = folder_records(folder, question, on_error="skip", max_image_pixels=10**8, report=DataReport())
    one_process = tmp_path / "one.jsonl"
    predict(*engine, records, one_process, batch_size=4, max_new_tokens=8, progress=False)
    assert answers == {row["id"]: row["prediction"] for row in map(json.loads, one_process.read_text().splitlines())}
    assert set(answers) == {"test_00000.png", "test_00001.png", "test_00002.png", "more/nested.png"}


def _predict_cfg(**fields):
    from omegaconf import OmegaConf

    from vlmtune.config import PredictRecipeConfig

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PredictRecipeConfig), {
        "run_dir": "unused", "checkpoint": "unused", "output": "unused", **fields}))


def test_predict_input_errors_name_the_line(shapes, tmp_path):
    from vlmtune.data.errors import DataError
    from vlmtune.infer.predict import input_records

    image = str(shapes / _test_records(shapes)[0]["image"])
    good = json.dumps({"id": "a", "image": image, "question": "What color is the square?"})
    bad = tmp_path / "questions.jsonl"
    bad.write_text(good + "\n{not json\n" + json.dumps({"id": "c", "image": "/missing.png", "question": "Q?"}) + "\n")
    with pytest.raises(DataError, match=rf"{bad}:2: not valid JSON"):
        input_records(_predict_cfg(input=str(bad)))
    records, report = input_records(_predict_cfg(input=str(bad), on_error="skip"))
    assert [r["id"] for r in records] == ["a"] and report.errors == {"malformed_json": 1, "missing_image": 1}
    assert records[0]["messages"] == [{"role": "user", "content": [
        {"type": "image", "text": None}, {"type": "text", "text": "What color is the square?"}]}]

    twice = tmp_path / "twice.jsonl"
    twice.write_text(good + "\n" + good + "\n")
    with pytest.raises(DataError, match="id 'a' appears twice"):
        input_records(_predict_cfg(input=str(twice)))
    with pytest.raises(DataError, match="not a folder"):
        input_records(_predict_cfg(input=str(twice), question="Q?"))
    with pytest.raises(DataError, match="give the question"):
        input_records(_predict_cfg(input=str(shapes / "images")))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_in_headless_chromium(pipeline, adapter, shapes, tmp_path):
    """Upload, ask and read the answer in a real browser; it equals `vlmtune chat ... question=` and evaluate's."""
    from serve_browser import ask_in_browser, chromium

    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: CI must run `make browser`")
        pytest.skip("chromium is not installed (make browser)")  # a developer machine; CI fails above
    record = _test_records(shapes)[0]
    image, question = shapes / record["image"], _question(record)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "vlmtune.cli", "serve", f"runs={pipeline['runs']}",
                               f"port={port}", f"run_dir={tmp_path / 'serve'}", *ANSWER], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in server.stdout:  # the page is up once Gradio prints its URL
            lines.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        else:
            raise AssertionError("serve stopped:\n" + "".join(lines[-40:]))
        shown = ask_in_browser(f"http://127.0.0.1:{port}", image, question, tmp_path / "serve.png",
                               checkpoint="sft/checkpoint")
    finally:
        server.terminate()
        server.wait(timeout=30)
    chat = vlmtune("chat", f"checkpoint={adapter}", f"image={image}", f"question='{question}'",
                   f"run_dir={tmp_path / 'chat'}", *ANSWER).split("\n")[0].strip()
    assert shown == chat == _evaluated(pipeline)[record["id"]]
    assert (tmp_path / "serve.png").stat().st_size > 10_000
    if os.environ.get("VLMTUNE_SCREENSHOTS"):  # keep the picture, e.g. for the docs
        shutil.copy(tmp_path / "serve.png", Path(os.environ["VLMTUNE_SCREENSHOTS"]) / "serve-test.png")


def test_export_writes_what_a_serving_engine_reads(pipeline, adapter, tmp_path):
    results = pipeline["sft"] / "results.json"
    vlmtune("export", f"checkpoint={adapter}", f"results={results}", f"run_dir={tmp_path / 'export'}")
    out = tmp_path / "export" / "checkpoint"
    for name in ["model.safetensors", "config.json", "generation_config.json", "chat_template.jinja",
                 "tokenizer.json", "processor_config.json", "README.md", "vlmtune.json"]:
        assert (out / name).is_file(), name
    assert not (out / "adapter_config.json").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] and generation["pad_token_id"] is not None
    card = (out / "README.md").read_text()
    accuracy = json.loads(results.read_text())["metrics"]["accuracy"]
    assert "## Evaluation" in card and f"| accuracy | {accuracy:.4f} |" in card
    assert (out / "chat_template.jinja").read_text() == (adapter / "chat_template.jinja").read_text()
    # The adapter merged into its base: plain transformers loads exactly vlmtune's merged weights.
    import torch
    from transformers import AutoModelForImageTextToText

    from vlmtune.model.checkpoint import load_vlm

    assert json.loads((out / "vlmtune.json").read_text())["merged_from"] == str(adapter)
    exported, (merged, _) = AutoModelForImageTextToText.from_pretrained(out), load_vlm(adapter)
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(exported.state_dict()[name], value, rtol=0, atol=0)


def test_serve_lists_only_models_that_answer_about_images(tmp_path):
    """A demo run directory holds a contrastive run too: its dual encoder and vision tower are not offered."""
    from vlmtune.infer.webui import find_checkpoints

    for folder, model_type in [("sft/checkpoint", "llava"), ("contrastive/checkpoint", "vision_text_dual_encoder"),
                               ("contrastive/vision", "clip_vision_model"), ("pretrain/checkpoint", "vlmtune")]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    (tmp_path / "lora" / "checkpoint").mkdir(parents=True)
    (tmp_path / "lora" / "checkpoint" / "adapter_config.json").write_text("{}")
    assert list(find_checkpoints(tmp_path)) == ["lora/checkpoint", "pretrain/checkpoint", "sft/checkpoint"]
