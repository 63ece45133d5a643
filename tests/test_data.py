"""Data: every format loads, every kind of bad input gives its message (and `skip` counts it), image modes convert
correctly, lengths are the collator's, and truncation never cuts an image block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmtune.data.errors import DataError, DataReport
from vlmtune.data.images import load_image
from vlmtune.data.records import read_samples, to_dataset
from vlmtune.errors import ConfigError


def _turns(question: str = "<image>\nWhat color?", answer: str = "red") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def folder(tmp_path) -> Path:
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "blue.png")
    return tmp_path


def _write_json(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


def test_llava_json(folder):
    path = _write_json(folder / "llava.json", [{"id": "a", "image": "red.png", "conversations": _turns()}])
    [sample] = read_samples(path)
    assert sample["id"] == "a" and sample["images"] == [str(folder / "red.png")]
    assert [m["role"] for m in sample["messages"]] == ["user", "assistant"]
    assert sample["messages"][0]["content"][0] == {"type": "image", "text": None}


def test_sharegpt_jsonl_with_system_multi_image_and_text_only(folder):
    rows = [
        {"conversations": _turns("<image><image>Compare.", "same"), "images": ["red.png", "blue.png"],
         "system": "Be brief."},
        {"conversations": _turns("Say hi.", "hi")},
    ]
    path = folder / "sharegpt.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    two, text_only = read_samples(path, fmt="sharegpt")
    assert [m["role"] for m in two["messages"]] == ["system", "user", "assistant"]
    assert len(two["images"]) == 2 and text_only["images"] == []
    assert two["id"].endswith("sharegpt.jsonl:1")  # no id: the file and line name the sample


def test_messages_format_with_parts_strings_and_inline_images(folder):
    records = [
        {"id": "parts", "images": ["red.png"], "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Color?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]},
        {"id": "inline", "messages": [
            {"role": "user", "content": [{"type": "image", "image": "blue.png"}, {"type": "text", "text": "Color?"}]},
            {"role": "assistant", "content": "blue"}]},
        {"id": "multi-turn", "images": ["red.png"], "messages": [
            {"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "Color?"}, {"role": "assistant", "content": "red"}]},
    ]
    parts, inline, multi = read_samples(_write_json(folder / "messages.json", records))
    assert parts["images"] == [str(folder / "red.png")] and inline["images"] == [str(folder / "blue.png")]
    assert len(multi["messages"]) == 4


def test_parquet_with_image_bytes_and_datasets_folder(folder):
    from datasets import Dataset

    png = (folder / "red.png").read_bytes()
    rows = {"id": ["p0"], "images": [[{"bytes": png, "path": None}]],
            "messages": [[{"role": "user", "content": "<image>Color?"}, {"role": "assistant", "content": "red"}]]}
    Dataset.from_dict(rows).to_parquet(str(folder / "data.parquet"))
    [sample] = read_samples(folder / "data.parquet")
    assert load_image(sample["images"][0], "test").getpixel((0, 0)) == (255, 0, 0)

    Dataset.from_dict(rows).save_to_disk(str(folder / "saved"))
    [saved] = read_samples(folder / "saved")
    dataset = to_dataset([saved])  # bytes go through the same Dataset + lazy decoding as paths
    assert dataset[0]["images"][0].getpixel((0, 0)) == (255, 0, 0)


def test_image_root_is_configurable(folder):
    (folder / "data").mkdir()
    path = _write_json(folder / "data" / "d.json", [{"id": "a", "image": "red.png", "conversations": _turns()}])
    with pytest.raises(DataError, match="does not exist"):
        read_samples(path)
    assert read_samples(path, image_root=folder)[0]["images"] == [str(folder / "red.png")]


@pytest.mark.parametrize(
    ("mode", "make", "expected"),
    [
        ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
        ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535 // 2, dtype=np.uint16)), (128, 128, 128)),
        ("P+transparency", lambda: _palette_with_transparency(), (255, 255, 255)),
        ("RGBA", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 0)), (255, 255, 255)),
        ("RGBA half", lambda: Image.new("RGBA", (4, 4), (0, 0, 0, 128)), (127, 127, 127)),
        ("L", lambda: Image.new("L", (4, 4), 200), (200, 200, 200)),
        ("LA", lambda: Image.new("LA", (4, 4), (0, 255)), (0, 0, 0)),
    ],
)
def test_unusual_modes_convert_to_rgb(tmp_path, mode, make, expected):
    path = tmp_path / ("image.tiff" if mode == "CMYK" else "image.png")
    make().save(path)
    image = load_image(str(path), "test")
    assert image.mode == "RGB"
    assert all(abs(a - b) <= 1 for a, b in zip(image.getpixel((1, 1)), expected, strict=True)), image.getpixel((1, 1))


def _palette_with_transparency():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    return image


def _bad_records(folder: Path) -> dict[str, tuple[dict, str, str]]:
    """kind -> (record, message fragment, kind reported)."""
    (folder / "corrupt.png").write_bytes(b"not an image at all")
    Image.new("RGB", (64, 64), "green").save(folder / "big.png")
    (folder / "truncated.png").write_bytes((folder / "big.png").read_bytes()[:60])
    return {
        "missing": ({"id": "m", "image": "nope.png", "conversations": _turns()}, "does not exist", "missing_image"),
        "corrupt": ({"id": "c", "image": "corrupt.png", "conversations": _turns()}, "not an image PIL can read",
                    "corrupt_image"),
        "truncated": ({"id": "t", "image": "truncated.png", "conversations": _turns()}, "corrupt",
                      "corrupt_image"),
        "too many placeholders": ({"id": "p", "image": "red.png", "conversations": _turns("<image><image>Q")},
                                  r"2 <image> placeholder\(s\) but 1 image", "placeholder_mismatch"),
        "image without placeholder": ({"id": "q", "image": "red.png", "conversations": _turns("Q")},
                                      r"0 <image> placeholder\(s\) but 1 image", "placeholder_mismatch"),
        "empty answer": ({"id": "e", "image": "red.png", "conversations": _turns(answer="  ")},
                         "assistant turn is empty", "empty_answer"),
        "missing answer": ({"id": "n", "conversations": [{"from": "human", "value": "Q"}]}, "out of order",
                           "role_order"),
        "wrong role order": ({"id": "w", "conversations": [{"from": "gpt", "value": "A"},
                                                           {"from": "human", "value": "Q"}]},
                             "out of order", "role_order"),
        "unknown role": ({"id": "u", "conversations": [{"from": "robot", "value": "Q"}]}, "each turn needs",
                         "bad_format"),
    }


@pytest.mark.parametrize("case", ["missing", "corrupt", "truncated", "too many placeholders",
                                  "image without placeholder", "empty answer", "missing answer", "wrong role order",
                                  "unknown role"])
def test_bad_sample_raises_naming_file_and_sample_then_skip_counts_it(folder, case):
    record, message, kind = _bad_records(folder)[case]
    good = {"id": "good", "image": "red.png", "conversations": _turns()}
    path = _write_json(folder / "data.json", [good, record])
    verify = "full" if case == "truncated" else "header"
    with pytest.raises(DataError, match=message) as error:
        read_samples(path, verify_images=verify)
    assert str(path) in str(error.value) and repr(record["id"]) in str(error.value)
    report = DataReport()
    kept = read_samples(path, on_error="skip", verify_images=verify, report=report)
    assert [s["id"] for s in kept] == ["good"]
    assert report.samples == 2 and report.kept == 1 and report.errors == {kind: 1}
    assert f"skipped 1 x {kind}" in report.summary()


def test_truncated_image_fails_clearly_when_decoded_for_training(folder):
    _bad_records(folder)
    path = _write_json(folder / "data.json", [{"id": "t", "image": "truncated.png", "conversations": _turns()}])
    dataset = to_dataset(read_samples(path))  # header check passes: a PNG signature and size
    with pytest.raises(DataError, match=r"sample 't'.*truncated.png is truncated or corrupt"):
        dataset[0]


def test_decompression_bomb_is_refused(folder):
    Image.new("1", (10_000, 9_000)).save(folder / "bomb.png")  # 90 M pixels in a few KB
    path = _write_json(folder / "data.json", [{"id": "b", "image": "bomb.png", "conversations": _turns()}])
    with pytest.raises(DataError, match="decompression bomb"):
        read_samples(path)
    with pytest.raises(DataError, match="too large to decode safely"):
        load_image(str(folder / "bomb.png"), "test")
    report = DataReport()
    with pytest.raises(DataError, match="no usable samples"):
        read_samples(path, on_error="skip", report=report)
    assert report.errors == {"decompression_bomb": 1}


def test_non_utf8_and_malformed_lines(folder):
    good = json.dumps({"id": "good", "image": "red.png", "conversations": _turns()}).encode()
    path = folder / "data.jsonl"
    path.write_bytes(b"\n".join([good, '{"id": "latin", "conversations": []}'.replace("latin", "caf\xe9")
                                 .encode("latin-1"), b'{"id": "broken", ', good]))
    with pytest.raises(DataError, match=r"data.jsonl:2: not UTF-8"):
        read_samples(path)
    report = DataReport()
    kept = read_samples(path, on_error="skip", report=report)
    assert len(kept) == 2 and report.errors == {"encoding": 1, "malformed_json": 1}
    assert any("data.jsonl:3: not valid JSON" in m for m in report.examples["malformed_json"])

    whole = folder / "latin.json"
    whole.write_bytes('[{"id": "caf\xe9"}]'.encode("latin-1"))
    with pytest.raises(DataError, match="latin.json: not UTF-8"):
        read_samples(whole)


def test_unknown_format_key_lists_valid_ones(folder):
    path = _write_json(folder / "d.json", [{"id": "a", "conversations": _turns("Q")}])
    with pytest.raises(ConfigError, match="data.format='alpaca'.*llava, messages, sharegpt"):
        read_samples(path, fmt="alpaca")


@pytest.fixture(scope="module")
def processor(tiny):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.model.compose import compose

    vision = VisionConfig(path=str(tiny / "vision" / "clip"), select_strategy="default")
    return compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama"))))[1]


def _multi_turn(folder: Path) -> list[dict]:
    """Three exchanges; the second brings a second image."""
    return [{"id": "mt", "image": ["red.png", "blue.png"], "conversations": [
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "red"},
        {"from": "human", "value": "<image>\nAnd this one?"}, {"from": "gpt", "value": "blue"},
        {"from": "human", "value": "Same?"}, {"from": "gpt", "value": "no"}]},
        {"id": "one", "image": "red.png", "conversations": _turns()}]


def test_measured_lengths_are_the_collators(folder, processor):
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.data.lengths import fit_lengths, image_token_count, measure

    samples = read_samples(_write_json(folder / "d.json", _multi_turn(folder)))
    batch = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(list(to_dataset(samples)))
    collated = batch["attention_mask"].sum(dim=1).tolist()
    assert [s["length"] for s in fit_lengths(samples, processor, max_length=None)] == collated
    assert image_token_count(processor) == 9
    # The image-dependent path (the processor run on the decoded images) gives the same numbers.
    assert [measure(s, processor, None)[0] for s in samples] == collated
    assert [measure(s, processor, None)[1] for s in samples] == (batch["labels"] != -100).sum(dim=1).tolist()


def test_truncation_drops_whole_turns_never_part_of_an_image(folder, processor):
    from vlmtune.data.lengths import fit_lengths

    samples = read_samples(_write_json(folder / "d.json", _multi_turn(folder)))
    full = fit_lengths(samples, processor, max_length=None)[0]["length"]
    report = DataReport()
    kept = fit_lengths(samples, processor, max_length=full - 1, report=report)
    shortened = kept[0]
    assert [m["role"] for m in shortened["messages"]] == ["user", "assistant"] * 2  # the third exchange went
    assert len(shortened["images"]) == 2 and shortened["length"] < full
    # Two exchanges are still too long for a tighter limit: the second image goes with its turn, not in halves.
    first_only = fit_lengths(samples, processor, max_length=shortened["length"] - 1)[0]
    assert len(first_only["images"]) == 1 and len(first_only["messages"]) == 2
    assert report.dropped == {"too long: trailing turns dropped": 1}

    report = DataReport()
    kept = fit_lengths(samples, processor, max_length=full - 1, truncation="drop_sample", report=report)
    assert [s["id"] for s in kept] == ["one"] and report.dropped == {"too long: sample dropped": 1}


def test_a_sample_with_no_supervised_token_is_an_error(folder, processor):
    import copy

    from vlmtune.data.lengths import fit_lengths

    samples = read_samples(_write_json(folder / "d.json", _multi_turn(folder)))
    unmarked = copy.copy(processor)
    unmarked.chat_template = processor.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", "")
    with pytest.raises(DataError, match="sample 'mt': no token of it is supervised"):
        fit_lengths(samples, unmarked, max_length=None)
    report = DataReport()
    with pytest.raises(DataError, match="no sample fits"):
        fit_lengths(samples, unmarked, max_length=None, on_error="skip", report=report)
    assert report.errors == {"no_supervised_tokens": 2}


def test_data_inspect_marks_spans_and_counts_tokens(cache, tmp_path):
    from conftest import vlmtune

    out = vlmtune("data", "inspect", "samples=2", "model/vision=tiny_clip", cwd=tmp_path)
    headers = [line for line in out.splitlines() if line.startswith("--- sample")]
    assert len(headers) == 2 and "supervised" in headers[0] and "+ 9 image (1 image(s))" in headers[0]
    assert "<image x9>" in out and "[[" in out and "\033[" not in out  # piped: plain markers, no colour


def test_data_check_reports_errors_by_kind_and_exits_nonzero(cache, folder):
    import os
    import subprocess
    import sys

    _bad_records(folder)
    records = [{"id": "good", "image": "red.png", "conversations": _turns()},
               {"id": "c", "image": "corrupt.png", "conversations": _turns()},
               {"id": "t", "image": "truncated.png", "conversations": _turns()},
               {"id": "p", "image": "red.png", "conversations": _turns("Q")}]
    path = _write_json(folder / "data.json", records)
    proc = subprocess.run([sys.executable, "-m", "vlmtune.cli", "data", "check", f"data.train={path}",
                           "model/vision=tiny_clip"], capture_output=True, text=True, cwd=folder, env=os.environ)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "samples 4, kept 1, images 1" in proc.stdout
    assert "skipped 2 x corrupt_image" in proc.stdout and "skipped 1 x placeholder_mismatch" in proc.stdout
    assert "sample 't'" in proc.stdout  # the truncated file is found by decoding every image


TEMPLATE_NAMES = ["chatml", "llama3", "vicuna_v1", "mistral", "gemma", "phi3", "plain", "native"]
HF_VLM_TEMPLATES = ["llava", "llava_mistral", "idefics3", "qwen2_vl", "paligemma"]  # tested in test_hf_vlm.py
# The token that ends each template's answers.
END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "phi3": "<|end|>",
       "native": "<|im_end|>"}  # the others end with the EOS token (<|im_end|> in the tiny tokenizer too)


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_template_supervises_exactly_the_assistant_turns(tiny, folder, template):
    from vlmtune.config import LLMConfig, ModelConfig, VisionConfig
    from vlmtune.data.inspect import token_spans
    from vlmtune.model.compose import blueprint
    from vlmtune.templates import TEMPLATES

    assert sorted(TEMPLATE_NAMES + HF_VLM_TEMPLATES) == sorted(TEMPLATES)
    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full")
    cfg = ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama")), template=template)
    processor = blueprint(cfg).processor()
    answers = ["red", "a blue square", "no"]
    record = {"id": "mt", "image": ["red.png", "blue.png"], "conversations": [
        {"from": "system", "value": "Answer briefly."},
        {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": answers[0]},
        {"from": "human", "value": "<image>\nAnd this one?"}, {"from": "gpt", "value": answers[1]},
        {"from": "human", "value": "Same?"}, {"from": "gpt", "value": answers[2]}]}
    [sample] = read_samples(_write_json(folder / "d.json", [record]))
    spans = token_spans(sample, processor)
    supervised = [processor.tokenizer.decode(ids) for kind, ids in spans if kind == "supervised"]
    if template == "vicuna_v1":  # "ASSISTANT: a": the space belongs to the answer, or to no token on its own
        supervised = [text.removeprefix(" ") for text in supervised]
    end = END.get(template, processor.tokenizer.eos_token)
    assert supervised == [answer + end for answer in answers]
    assert [len(ids) for kind, ids in spans if kind == "image"] == [9, 9]
    # The generation prompt continues a conversation exactly where a supervised answer would start.
    prompt = processor.apply_chat_template(sample["messages"][:-1], add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(sample["messages"], tokenize=False)
    assert full.startswith(prompt)


@pytest.mark.parametrize("projector", ["mlp2x_gelu", "resampler"])
def test_packed_loss_equals_unpacked_loss(tiny, folder, projector):
    """Multi-image, single-image, text-only and multi-turn samples: one padding-free row, the same loss."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.config import LLMConfig, ModelConfig, ProjectorConfig, VisionConfig
    from vlmtune.data.packing import PackedCollator
    from vlmtune.model.compose import compose

    vision = VisionConfig(path=str(tiny / "vision" / "siglip"), select_strategy="full")
    model, processor = compose(ModelConfig(vision=vision, llm=LLMConfig(path=str(tiny / "llm" / "llama")),
                                           projector=ProjectorConfig(name=projector, num_queries=4)))
    records = [*_multi_turn(folder), {"id": "text", "conversations": _turns("Say no.", "no")},
               {"id": "two", "image": ["blue.png", "red.png"], "conversations": _turns("<image><image>Same?", "no")}]
    examples = list(to_dataset(read_samples(_write_json(folder / "d.json", records))))
    unpacked = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples)
    packed = PackedCollator(processor)(examples)
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] == int(unpacked["attention_mask"].sum())
    assert int((packed["labels"] != -100).sum()) == int((unpacked["labels"] != -100).sum())
    model.train()
    packed_loss = model(**packed).loss
    unpacked_loss = model(**unpacked).loss
    torch.testing.assert_close(packed_loss, unpacked_loss, atol=1e-5, rtol=1e-5)
    packed_loss.backward()  # and it trains
    assert model.model.multi_modal_projector.state_dict() and torch.isfinite(packed_loss)


