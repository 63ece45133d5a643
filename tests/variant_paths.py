"""Reload every saved variant of a quantize run and answer its test questions the way evaluate, chat, predict and
serve each do; print, per variant, whether each gives the quantize recipe's answers. Run in a subprocess by
tests/test_quantize_variants.py (torchao must be importable there, and only there)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from vlmtune.config import AnswerConfig, EvalConfig
from vlmtune.data.records import read_samples
from vlmtune.eval.run import evaluate_model
from vlmtune.infer.conversation import Conversation
from vlmtune.infer.predict import predict
from vlmtune.infer.webui import Models, find_checkpoints
from vlmtune.model.checkpoint import load_vlm

run, test_file = Path(sys.argv[1]), sys.argv[2]
records = read_samples(test_file)[:4]  # one batch of eval.batch_size=4: the quantize run's first batch exactly
eval_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvalConfig), {"batch_size": 4}))
checkpoints = find_checkpoints(run)
results = {}
for variant in [row["variant"] for row in json.loads((run / "quantize.json").read_text())][1:]:
    expected = [json.loads(line)["prediction"] for line in (run / f"predictions_{variant}.jsonl").open()][:4]
    model, processor = load_vlm(run / variant)  # what evaluate, chat and predict load
    rows, _ = evaluate_model(model, processor, records, eval_cfg)
    chat = Conversation(model, processor, max_new_tokens=8)
    chat.add_image(records[0]["images"][0])
    chat_answer = chat.answer(records[0]["messages"][0]["content"][0]["text"] + "<image>")
    with tempfile.TemporaryDirectory() as tmp:
        predict(model, processor, records, Path(tmp) / "p.jsonl", batch_size=4, max_new_tokens=8, progress=False)
        predicted = [json.loads(line)["prediction"] for line in (Path(tmp) / "p.jsonl").open()]
    del model
    served = Models(checkpoints, "cpu", AnswerConfig(max_new_tokens=8)).conversation(variant)
    served.add_image(records[0]["images"][0])
    results[variant] = {"evaluate": [r["prediction"] for r in rows] == expected, "predict": predicted == expected,
                        "chat": chat_answer == expected[0],
                        "serve": served.answer(records[0]["messages"][0]["content"][0]["text"] + "<image>")
                        == expected[0]}
print(json.dumps(results))
