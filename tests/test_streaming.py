"""Streaming training (`data.streaming=true`): the stream is read lazily, bad samples raise or are counted as in
memory, training through the sft recipe gives the in-memory losses and resumes exactly, and several processes train
on disjoint samples."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_cli, vlmtune
from PIL import Image
from safetensors.torch import load_file

from vlmtune.config import DataConfig, OptimConfig, TrainRecipeConfig
from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.records import read_samples, training_samples
from vlmtune.data.streaming import check_streaming, training_stream


def _sample(i: int, image: str = "red.png") -> dict:
    return {"id": f"s{i}", "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhich answer?"}, {"from": "gpt", "value": f"answer{i}"}]}


def _write_jsonl(path: Path, rows: list, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    return tmp_path


@pytest.fixture(scope="module")
def processor(tiny):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.compose import compose

    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full")
    return compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[1]


def test_stream_is_read_lazily_and_raises_the_in_memory_error(folder, processor):
    # 30 samples, then 2000 malformed lines: anything that reads the whole file fails on them.
    path = _write_jsonl(folder / "big.jsonl", [_sample(i) for i in range(30)], tail="{not json\n" * 2000)
    with pytest.raises(DataError) as in_memory:
        read_samples(path)
    report = DataReport()
    stream = training_stream(DataConfig(train=str(path), streaming=True), processor, report)
    assert [s["id"] for s in itertools.islice(stream, 5)] == ["s0", "s1", "s2", "s3", "s4"]
    assert report.samples <= 6 and report.lengths and all(length > 0 for length in report.lengths)
    with pytest.raises(DataError) as streamed:
        list(itertools.islice(stream, 100))
    assert str(streamed.value) == str(in_memory.value) and f"{path}:31" in str(streamed.value)


def test_skip_counts_by_kind_as_in_memory(folder, processor):
    long = {"id": "long", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "Q " * 40}, {"from": "gpt", "value": "A"}]}
    rows = [_sample(0), {**_sample(1), "image": "missing.png"}, long,
            {"id": "order", "conversations": [{"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]},
            _sample(2), _sample(3, "missing.png"), _sample(4)]
    path = _write_jsonl(folder / "mixed.jsonl", rows[:4], tail="{not json\n")
    with path.open("a") as more:
        more.write("".join(json.dumps(row) + "\n" for row in rows[4:]))
    data = DataConfig(train=str(path), streaming=True, on_error="skip", max_length=60, truncation="drop_sample")
    report = DataReport()
    kept = [s["id"] for s in itertools.islice(training_stream(data, processor, report), 3)]  # one pass: 3 good
    in_memory, expected = training_samples(DataConfig(train=str(path), on_error="skip", max_length=60,
                                                      truncation="drop_sample"), processor)
    assert kept == [s["id"] for s in in_memory] == ["s0", "s2", "s4"]
    assert report.errors == expected.errors == {"missing_image": 2, "role_order": 1, "malformed_json": 1}
    assert report.dropped == expected.dropped == {"too long: sample dropped": 1}
    assert (report.samples, report.kept, report.images) == (expected.samples, expected.kept, expected.images)
    assert report.lengths == expected.lengths


def test_weighted_mixture_of_jsonl_and_parquet_streams_interleaved(folder, processor):
    a = _write_jsonl(folder / "a.jsonl", [_sample(i) for i in range(40)])
    from datasets import Dataset

    b = folder / "b.parquet"  # read by datasets in streaming mode, in the messages format
    Dataset.from_dict({"id": [f"b{i}" for i in range(40)], "messages": [[
        {"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]] * 40}).to_parquet(str(b))
    data = DataConfig(streaming=True, mixture=[{"path": str(a), "weight": 3}, {"path": str(b), "weight": 1}])
    first = [s["id"] for s in itertools.islice(training_stream(data, processor, DataReport()), 40)]
    again = [s["id"] for s in itertools.islice(training_stream(data, processor, DataReport()), 40)]
    assert first == again and 20 <= sum(i.startswith("s") for i in first) < 40 and any(i[0] == "b" for i in first)


def test_streaming_needs_max_steps_and_refuses_length_grouping():
    with pytest.raises(ValueError, match=r"optim\.max_steps"):
        check_streaming(TrainRecipeConfig(run_dir="x", data=DataConfig(streaming=True)))
    with pytest.raises(ValueError, match=r"data\.group_by_length"):
        check_streaming(TrainRecipeConfig(run_dir="x", data=DataConfig(streaming=True, group_by_length=True),
                                          optim=OptimConfig(max_steps=2)))
    check_streaming(TrainRecipeConfig(run_dir="x", data=DataConfig(streaming=True), optim=OptimConfig(max_steps=2)))


def _losses(run_dir: Path) -> list[float]:
    state = json.loads((run_dir / "trainer" / "checkpoint-3" / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def test_streamed_sft_trains_like_in_memory_and_resumes_exactly(cache, folder):
    """8 samples, batches of 8: every step of either run holds the same 8 samples (in another order in memory), so
    the losses agree to float rounding; the stream wraps around between steps."""
    path = _write_jsonl(folder / "eight.jsonl", [_sample(i) for i in range(8)])
    common = [f"data.train={path}", "data.test=null", "optim.max_steps=3", "optim.batch_size=8",
              "optim.warmup_ratio=0", "logging_steps=1", "save_steps=1", "save_total_limit=3", "logger=none",
              "evaluate_at_end=false"]
    streamed, in_memory = folder / "streamed", folder / "in_memory"
    output = vlmtune("sft", f"run_dir={streamed}", "data.streaming=true", *common)
    vlmtune("sft", f"run_dir={in_memory}", *common)
    assert len(set(_losses(streamed))) == 3  # it trains
    torch.testing.assert_close(torch.tensor(_losses(streamed)), torch.tensor(_losses(in_memory)), rtol=1e-5, atol=0)
    report = json.loads((streamed / "data_train.json").read_text())
    assert report["errors"] == {} and report["kept"] == report["samples"] >= 24  # 3 steps read, counted at the end
    assert "train data:" in output.split("'train_runtime'")[-1]  # the report is logged after training

    resumed = folder / "resumed"  # as if killed after step 2: the stream is re-read past 2 batches (2 passes)
    shutil.copytree(streamed, resumed, ignore=shutil.ignore_patterns("checkpoint-3", "checkpoint"))
    output = vlmtune("sft", f"run_dir={resumed}", "data.streaming=true", *common)
    assert f"resuming from {resumed / 'trainer' / 'checkpoint-2'}" in output
    expected, got = (load_file(d / "checkpoint" / "adapter_model.safetensors") for d in (streamed, resumed))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6)


def test_two_processes_train_on_disjoint_packed_samples(tiny, folder):
    from test_distributed import launch

    # 40 samples then malformed lines: 2 processes x 2 steps x 4 samples (plus look-ahead) never reach them.
    path = _write_jsonl(folder / "ranks.jsonl", [_sample(i) for i in range(40)], tail="{not json\n" * 100)
    out = folder / "ranks"
    script = str(Path(__file__).parent / "stream_ranks.py")
    run_cli(*launch(2), script, str(tiny), str(path), str(out), "2", timeout=300)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["steps"] == 2 and r["processes"] == 2 for r in ranks)
    ids = [set(r["ids"]) for r in ranks]
    assert all(len(r["ids"]) == len(s) == 8 for r, s in zip(ranks, ids, strict=True))
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {f"answer{i}" for i in range(16)}