def test_sft_with_packing_and_length_grouping(pipeline, tmp_path):
    import math
    import re

    from conftest import FAST, vlmtune
    from safetensors.torch import load_file

    out = vlmtune("sft", f"run_dir={tmp_path / 'packed'}", f"init_from={pipeline['pretrain'] / 'checkpoint'}",
                  "data.packing=true", "data.group_by_length=true", "evaluate_at_end=false", "logger=none", *FAST)
    losses = [float(x) for x in re.findall(r"'loss': '([-\d.e]+)'", out)]
    assert len(losses) == 4 and all(math.isfinite(x) and x > 0 for x in losses), out[-2000:]  # a loss every step
    adapter = load_file(tmp_path / "packed" / "checkpoint" / "adapter_model.safetensors")
    assert any(adapter[n].abs().max() > 0 for n in adapter if ".lora_B." in n), "the packed batches trained it"
    report = json.loads((tmp_path / "packed" / "data_train.json").read_text())
    assert report["kept"] == report["samples"] > 0


@pytest.mark.parametrize("arch", ["qwen2_vl", "idefics3"])
def test_packed_loss_equals_unpacked_loss_on_hf_vlms(tiny, folder, arch):
    """Qwen2-VL's 3-D rope positions are computed per sample and concatenated behind restarting text positions;
    Idefics3's images join along its image axis. Same samples as above, the same loss."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from vlmtune.config import ModelConfig
    from vlmtune.data.packing import packed_collator
    from vlmtune.model.hf_vlm import load_hf_vlm

    model, processor = load_hf_vlm(ModelConfig(path=str(tiny / "vlm" / arch), template="auto"))
    records = [*_multi_turn(folder), {"id": "text", "conversations": _turns("Say no.", "no")},
               {"id": "two", "image": ["blue.png", "red.png"], "conversations": _turns("<image><image>Same?", "no")}]
    examples = list(to_dataset(read_samples(_write_json(folder / "d.json", records))))
    unpacked = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)(examples)
    packed = packed_collator(processor, model)(examples)
    assert packed["input_ids"].shape[1] == int(unpacked["attention_mask"].sum())
    if arch == "qwen2_vl":  # text positions restart per sample; the rope rows differ from them at the images
        assert packed["position_ids"].shape == (4, 1, packed["input_ids"].shape[1])
        assert int((packed["position_ids"][0, 0] == 0).sum()) == len(examples)
        assert not torch.equal(packed["position_ids"][1], packed["position_ids"][0])
    model.train()
    torch.testing.assert_close(model(**packed).loss, model(**unpacked).loss, atol=1e-5, rtol=1e-5)


def test_packing_refuses_models_it_cannot_pack():
    from vlmtune.data.packing import check_packable

    check_packable("llava")
    with pytest.raises(ValueError, match="data.packing=false"):
        check_packable("paligemma")


def test_measured_lengths_are_cached_by_fingerprint(folder, processor, tmp_path, monkeypatch):
    import copy

    from vlmtune.data import lengths

    calls = []
    measure = lengths.measure
    monkeypatch.setattr(lengths, "measure", lambda *args: calls.append(1) or measure(*args))
    samples = read_samples(_write_json(folder / "d.json", _multi_turn(folder)))
    first = lengths.fit_lengths(samples, processor, max_length=None, cache_dir=tmp_path / "prepared")
    assert len(calls) == 2
    second = lengths.fit_lengths(samples, processor, max_length=None, cache_dir=tmp_path / "prepared")
    assert len(calls) == 2 and [s["length"] for s in second] == [s["length"] for s in first]  # read back
    other = copy.copy(processor)
    other.chat_template = processor.chat_template.replace("<|im_start|>", "<|im_start|> ")
    lengths.fit_lengths(samples, other, max_length=None, cache_dir=tmp_path / "prepared")
    assert len(calls) == 4  # another template: measured again


def test_weighted_mixture_of_sources_in_different_formats(folder):
    from dataclasses import replace

    from vlmtune.config import DataConfig
    from vlmtune.data.records import read_split

    llava = _write_json(folder / "a.json", [{"id": f"a{i}", "image": "red.png", "conversations": _turns()}
                                            for i in range(40)])
    messages = _write_json(folder / "b.json", [{"id": f"b{i}", "messages": [
        {"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "yes"}]} for i in range(40)])
    data = DataConfig(mixture=[{"path": str(llava), "weight": 3}, {"path": str(messages), "weight": 1}])
    samples = read_split(data, "train")
    counts = {prefix: sum(s["id"].startswith(prefix) for s in samples) for prefix in "ab"}
    assert counts["a"] == 40 and 5 <= counts["b"] <= 25  # stops when the heavier source runs out, ~3:1
    assert read_split(data, "train") == samples  # seeded
    assert [s["id"] for s in read_split(replace(data, mixture_seed=1), "train")] != [s["id"] for s in samples]
    everything = read_split(replace(data, mixture_stop="all_exhausted"), "train")
    assert {s["id"] for s in everything} >= {f"b{i}" for i in range(40)}


def test_streaming_reads_only_what_is_used(folder):
    from datasets import Dataset

    Dataset.from_dict({"id": [f"s{i}" for i in range(50)],
                       "messages": [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]] * 50}
                      ).to_parquet(str(folder / "big.parquet"))
    samples = read_samples(folder / "big.parquet", streaming=True, limit=3)
    assert [s["id"] for s in samples] == ["s0", "s1", "s2"]
